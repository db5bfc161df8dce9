"""InferLine's low-frequency planner: the cheapest per-stage (kind, batch size, replicas) whose
simulated p99 over the planning trace meets the end-to-end objective.

A configuration is feasible when every stage can sustain the trace's mean rate (replicas × one
replica's throughput at its batch size ≥ rate; a plan that only keeps up on a short trace by luck is
refused) and the simulated p99 is within the objective. The search, as in the paper, is greedy:

1. Start cheap: per stage, the (kind, batch size) whose smallest replica count sustaining
   rate × headroom costs least (ties: the smaller batch).
2. While infeasible, take the action that most reduces the simulated p99 per unit of added cost
   (add a replica, change the batch size one step, change the kind); actions that add no cost and
   reduce p99 first. If none reduces it, add a replica to the stage where queries wait longest.
3. Once feasible, take the cost-reducing action (remove a replica, raise the batch size and shed
   replicas, a cheaper kind) that saves most while staying feasible, until none does.

If step 2 cannot reach the objective within max_replicas, the search restarts from the fast corner
(every stage at max_replicas, its lowest-latency option that sustains the rate) before giving up with
the best p99 it reached. Every configuration is simulated once (memoised).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from veloxserve.errors import invalid_parameter
from veloxserve.pipelines.plans import Plan, StagePlan, Topology
from veloxserve.pipelines.profiles import ProfileSet, StageProfile, by_stage_and_kind
from veloxserve.pipelines.simulator import SimResult, simulate
from veloxserve.pipelines.traces import checked

Option = tuple[str, int, int]  # (kind, batch size, replicas) of one stage
Config = tuple[Option, ...]  # one Option per stage, in topological order


@dataclass
class Search:
    """A pipeline, its profiles, a planning trace and an objective; simulates configurations, memoised."""

    topology: Topology
    profiles: ProfileSet
    trace: np.ndarray
    objective_s: float
    max_replicas: int = 64
    batch_sizes: Sequence[int] | None = None  # None: each profile's measured sizes
    headroom: float = 1.1
    service: str = "deterministic"
    seed: int = 0

    def __post_init__(self) -> None:
        where = "the planner"
        self.trace = checked(self.trace, where)
        if not (
            isinstance(self.objective_s, (int, float)) and math.isfinite(self.objective_s) and self.objective_s > 0
        ):
            raise invalid_parameter("objective_s", where, "a p99 objective in seconds > 0", self.objective_s)
        if not isinstance(self.max_replicas, int) or self.max_replicas < 1:
            raise invalid_parameter("max_replicas", where, "an int >= 1", self.max_replicas)
        if not (isinstance(self.headroom, (int, float)) and self.headroom >= 1):
            raise invalid_parameter("headroom", where, "a number >= 1", self.headroom)
        if self.batch_sizes is not None and (
            not self.batch_sizes or any(not isinstance(b, int) or b < 1 for b in self.batch_sizes)
        ):
            raise invalid_parameter("batch_sizes", where, "ints >= 1", self.batch_sizes)
        self.table = by_stage_and_kind(self.profiles)
        for s in self.topology.stages:
            if s not in self.table:
                raise invalid_parameter("profiles", where, f"a profile of stage {s!r}", sorted(self.table))
        span = float(self.trace[-1] - self.trace[0])
        self.rate = len(self.trace) / span if span > 0 else math.inf
        self.memo: dict[Config, SimResult] = {}

    def sizes(self, stage: str, kind: str) -> tuple[int, ...]:
        if self.batch_sizes is not None:
            return tuple(sorted(set(self.batch_sizes)))
        return self.table[stage][kind].batch_sizes

    def profile(self, stage: str, kind: str) -> StageProfile:
        return self.table[stage][kind]

    def needed(self, stage: str, kind: str, batch: int, headroom: float | None = None) -> int:
        """The fewest replicas sustaining the mean rate × headroom at this batch size (may exceed max)."""
        if math.isinf(self.rate):
            return 1
        h = self.headroom if headroom is None else headroom
        return max(1, math.ceil(self.rate * h / self.profile(stage, kind).throughput(batch) - 1e-9))

    def stable(self, config: Config) -> bool:
        return all(r >= self.needed(s, k, b, 1.0) for s, (k, b, r) in zip(self.topology.stages, config, strict=True))

    def cost(self, config: Config) -> float:
        return sum(
            r * self.profile(s, k).price_per_replica_s
            for s, (k, _, r) in zip(self.topology.stages, config, strict=True)
        )

    def run(self, config: Config) -> SimResult:
        if config not in self.memo:
            self.memo[config] = simulate(
                self.topology, self.profiles, self.stage_plans(config), self.trace, service=self.service, seed=self.seed
            )
        return self.memo[config]

    def p99(self, config: Config) -> float:
        return self.run(config).p99_s

    def feasible(self, config: Config) -> bool:
        return self.stable(config) and self.p99(config) <= self.objective_s

    def stage_plans(self, config: Config) -> dict[str, StagePlan]:
        return {s: StagePlan(s, k, b, r) for s, (k, b, r) in zip(self.topology.stages, config, strict=True)}

    def describe(self, config: Config) -> str:
        return ", ".join(f"{s}: {r}×{k} batch {b}" for s, (k, b, r) in zip(self.topology.stages, config, strict=True))

    def plan(self, config: Config, how: str) -> Plan:
        """The Plan of a configuration, with the reason it meets (or misses) the objective."""
        p99, ok = self.p99(config), self.feasible(config)
        objective = f"the objective {self.objective_s * 1e3:.1f} ms"
        if ok:
            reason = f"{how}: simulated p99 {p99 * 1e3:.1f} ms within {objective} with {self.describe(config)}"
        elif not self.stable(config):
            short = [
                s for s, (k, b, r) in zip(self.topology.stages, config, strict=True) if r < self.needed(s, k, b, 1.0)
            ]
            reason = (
                f"{how}: stage {short[0]!r} cannot sustain {self.rate:.1f} queries/s within max_replicas "
                f"{self.max_replicas} (the best p99 reachable is {p99 * 1e3:.1f} ms with {self.describe(config)}, "
                f"above {objective})"
            )
        else:
            reason = (
                f"{how}: the best p99 reachable is {p99 * 1e3:.1f} ms with {self.describe(config)}, above {objective}"
            )
        return Plan(self.stage_plans(config), p99, self.cost(config), ok, reason)


def _cheapest_start(search: Search) -> Config:
    config = []
    for s in search.topology.stages:
        options = []
        for kind, prof in search.table[s].items():
            for b in search.sizes(s, kind):
                r = min(search.max_replicas, search.needed(s, kind, b))
                options.append((r * prof.price_per_replica_s, b, prof.service_time(b, "p99"), (kind, b, r)))
        config.append(min(options)[3])
    return tuple(config)


def _fast_corner(search: Search) -> Config:
    config = []
    for s in search.topology.stages:
        options = []
        for kind, prof in search.table[s].items():
            for b in search.sizes(s, kind):
                sustains = search.max_replicas >= search.needed(s, kind, b, 1.0)
                options.append(
                    (not sustains, prof.service_time(b, "p99") if sustains else -prof.throughput(b), (kind, b))
                )
        kind, b = min(options)[2]
        config.append((kind, b, search.max_replicas))
    return tuple(config)


def _replace(config: Config, i: int, option: Option) -> Config:
    return config[:i] + (option,) + config[i + 1 :]


def _neighbour_sizes(sizes: tuple[int, ...], b: int) -> tuple[int | None, int | None]:
    lower = [x for x in sizes if x < b]
    higher = [x for x in sizes if x > b]
    return (lower[-1] if lower else None), (higher[0] if higher else None)


def _faster(search: Search, config: Config) -> Iterator[Config]:
    """Latency-reducing moves: one more replica, a batch size step, another kind."""
    for i, s in enumerate(search.topology.stages):
        k, b, r = config[i]
        if r < search.max_replicas:
            yield _replace(config, i, (k, b, r + 1))
        for nb in _neighbour_sizes(search.sizes(s, k), b):
            if nb is not None:
                yield _replace(config, i, (k, nb, r))
        for other in search.table[s]:
            if other != k:
                sizes = search.sizes(s, other)
                nb = min(sizes, key=lambda x: (abs(x - b), x))
                yield _replace(config, i, (other, nb, min(search.max_replicas, max(r, search.needed(s, other, nb)))))


def _cheaper(search: Search, config: Config) -> Iterator[Config]:
    """Cost-reducing moves: one replica fewer, a larger batch with fewer replicas, a cheaper kind."""
    for i, s in enumerate(search.topology.stages):
        k, b, r = config[i]
        if r > 1:
            yield _replace(config, i, (k, b, r - 1))
        _, nb = _neighbour_sizes(search.sizes(s, k), b)
        if nb is not None:
            fewer = {r - 1, min(r, search.needed(s, k, nb)), min(r, search.needed(s, k, nb, 1.0))}
            for nr in sorted(x for x in fewer if 1 <= x < r):
                yield _replace(config, i, (k, nb, nr))
        for other in search.table[s]:
            if other == k:
                continue
            for ob in search.sizes(s, other):
                for nr in {r, min(search.max_replicas, search.needed(s, other, ob))}:
                    yield _replace(config, i, (other, ob, nr))


def _improve_latency(search: Search, config: Config, max_steps: int) -> Config:
    for _ in range(max_steps):
        if search.feasible(config):
            return config
        p99, cost = search.p99(config), search.cost(config)
        best: tuple[tuple[int, float], Config] | None = None
        for cand in _faster(search, config):
            gain, extra = p99 - search.p99(cand), search.cost(cand) - cost
            if gain <= 0 and not (search.stable(cand) and not search.stable(config)):
                continue
            key = (0, -gain) if extra <= 0 else (1, -gain / extra)
            if best is None or key < best[0]:
                best = (key, cand)
        if best is not None:
            config = best[1]
            continue
        stats = search.run(config).stages
        growable = [i for i, (_, _, r) in enumerate(config) if r < search.max_replicas]
        if not growable:
            return config
        i = max(growable, key=lambda j: stats[search.topology.stages[j]].mean_queue_s)
        k, b, r = config[i]
        config = _replace(config, i, (k, b, r + 1))
    return config


def _reduce_cost(search: Search, config: Config, max_steps: int) -> Config:
    for _ in range(max_steps):
        cost = search.cost(config)
        options = [c for c in set(_cheaper(search, config)) if search.cost(c) < cost - 1e-12]
        options.sort(key=lambda c: (search.cost(c), search.p99(c) if c in search.memo else 0.0, c))
        nxt = next((c for c in options if search.stable(c) and search.feasible(c)), None)
        if nxt is None:
            return config
        config = nxt
    return config


def plan_pipeline(
    topology: Topology,
    profiles: ProfileSet,
    trace: np.ndarray,
    objective_s: float,
    *,
    max_replicas: int = 64,
    batch_sizes: Sequence[int] | None = None,
    headroom: float = 1.1,
    service: str = "deterministic",
    seed: int = 0,
    max_steps: int = 1000,
) -> Plan:
    """The cheapest plan the greedy search finds whose simulated p99 over `trace` is within `objective_s`;
    feasible=False with the best p99 reached (and where) in `reason` when none is."""
    search = Search(topology, profiles, trace, objective_s, max_replicas, batch_sizes, headroom, service, seed)
    config = _improve_latency(search, _cheapest_start(search), max_steps)
    how = "greedy search"
    if not search.feasible(config):
        corner = _fast_corner(search)
        if search.feasible(corner):
            config, how = corner, "greedy search from max_replicas"
        else:
            seen = [c for c in search.memo if search.stable(c)] or list(search.memo)
            best = min(seen, key=lambda c: (search.p99(c), search.cost(c)))
            return search.plan(best, "no plan meets the objective")
    return search.plan(_reduce_cost(search, config, max_steps), how)


def exhaustive_plan(
    topology: Topology,
    profiles: ProfileSet,
    trace: np.ndarray,
    objective_s: float,
    *,
    max_replicas: int = 4,
    batch_sizes: Sequence[int] | None = None,
    service: str = "deterministic",
    seed: int = 0,
) -> Plan:
    """Every configuration of the grid (kinds × batch sizes × 1..max_replicas per stage): the cheapest
    feasible one (ties: lower p99), else the lowest p99. For checking the planner on small instances."""
    search = Search(topology, profiles, trace, objective_s, max_replicas, batch_sizes, 1.0, service, seed)
    per_stage = [
        [(k, b, r) for k in search.table[s] for b in search.sizes(s, k) for r in range(1, max_replicas + 1)]
        for s in topology.stages
    ]
    best: Config | None = None
    fallback: Config | None = None
    for config in sorted(itertools.product(*per_stage), key=search.cost):
        if best is not None and search.cost(config) > search.cost(best) + 1e-12:
            break
        if not search.stable(config):
            continue
        if search.feasible(config):
            if best is None or search.p99(config) < search.p99(best):
                best = config
        elif fallback is None or search.p99(config) < search.p99(fallback):
            fallback = config
    if best is not None:
        return search.plan(best, "exhaustive search")
    if fallback is None:
        fallback = tuple(max(options, key=lambda o: o[2]) for options in per_stage)
    return search.plan(fallback, "exhaustive search: no plan meets the objective")
