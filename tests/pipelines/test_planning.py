"""The serving side's planning glue: the fastest path bound, a declared (fixed) plan, and the
refusal of an objective no plan reaches, naming the path and its slowest stage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.errors import InvalidInput
from veloxserve.pipelines.planning import check_reachable, choose_plan, critical_path
from veloxserve.pipelines.profiles import BatchTiming, StageProfile
from veloxserve.pipelines.spec import parse_spec

DIAMOND = [["f", "a"], ["f", "b"], ["a", "o"], ["b", "o"]]


def _spec(objective_ms: float = 100.0, **extra) -> object:
    stages = [{"name": n, "model": "m", **extra.get(n, {})} for n in "fabo"]
    return parse_spec({"name": "p", "objective_ms": objective_ms, "plan": "fixed", "stages": stages, "edges": DIAMOND})


def _profiles(ms: dict[str, float]) -> dict[str, StageProfile]:
    return {
        n: StageProfile(
            n,
            "cpu",
            1.0,
            [BatchTiming(1, t / 1e3, 2 * t / 1e3, t / 1e3), BatchTiming(4, 3 * t / 1e3, 6 * t / 1e3, 3 * t / 1e3)],
        )
        for n, t in ms.items()
    }


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.1, 50), min_size=4, max_size=4))
def test_the_critical_path_is_the_slowest_source_to_sink_path(times: list[float]) -> None:
    ms = dict(zip("fabo", times))
    path, seconds = critical_path(_spec(), _profiles(ms))
    paths = [["f", x, "o"] for x in "ab"]  # every path of the diamond, enumerated
    best = max(paths, key=lambda p: sum(ms[n] for n in p))
    assert seconds == pytest.approx(sum(ms[n] for n in best) / 1e3)
    assert sum(ms[n] for n in path) == pytest.approx(sum(ms[n] for n in best))


def test_an_objective_below_the_fastest_path_is_refused_naming_the_slowest_stage() -> None:
    profiles = _profiles({"f": 1.0, "a": 30.0, "b": 2.0, "o": 1.0})
    with pytest.raises(InvalidInput) as caught:
        check_reachable(_spec(20.0), profiles)
    assert "f -> a -> o" in caught.value.message and "stage 'a'" in caught.value.message
    assert "32.00 ms" in caught.value.message and caught.value.field == "objective_ms"
    check_reachable(_spec(40.0), profiles)


def test_a_fixed_plan_is_the_declared_batches_and_replicas_at_their_price() -> None:
    spec = _spec(a={"replicas": 3, "batch_size": 4})
    plan = choose_plan(spec, _profiles(dict.fromkeys("fabo", 1.0)))
    assert plan["planner"] == "fixed" and plan["feasible"] is True and plan["cost_per_s"] == 6.0
    assert {s["stage"]: (s["batch_size"], s["replicas"]) for s in plan["stages"]} == {
        "f": (1, 1),
        "a": (4, 3),
        "b": (1, 1),
        "o": (1, 1),
    }


def test_the_planner_plans_every_stage_or_says_the_best_p99_it_can_reach() -> None:
    spec = parse_spec(
        {
            "name": "p",
            "objective_ms": 50,
            "rate_qps": 100,
            "cv": 1.0,
            "stages": [{"name": n, "model": "m"} for n in "fabo"],
            "edges": DIAMOND,
        }
    )
    plan = choose_plan(spec, _profiles({"f": 2.0, "a": 5.0, "b": 1.0, "o": 1.0}))
    assert plan["planner"] == "inferline" and plan["feasible"] is True
    assert sorted(s["stage"] for s in plan["stages"]) == list("abfo")
    assert plan["predicted_p99_ms"] <= 50


def test_an_infeasible_plan_is_refused_with_the_best_achievable_p99(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner's own search for infeasibility is the planning side's to test (and slow on large
    loads); here: what the serving side does with its answer."""
    from veloxserve.pipelines import planner
    from veloxserve.pipelines.plans import Plan, StagePlan

    def no_plan(topology, profiles, trace, objective_s):
        stages = {n: StagePlan(n, "cpu", 1, 64) for n in topology.stages}
        return Plan(stages, 0.0123, 256.0, False, "the bottleneck a saturates at 64 replicas.")

    monkeypatch.setattr(planner, "plan_pipeline", no_plan)
    spec = parse_spec(
        {
            "name": "p",
            "objective_ms": 10,
            "rate_qps": 20000,
            "stages": [{"name": n, "model": "m"} for n in "fabo"],
            "edges": DIAMOND,
        }
    )
    with pytest.raises(InvalidInput) as caught:
        choose_plan(spec, _profiles({"f": 2.0, "a": 5.0, "b": 1.0, "o": 1.0}))
    assert "best achievable p99 is 12.30 ms" in caught.value.message and "saturates" in caught.value.message
