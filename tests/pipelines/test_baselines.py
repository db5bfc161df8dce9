"""The baselines: Clipper-style per-stage AIMD and the whole pipeline replicated as one unit."""

from __future__ import annotations

import pytest

from veloxserve.errors import InvalidInput
from veloxserve.pipelines.baselines import per_stage_aimd_plan, whole_pipeline_plan
from veloxserve.pipelines.planner import plan_pipeline
from veloxserve.pipelines.plans import StagePlan, Topology
from veloxserve.pipelines.profiles import BatchTiming, StageProfile
from veloxserve.pipelines.simulator import simulate
from veloxserve.pipelines.traces import gamma_trace

TOP = Topology.from_edges(
    ["feat", "sk", "torch", "corr"], [("feat", "sk"), ("feat", "torch"), ("sk", "corr"), ("torch", "corr")]
)


def _linear(stage: str, t1: float, slope: float, price: float = 1.0) -> StageProfile:
    times = [(b, t1 + slope * (b - 1)) for b in (1, 2, 4, 8, 16)]
    return StageProfile(stage, "threads=1", price, tuple(BatchTiming(b, t, 1.5 * t, 1.1 * t) for b, t in times))


PROFILES = {
    "feat": _linear("feat", 0.002, 0.0005),
    "sk": _linear("sk", 0.004, 0.001),
    "torch": _linear("torch", 0.012, 0.002),
    "corr": _linear("corr", 0.001, 0.0002),
}
TRACE = gamma_trace(300.0, 2.0, 4.0, seed=7)
OBJECTIVE = 0.060


def test_aimd_splits_the_objective_over_the_critical_path_and_copies_the_bottleneck_replicas() -> None:
    reference = plan_pipeline(TOP, PROFILES, TRACE, OBJECTIVE, max_replicas=16)
    aimd = per_stage_aimd_plan(TOP, PROFILES, TRACE, OBJECTIVE, reference)
    share = OBJECTIVE / 3  # feat -> sk|torch -> corr
    bottleneck = max(sp.replicas for sp in reference.stages.values())
    for s, sp in aimd.stages.items():
        assert sp.replicas == bottleneck
        assert sp.kind == reference.stages[s].kind
        profile = PROFILES[s]
        assert profile.service_time(sp.batch_size, "p99") <= share or sp.batch_size == 1
        assert profile.service_time(sp.batch_size + 1, "p99") > share or sp.batch_size == profile.max_batch_size
    assert aimd.predicted_p99_s == simulate(TOP, PROFILES, aimd, TRACE).p99_s
    assert aimd.cost_per_s >= reference.cost_per_s
    assert "per-stage AIMD" in aimd.reason


def test_whole_pipeline_is_the_smallest_common_replica_count_meeting_the_objective() -> None:
    whole = whole_pipeline_plan(TOP, PROFILES, TRACE, OBJECTIVE, max_replicas=32)
    counts = {sp.replicas for sp in whole.stages.values()}
    assert len(counts) == 1 and {sp.batch_size for sp in whole.stages.values()} == {1}
    assert whole.feasible and whole.predicted_p99_s <= OBJECTIVE
    r = counts.pop()
    fewer = {s: StagePlan(s, "threads=1", 1, r - 1) for s in TOP.stages}
    stable = all(
        300.0 * 0 + (r - 1) * PROFILES[s].throughput(1) >= len(TRACE) / (TRACE[-1] - TRACE[0]) for s in TOP.stages
    )
    assert not stable or simulate(TOP, PROFILES, fewer, TRACE).p99_s > OBJECTIVE
    inferline = plan_pipeline(TOP, PROFILES, TRACE, OBJECTIVE, max_replicas=32)
    assert inferline.cost_per_s <= whole.cost_per_s


def test_whole_pipeline_reports_when_no_count_is_enough() -> None:
    whole = whole_pipeline_plan(TOP, PROFILES, TRACE, 0.010, max_replicas=8)
    assert not whole.feasible and "the best p99 reachable" in whole.reason


@pytest.mark.parametrize("batch_size", [0, -1])
def test_whole_pipeline_refuses_a_bad_batch_size(batch_size: int) -> None:
    with pytest.raises(InvalidInput, match="batch_size"):
        whole_pipeline_plan(TOP, PROFILES, TRACE, OBJECTIVE, batch_size=batch_size)
