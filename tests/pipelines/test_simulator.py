"""The simulator against closed-form queueing results and against schedules worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from veloxserve.errors import InvalidInput
from veloxserve.pipelines.plans import Plan, StagePlan, Topology
from veloxserve.pipelines.profiles import BatchTiming, StageProfile
from veloxserve.pipelines.simulator import simulate
from veloxserve.pipelines.traces import gamma_trace

ONE = Topology.from_edges(["a"], [])


def _fixed(stage: str, times: dict[int, float], price: float = 1.0, kind: str = "k") -> StageProfile:
    return StageProfile(stage, kind, price, tuple(BatchTiming(b, t, t, t) for b, t in times.items()))


def _erlang_c_wait(lam: float, mu: float, c: int) -> float:
    """M/M/c mean wait in queue: C(c, a) / (cμ − λ), a = λ/μ."""
    a = lam / mu
    tail = a**c / math.factorial(c) / (1 - a / c)
    p_wait = tail / (sum(a**k / math.factorial(k) for k in range(c)) + tail)
    return p_wait / (c * mu - lam)


@pytest.mark.parametrize("rho", [0.5, 0.8])
def test_md1_mean_wait_matches_the_pollaczek_khinchine_formula(rho: float) -> None:
    mu = 100.0
    trace = gamma_trace(rho * mu, 1.0, 1000.0, seed=11)
    result = simulate(ONE, {"a": _fixed("a", {1: 1 / mu})}, {"a": StagePlan("a", "k", 1, 1)}, trace)
    expected = rho / (2 * mu * (1 - rho))
    assert result.stages["a"].mean_queue_s == pytest.approx(expected, rel=0.08)
    assert result.stages["a"].utilisation == pytest.approx(rho, rel=0.03)
    assert result.mean_s == pytest.approx(expected + 1 / mu, rel=0.08)


@pytest.mark.parametrize(("c", "lam"), [(1, 60.0), (3, 210.0)])
def test_mmc_mean_wait_matches_erlang_c(c: int, lam: float) -> None:
    mu = 100.0
    trace = gamma_trace(lam, 1.0, 600.0, seed=5)
    result = simulate(
        ONE, {"a": _fixed("a", {1: 1 / mu})}, {"a": StagePlan("a", "k", 1, c)}, trace, service="exponential", seed=9
    )
    assert result.stages["a"].mean_queue_s == pytest.approx(_erlang_c_wait(lam, mu, c), rel=0.10)
    assert result.stages["a"].utilisation == pytest.approx(lam / (c * mu), rel=0.03)


def test_a_free_replica_takes_what_is_queued_up_to_the_batch_size() -> None:
    # q0 starts alone at 0 (done at 1); q1..q4 queued meanwhile go as one batch of 4 (1 -> 3).
    profile = _fixed("a", {1: 1.0, 4: 2.0})
    result = simulate(ONE, {"a": profile}, {"a": StagePlan("a", "k", 4, 1)}, np.zeros(5))
    assert result.latencies_s.tolist() == [1.0, 3.0, 3.0, 3.0, 3.0]
    assert result.stages["a"].batches == 2 and result.stages["a"].mean_batch == 2.5
    assert result.stages["a"].mean_queue_s == pytest.approx(4 / 5)


def test_a_chain_pipelines_stage_after_stage() -> None:
    # a (1 s) then b (2 s), one replica each, arrivals at 0 and 0.5: b serves q0 1->3, q1 3->5.
    top = Topology.from_edges(["a", "b"], [("a", "b")])
    profiles = {"a": _fixed("a", {1: 1.0}), "b": _fixed("b", {1: 2.0})}
    plan = {"a": StagePlan("a", "k", 1, 1), "b": StagePlan("b", "k", 1, 1)}
    result = simulate(top, profiles, plan, np.array([0.0, 0.5]))
    assert result.latencies_s.tolist() == [3.0, 4.5]
    assert result.stages["b"].mean_queue_s == pytest.approx(0.5)


def test_a_join_waits_for_every_parent_and_latency_is_the_last_sink() -> None:
    top = Topology.from_edges(["f", "x", "y", "c", "z"], [("f", "x"), ("f", "y"), ("x", "c"), ("y", "c"), ("f", "z")])
    times = {"f": 0.1, "x": 0.3, "y": 0.7, "c": 0.2, "z": 0.05}
    profiles = {s: _fixed(s, {1: t}) for s, t in times.items()}
    plan = {s: StagePlan(s, "k", 1, 1) for s in times}
    result = simulate(top, profiles, plan, np.array([0.0, 10.0]))
    assert result.latencies_s == pytest.approx([1.0, 1.0])  # 0.1 + max(0.3, 0.7) + 0.2, past z's 0.15


def test_cost_is_replicas_times_price_times_duration() -> None:
    top = Topology.from_edges(["a", "b"], [("a", "b")])
    profiles = {"a": _fixed("a", {1: 0.01}, price=2.0), "b": _fixed("b", {1: 0.01}, price=0.5)}
    plan = Plan({"a": StagePlan("a", "k", 1, 3), "b": StagePlan("b", "k", 1, 2)}, 0.0, 7.0, True)
    trace = np.linspace(0.0, 10.0, 101)
    assert simulate(top, profiles, plan, trace).cost_replica_s == pytest.approx((3 * 2.0 + 2 * 0.5) * 10.0)
    assert simulate(top, profiles, plan, trace, duration_s=20.0).cost_replica_s == pytest.approx(140.0)


def test_sampled_service_is_seeded_and_spans_p50_to_p99() -> None:
    profile = StageProfile("a", "k", 1.0, (BatchTiming(1, 0.010, 0.030, 0.012),))
    trace = np.arange(20_000) * 1.0  # no queueing: latency is service time
    run = [
        simulate(ONE, {"a": profile}, {"a": StagePlan("a", "k", 1, 1)}, trace, service="sampled", seed=s)
        for s in (1, 1, 2)
    ]
    assert np.array_equal(run[0].latencies_s, run[1].latencies_s)
    assert not np.array_equal(run[0].latencies_s, run[2].latencies_s)
    assert run[0].p50_s == pytest.approx(0.010, rel=0.03)
    assert run[0].p99_s == pytest.approx(0.030, rel=0.06)


def test_miss_rate_counts_latencies_over_the_objective() -> None:
    profile = _fixed("a", {1: 1.0})
    result = simulate(ONE, {"a": profile}, {"a": StagePlan("a", "k", 1, 1)}, np.zeros(4))
    assert result.latencies_s.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert result.miss_rate(2.5) == 0.5
    assert result.miss_rate(4.0) == 0.0


def test_a_hundredfold_load_runs_through_every_query() -> None:
    top = Topology.from_edges(["a", "b", "c"], [("a", "b"), ("a", "c")])
    profile = {
        s: StageProfile(s, "k", 1.0, (BatchTiming(1, 0.01, 0.02, 0.012), BatchTiming(8, 0.03, 0.05, 0.035)))
        for s in "abc"
    }
    trace = gamma_trace(20_000.0, 2.0, 1.0, seed=3)
    plan = {s: StagePlan(s, "k", 8, 120) for s in "abc"}
    result = simulate(top, profile, plan, trace)
    assert result.latencies_s.size == trace.size and np.isfinite(result.latencies_s).all()
    assert (result.latencies_s >= 2 * 0.012 - 1e-12).all()  # two stages, at least a batch of one each
    assert all(0 < st.utilisation < 1 for st in result.stages.values())


@pytest.mark.parametrize(
    ("plan", "kwargs", "match"),
    [
        ({}, {}, "stage 'a'"),
        ({"a": StagePlan("a", "gpu", 1, 1)}, {}, "kind 'gpu'"),
        ({"a": StagePlan("a", "k", 1, 1)}, {"service": "normal"}, "service"),
    ],
)
def test_bad_plans_are_refused_with_the_stage_named(
    plan: dict[str, StagePlan], kwargs: dict[str, str], match: str
) -> None:
    with pytest.raises(InvalidInput, match=match):
        simulate(ONE, {"a": _fixed("a", {1: 0.01})}, plan, np.zeros(3), **kwargs)  # type: ignore[arg-type]


def test_an_unsorted_trace_is_refused() -> None:
    with pytest.raises(InvalidInput, match="sorted"):
        simulate(ONE, {"a": _fixed("a", {1: 0.01})}, {"a": StagePlan("a", "k", 1, 1)}, np.array([1.0, 0.5]))
