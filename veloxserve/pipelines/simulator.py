"""A discrete-event simulation of a pipeline under a plan, replaying an arrival trace.

The model is InferLine's: each stage has one FIFO queue and `replicas` identical replicas; a replica
that is free while the queue is non-empty takes min(queue, batch_size) queries at once and is busy for
the profiled service time of that batch. A query enters every source stage on arrival, enters a stage
when all of the stage's parents have finished it, and is done when its last sink finishes it. There
is no network or scheduling overhead and no deadline dropping: the simulator predicts what the plan
does, the serving side's degraded answers are not modelled.

Service time of a batch of k: "deterministic" the profile's mean (the default); "sampled" a
log-normal with the profile's p50 as median and p99 as 99th percentile (seeded); "exponential" an
exponential with the profile's mean (for checking against M/M/c queueing formulas).

The event loop is a heap of batch completions merged with the sorted arrivals: per event O(log
replicas) and a tuple; queues are append-only lists with a head index, and a batch is a (start, end)
range of its stage's queue, so completion times, latencies and queueing delays are computed after
the run with numpy from the batch records.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from veloxserve.errors import InvalidInput, invalid_parameter
from veloxserve.pipelines.plans import Plan, StagePlan, Topology
from veloxserve.pipelines.profiles import ProfileSet, StageProfile, by_stage_and_kind
from veloxserve.pipelines.traces import checked

SERVICE_MODELS = ("deterministic", "sampled", "exponential")
_Z99 = 2.3263478740408408  # the standard normal's 99th percentile
_DRAWS = 1 << 16  # random draws made at once


@dataclass(frozen=True)
class StageStats:
    """What one stage did over the run."""

    utilisation: float  # busy replica-seconds / (replicas × makespan)
    mean_queue_s: float  # mean wait from entering the stage's queue to its batch starting
    p99_queue_s: float
    mean_batch: float  # mean number of queries per batch
    batches: int


@dataclass(frozen=True)
class SimResult:
    """Per-query latencies (seconds, in arrival order) and what the plan cost."""

    arrivals: np.ndarray
    latencies_s: np.ndarray
    cost_replica_s: float  # Σ replicas × price per replica-second × duration_s
    duration_s: float
    stages: Mapping[str, StageStats] = field(hash=False)

    @property
    def p50_s(self) -> float:
        return float(np.quantile(self.latencies_s, 0.50))

    @property
    def p99_s(self) -> float:
        return float(np.quantile(self.latencies_s, 0.99))

    @property
    def mean_s(self) -> float:
        return float(self.latencies_s.mean())

    def miss_rate(self, slo_s: float) -> float:
        """The fraction of queries whose latency is over `slo_s`."""
        return float(np.mean(self.latencies_s > slo_s))

    @property
    def utilisation(self) -> dict[str, float]:
        return {s: st.utilisation for s, st in self.stages.items()}

    @property
    def queueing_delay_s(self) -> dict[str, float]:
        return {s: st.mean_queue_s for s, st in self.stages.items()}


def plan_profiles(
    topology: Topology, profiles: ProfileSet, plan: Plan | Mapping[str, StagePlan]
) -> list[tuple[StagePlan, StageProfile]]:
    """Each stage's StagePlan with the profile of its kind, in topological order; refuses a plan that
    misses a stage or names a kind the stage has no profile of."""
    stages = plan.stages if isinstance(plan, Plan) else plan
    table = by_stage_and_kind(profiles)
    out = []
    for s in topology.stages:
        if s not in stages:
            raise InvalidInput(
                f"The plan has no entry for stage {s!r}; plan every stage of the pipeline.", field="plan"
            )
        sp = stages[s]
        kinds = table.get(s)
        if kinds is None:
            raise InvalidInput(f"Stage {s!r} has no profile; profile it before planning.", field="profiles")
        if sp.kind not in kinds:
            raise InvalidInput(
                f"Stage {s!r} has no profile of kind {sp.kind!r} (profiled: {', '.join(sorted(kinds))}).", field="plan"
            )
        out.append((sp, kinds[sp.kind]))
    return out


def cost_per_s(pairs: list[tuple[StagePlan, StageProfile]]) -> float:
    return float(sum(sp.replicas * prof.price_per_replica_s for sp, prof in pairs))


def simulate(
    topology: Topology,
    profiles: ProfileSet,
    plan: Plan | Mapping[str, StagePlan],
    trace: np.ndarray,
    *,
    service: str = "deterministic",
    seed: int = 0,
    duration_s: float | None = None,
) -> SimResult:
    """Replay `trace` (sorted arrival times, seconds) through the pipeline run as `plan` says.
    `duration_s` prices the replicas (default: the trace's span, last arrival − first)."""
    if service not in SERVICE_MODELS:
        raise invalid_parameter("service", "simulate", " or ".join(map(repr, SERVICE_MODELS)), service)
    arrivals = checked(trace, "simulate")
    pairs = plan_profiles(topology, profiles, plan)
    n, S = len(arrivals), len(pairs)
    index = {s: i for i, s in enumerate(topology.stages)}
    kids = topology.children
    children = [[index[c] for c in kids[s]] for s in topology.stages]
    nparents = [len(topology.parents[s]) for s in topology.stages]
    sources = [index[s] for s in topology.sources]
    sinks = [index[s] for s in topology.sinks]
    batch = [sp.batch_size for sp, _ in pairs]
    free = [sp.replicas for sp, _ in pairs]
    quantile = "p50" if service == "sampled" else "mean"
    base = [[0.0] + [prof.service_time(k, quantile) for k in range(1, sp.batch_size + 1)] for sp, prof in pairs]
    sigma = [
        [0.0]
        + [
            math.log(prof.service_time(k, "p99") / prof.service_time(k, "p50")) / _Z99
            for k in range(1, sp.batch_size + 1)
        ]
        for sp, prof in pairs
    ]
    rng = np.random.default_rng((seed, 0x5E21))  # not the stream a trace made with the same seed uses

    def draws() -> list[float]:
        if service == "exponential":
            return rng.standard_exponential(_DRAWS).tolist()
        return rng.standard_normal(_DRAWS).tolist()

    pool: list[float] = draws() if service != "deterministic" else []
    drawn = 0
    order: list[list[int]] = [[] for _ in range(S)]
    ready: list[list[float]] = [[] for _ in range(S)]
    head = [0] * S
    b_size: list[list[int]] = [[] for _ in range(S)]
    b_start: list[list[float]] = [[] for _ in range(S)]
    b_end: list[list[float]] = [[] for _ in range(S)]
    pending = [[nparents[s]] * n if nparents[s] > 1 else [] for s in range(S)]
    heap: list[tuple[float, int, int, int, int]] = []
    seq = 0

    def dispatch(s: int, t: float) -> None:
        nonlocal seq, pool, drawn
        h, queued, limit = head[s], len(order[s]), batch[s]
        while free[s] and h < queued:
            k = min(queued - h, limit)
            if service == "deterministic":
                dur = base[s][k]
            else:
                if drawn == _DRAWS:
                    pool, drawn = draws(), 0
                z = pool[drawn]
                drawn += 1
                dur = base[s][k] * z if service == "exponential" else base[s][k] * math.exp(sigma[s][k] * z)
            free[s] -= 1
            seq += 1
            heapq.heappush(heap, (t + dur, seq, s, h, h + k))
            b_size[s].append(k)
            b_start[s].append(t)
            b_end[s].append(t + dur)
            h += k
        head[s] = h

    times = arrivals.tolist()
    i = 0
    while i < n or heap:
        if i < n and (not heap or times[i] <= heap[0][0]):
            t = times[i]
            for s in sources:
                order[s].append(i)
                ready[s].append(t)
                if free[s]:
                    dispatch(s, t)
            i += 1
            continue
        t, _, s, start, end = heapq.heappop(heap)
        free[s] += 1
        done = order[s]
        for c in children[s]:
            if nparents[c] == 1:
                order[c].extend(done[start:end])
                ready[c].extend([t] * (end - start))
            else:
                left, queue, when = pending[c], order[c], ready[c]
                for pos in range(start, end):
                    q = done[pos]
                    left[q] -= 1
                    if left[q] == 0:
                        queue.append(q)
                        when.append(t)
        dispatch(s, t)
        for c in children[s]:
            if free[c]:
                dispatch(c, t)
    return _result(topology, pairs, arrivals, order, ready, b_size, b_start, b_end, sinks, duration_s)


def _result(
    topology: Topology,
    pairs: list[tuple[StagePlan, StageProfile]],
    arrivals: np.ndarray,
    order: list[list[int]],
    ready: list[list[float]],
    b_size: list[list[int]],
    b_start: list[list[float]],
    b_end: list[list[float]],
    sinks: list[int],
    duration_s: float | None,
) -> SimResult:
    n = len(arrivals)
    finish = np.full(n, -np.inf)
    stats = {}
    last = float(arrivals[-1])
    for s, name in enumerate(topology.stages):
        sizes = np.asarray(b_size[s], dtype=np.int64)
        starts, ends = np.asarray(b_start[s]), np.asarray(b_end[s])
        if ends.size:
            last = max(last, float(ends.max()))
        if s in sinks:
            done = np.empty(n)
            done[np.asarray(order[s], dtype=np.int64)] = np.repeat(ends, sizes)
            np.maximum(finish, done, out=finish)
        waits = np.repeat(starts, sizes) - np.asarray(ready[s])
        stats[name] = (waits, sizes, float((ends - starts).sum()))
    makespan = max(last - float(arrivals[0]), 1e-12)
    if duration_s is None:
        duration_s = float(arrivals[-1] - arrivals[0])
    elif not (isinstance(duration_s, (int, float)) and math.isfinite(duration_s) and duration_s >= 0):
        raise invalid_parameter("duration_s", "simulate", "a finite number >= 0", duration_s)
    out = {}
    for (sp, _), (name, (waits, sizes, busy)) in zip(pairs, stats.items(), strict=True):
        out[name] = StageStats(
            utilisation=busy / (sp.replicas * makespan),
            mean_queue_s=float(waits.mean()),
            p99_queue_s=float(np.quantile(waits, 0.99)),
            mean_batch=float(sizes.mean()),
            batches=int(sizes.size),
        )
    return SimResult(arrivals, finish - arrivals, cost_per_s(pairs) * float(duration_s), float(duration_s), out)
