"""The plans InferLine is compared with, on the same profiles and trace, simulated the same way.

- Per-stage AIMD (Clipper): each stage tunes its own batch size against its share of the objective,
  split evenly over the critical path; the share bounds a batch's p99 service time, which is where
  AIMD settles. Replication is not Clipper's to choose: every stage gets the replicas the reference
  plan (InferLine's) gives its bottleneck stage (the stage with most replicas).
- Whole pipeline as one unit: every stage has the same replica count and batch size (1 by default),
  scaled together to the smallest count whose simulated p99 meets the objective. Simulating it as
  per-stage queues is an approximation: a real unit routes a query through one replica of each
  stage, with less pooling, so the simulated p99 is optimistic for this baseline.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from veloxserve.errors import invalid_parameter
from veloxserve.pipelines.planner import Config, Search
from veloxserve.pipelines.plans import Plan, Topology
from veloxserve.pipelines.profiles import ProfileSet


def per_stage_aimd_plan(
    topology: Topology,
    profiles: ProfileSet,
    trace: np.ndarray,
    objective_s: float,
    reference: Plan,
    *,
    max_batch_size: int | None = None,
    service: str = "deterministic",
    seed: int = 0,
) -> Plan:
    """Clipper-style: objective / len(critical path) per stage, each stage's batch size the largest whose
    p99 service time fits that share (at least 1; at most `max_batch_size`, default the largest
    measured), each stage on the reference plan's kind, every stage with the reference's bottleneck
    replica count."""
    path = topology.longest_path()
    share = objective_s / len(path)
    for s in topology.stages:
        if s not in reference.stages:
            raise invalid_parameter(
                "reference", "per_stage_aimd_plan", f"a plan of stage {s!r}", sorted(reference.stages)
            )
    bottleneck = max(topology.stages, key=lambda s: reference.stages[s].replicas)
    replicas = reference.stages[bottleneck].replicas
    search = Search(topology, profiles, trace, objective_s, max(replicas, 1), None, 1.0, service, seed)
    config = []
    for s in topology.stages:
        kind = reference.stages[s].kind
        prof = search.profile(s, kind)
        top = max_batch_size or prof.max_batch_size
        fits = [b for b in range(1, top + 1) if prof.service_time(b, "p99") <= share]
        config.append((kind, max(fits, default=1), replicas))
    how = (
        f"per-stage AIMD: {share * 1e3:.1f} ms per stage over the critical path {' -> '.join(path)}, "
        f"the {replicas} replicas of the bottleneck stage {bottleneck!r} everywhere"
    )
    return search.plan(tuple(config), how)


def whole_pipeline_plan(
    topology: Topology,
    profiles: ProfileSet,
    trace: np.ndarray,
    objective_s: float,
    *,
    kinds: Mapping[str, str] | None = None,
    batch_size: int = 1,
    max_replicas: int = 64,
    service: str = "deterministic",
    seed: int = 0,
) -> Plan:
    """The pipeline replicated as one unit: the smallest common replica count (≤ max_replicas) meeting
    the objective in simulation, each stage on `kinds[stage]` (default: its cheapest kind) at
    `batch_size`. Assumes the p99 falls as replicas grow (galloping, then bisection)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise invalid_parameter("batch_size", "whole_pipeline_plan", "an int >= 1", batch_size)
    search = Search(topology, profiles, trace, objective_s, max_replicas, None, 1.0, service, seed)
    chosen = {}
    for s in topology.stages:
        table = search.table[s]
        kind = (kinds or {}).get(s) or min(table, key=lambda k: (table[k].price_per_replica_s, k))
        if kind not in table:
            raise invalid_parameter("kinds", "whole_pipeline_plan", f"a profiled kind of stage {s!r}", kind)
        chosen[s] = kind

    def config(r: int) -> Config:
        return tuple((chosen[s], batch_size, r) for s in topology.stages)

    low = max(search.needed(s, chosen[s], batch_size, 1.0) for s in topology.stages)
    how = f"the whole pipeline as one unit, batch size {batch_size}"
    if low > max_replicas:
        return search.plan(config(max_replicas), how)
    if search.feasible(config(low)):
        return search.plan(config(low), how)
    high = low
    while high < max_replicas and not search.feasible(config(high)):
        low, high = high, min(max_replicas, max(high + 1, 2 * high))
    if not search.feasible(config(high)):
        return search.plan(config(high), how)
    while high - low > 1:  # low infeasible, high feasible
        mid = (low + high) // 2
        low, high = (low, mid) if search.feasible(config(mid)) else (mid, high)
    return search.plan(config(high), how)
