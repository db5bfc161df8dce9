"""The greedy planner against exhaustive search on small instances, and what it says when it cannot."""

from __future__ import annotations

import numpy as np
import pytest

from veloxserve.errors import InvalidInput
from veloxserve.pipelines.planner import exhaustive_plan, plan_pipeline
from veloxserve.pipelines.plans import Topology
from veloxserve.pipelines.profiles import BatchTiming, StageProfile
from veloxserve.pipelines.simulator import simulate
from veloxserve.pipelines.traces import gamma_trace

COST_FACTOR = 1.2  # the greedy plan costs at most this much more than the cheapest feasible one


def _linear(stage: str, kind: str, price: float, t1: float, slope: float) -> StageProfile:
    """Service time t1 + slope × (b − 1); p99 1.3× and mean 1.1× the median."""
    times = [(b, t1 + slope * (b - 1)) for b in (1, 2, 4)]
    return StageProfile(stage, kind, price, tuple(BatchTiming(b, t, 1.3 * t, 1.1 * t) for b, t in times))


def _instance(seed: int) -> tuple[Topology, dict[str, list[StageProfile]], np.ndarray, float]:
    """A random 2-stage chain (odd seeds) or 3-stage fork, 1-2 kinds per stage, a bursty trace, an objective."""
    rng = np.random.default_rng(seed)
    stages, edges = (["a", "b"], [("a", "b")]) if seed % 2 else (["a", "b", "c"], [("a", "b"), ("a", "c")])
    profiles = {}
    for s in stages:
        kinds = []
        for k in range(int(rng.integers(1, 3))):
            t1 = rng.uniform(0.002, 0.01)
            kinds.append(_linear(s, f"k{k}", float(rng.uniform(0.5, 2)), t1, t1 * rng.uniform(0.1, 0.6)))
        profiles[s] = kinds
    trace = gamma_trace(float(rng.uniform(100, 400)), float(rng.choice([1.0, 3.0])), 1.5, seed=seed)
    return Topology.from_edges(stages, edges), profiles, trace, float(rng.uniform(0.015, 0.06))


@pytest.mark.parametrize("seed", [1, 2, 3, 6, 8, 9, 12, 14, 21, 24, 28])
def test_the_planner_is_feasible_when_exhaustive_search_is_and_nearly_as_cheap(seed: int) -> None:
    topology, profiles, trace, objective = _instance(seed)
    greedy = plan_pipeline(topology, profiles, trace, objective, max_replicas=3)
    best = exhaustive_plan(topology, profiles, trace, objective, max_replicas=3)
    assert greedy.feasible == best.feasible
    if best.feasible:
        assert best.cost_per_s <= greedy.cost_per_s <= COST_FACTOR * best.cost_per_s
        assert greedy.predicted_p99_s <= objective
    else:
        assert greedy.predicted_p99_s > objective


def test_the_predicted_p99_and_cost_are_the_simulators() -> None:
    topology, profiles, trace, objective = _instance(2)
    plan = plan_pipeline(topology, profiles, trace, objective, max_replicas=3)
    result = simulate(topology, profiles, plan, trace)
    assert plan.predicted_p99_s == result.p99_s
    table = {s: {p.kind: p for p in ps} for s, ps in profiles.items()}
    expected = sum(sp.replicas * table[s][sp.kind].price_per_replica_s for s, sp in plan.stages.items())
    assert plan.cost_per_s == pytest.approx(expected)
    assert "within the objective" in plan.reason


def test_a_looser_objective_never_costs_more() -> None:
    topology, profiles, trace, _ = _instance(8)
    costs = [plan_pipeline(topology, profiles, trace, obj, max_replicas=6).cost_per_s for obj in (0.02, 0.04, 0.08)]
    assert costs == sorted(costs, reverse=True)


def test_an_unreachable_objective_says_the_best_p99_reachable() -> None:
    top = Topology.from_edges(["a", "b"], [("a", "b")])
    profiles = {"a": [_linear("a", "k", 1.0, 0.030, 0.01)], "b": [_linear("b", "k", 1.0, 0.040, 0.01)]}
    trace = gamma_trace(50.0, 1.0, 4.0, seed=1)
    plan = plan_pipeline(top, profiles, trace, 0.050, max_replicas=4)  # a + b at batch 1 is 77 ms alone
    assert not plan.feasible
    assert plan.predicted_p99_s > 0.050
    assert "the best p99 reachable is" in plan.reason and "above the objective 50.0 ms" in plan.reason


def test_a_rate_beyond_max_replicas_names_the_stage() -> None:
    top = Topology.from_edges(["a", "b"], [("a", "b")])
    profiles = {"a": [_linear("a", "k", 1.0, 0.001, 0.0)], "b": [_linear("b", "k", 1.0, 0.050, 0.05)]}
    plan = plan_pipeline(top, profiles, gamma_trace(500.0, 1.0, 2.0, seed=1), 1.0, max_replicas=2)
    assert not plan.feasible and "stage 'b' cannot sustain" in plan.reason


def test_a_slow_start_is_rescued_from_the_fast_corner() -> None:
    """Cheap configurations that are far too slow: the search still finds the feasible corner region."""
    top = Topology.from_edges(["a"], [])
    profiles = {"a": [_linear("a", "slow", 1.0, 0.02, 0.02), _linear("a", "fast", 3.0, 0.004, 0.004)]}
    trace = gamma_trace(100.0, 1.0, 3.0, seed=4)
    greedy = plan_pipeline(top, profiles, trace, 0.012, max_replicas=4)
    best = exhaustive_plan(top, profiles, trace, 0.012, max_replicas=4)
    assert greedy.feasible and best.feasible
    assert greedy.stages["a"].kind == "fast"
    assert greedy.cost_per_s <= COST_FACTOR * best.cost_per_s


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"objective_s": 0.0}, "objective_s"),
        ({"max_replicas": 0}, "max_replicas"),
        ({"batch_sizes": [0]}, "batch_sizes"),
    ],
)
def test_bad_parameters_name_the_field(kwargs: dict[str, object], field: str) -> None:
    topology, profiles, trace, objective = _instance(3)
    args: dict[str, object] = {"objective_s": objective, **kwargs}
    with pytest.raises(InvalidInput) as info:
        plan_pipeline(topology, profiles, trace, **args)  # type: ignore[arg-type]
    assert info.value.field == field


def test_a_stage_without_a_profile_is_refused() -> None:
    topology, profiles, trace, objective = _instance(3)
    with pytest.raises(InvalidInput, match="'b'"):
        plan_pipeline(topology, {"a": profiles["a"]}, trace, objective)
