"""A pipeline's shape and a plan for it.

Topology is a DAG of stages. A query enters every source stage when it arrives; a stage starts a
query once all of the stage's parents have finished it (a join); the query's latency is the time the
last sink finishes it. A Plan gives each stage its resource kind, batch size and replica count, with
the p99 the simulator predicted for it and its cost per second (Σ replicas × price per replica-second).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from veloxserve.errors import InvalidInput, invalid_parameter


@dataclass(frozen=True)
class Topology:
    """`stages` in topological order; `parents[s]` the stages whose output s consumes (empty: a source)."""

    stages: tuple[str, ...]
    parents: Mapping[str, tuple[str, ...]] = field(hash=False)

    def __post_init__(self) -> None:
        stages = tuple(self.stages)
        object.__setattr__(self, "stages", stages)
        if not stages:
            raise invalid_parameter("stages", "a pipeline", "at least one stage", stages)
        seen: set[str] = set()
        for s in stages:
            if not isinstance(s, str) or not s:
                raise invalid_parameter("stages", "a pipeline", "non-empty stage names", s)
            if s in seen:
                raise InvalidInput(
                    f"Stage {s!r} is declared twice in the pipeline; give each stage one name.", field="stages"
                )
            seen.add(s)
        parents = {s: tuple(self.parents.get(s, ())) for s in stages}
        for s in self.parents:
            if s not in seen:
                raise InvalidInput(
                    f"Unknown stage {s!r}: it has parents but is not a stage of the pipeline.", field="edges"
                )
        done: set[str] = set()
        for s in stages:
            for p in parents[s]:
                if p not in seen:
                    raise InvalidInput(
                        f"Stage {s!r} reads from unknown stage {p!r}; declare {p!r} or remove the edge.", field="edges"
                    )
                if p not in done:
                    raise InvalidInput(
                        f"Stage {s!r} comes before its parent {p!r}: stages must be in topological order.",
                        field="stages",
                    )
            done.add(s)
        object.__setattr__(self, "parents", parents)

    @classmethod
    def from_edges(cls, stages: Iterable[str], edges: Iterable[tuple[str, str]]) -> Topology:
        """The topology of `stages` joined by (from, to) edges, ordered topologically (stable in the
        declared order). Refuses, naming the stage: an edge to or from an unknown stage, a cycle,
        and a stage not connected to the rest of the pipeline (no query would reach it or leave it)."""
        declared = list(stages)
        names = set(declared)
        if len(names) != len(declared):
            twice = next(s for s in declared if declared.count(s) > 1)
            raise InvalidInput(
                f"Stage {twice!r} is declared twice in the pipeline; give each stage one name.", field="stages"
            )
        if not declared:
            raise invalid_parameter("stages", "a pipeline", "at least one stage", declared)
        parents: dict[str, list[str]] = {s: [] for s in declared}
        children: dict[str, list[str]] = {s: [] for s in declared}
        for edge in edges:
            if not (isinstance(edge, (tuple, list)) and len(edge) == 2):
                raise invalid_parameter("edges", "a pipeline", "pairs (from stage, to stage)", edge)
            a, b = edge
            for end in (a, b):
                if end not in names:
                    raise InvalidInput(
                        f"Unknown stage {end!r} in the edge {a!r} -> {b!r}; declare it or remove the edge.",
                        field="edges",
                    )
            if a == b:
                raise InvalidInput(f"Stage {a!r} feeds itself: a pipeline is a DAG, cycles are refused.", field="edges")
            if a not in parents[b]:
                parents[b].append(a)
                children[a].append(b)
        order: list[str] = []
        waiting = {s: len(parents[s]) for s in declared}
        ready = [s for s in declared if waiting[s] == 0]
        while ready:
            s = ready.pop(0)
            order.append(s)
            for c in children[s]:
                waiting[c] -= 1
                if waiting[c] == 0:
                    ready.append(c)
            ready.sort(key=declared.index)
        if len(order) < len(declared):
            stuck = _cycle([s for s in declared if waiting[s] > 0], parents)
            raise InvalidInput(
                f"Stage {stuck[0]!r} is on a cycle ({' -> '.join(stuck + [stuck[0]])}): a pipeline is a DAG.",
                field="edges",
            )
        if len(declared) > 1:
            reach = _component(declared[0], parents, children)
            for s in declared:
                if s not in reach:
                    raise InvalidInput(
                        f"Stage {s!r} is unreachable: no edge joins it to the pipeline of {declared[0]!r}.",
                        field="edges",
                    )
        return cls(tuple(order), {s: tuple(parents[s]) for s in order})

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(s for s in self.stages if not self.parents[s])

    @property
    def children(self) -> dict[str, tuple[str, ...]]:
        return {s: tuple(c for c in self.stages if s in self.parents[c]) for s in self.stages}

    @property
    def sinks(self) -> tuple[str, ...]:
        kids = self.children
        return tuple(s for s in self.stages if not kids[s])

    @property
    def edges(self) -> tuple[tuple[str, str], ...]:
        return tuple((p, s) for s in self.stages for p in self.parents[s])

    def longest_path(self) -> tuple[str, ...]:
        """The critical path in stages: the longest chain from a source to a sink (first in order on ties)."""
        best: dict[str, tuple[str, ...]] = {}
        for s in self.stages:
            chains = [best[p] for p in self.parents[s]]
            best[s] = max(chains, key=len, default=()) + (s,)
        return max((best[s] for s in self.sinks), key=len)

    def to_json(self) -> dict[str, Any]:
        return {"stages": list(self.stages), "edges": [list(e) for e in self.edges]}

    @classmethod
    def from_json(cls, data: Any) -> Topology:
        if not isinstance(data, Mapping) or "stages" not in data:
            raise invalid_parameter("stages", "a pipeline", "an object with 'stages' and 'edges'", data)
        return cls.from_edges(data["stages"], [tuple(e) for e in data.get("edges", ())])


def _cycle(stuck: Iterable[str], parents: Mapping[str, list[str]]) -> list[str]:
    """One cycle, in edge direction, through the first stuck stage that is its own ancestor."""
    for s in stuck:
        if s not in _ancestors(s, parents):
            continue  # downstream of a cycle, not on one
        prev: dict[str, str] = {}
        queue = [s]
        while queue:
            x = queue.pop(0)
            for p in parents[x]:
                if p == s:
                    cycle = [s, x]
                    while cycle[-1] != s and cycle[-1] in prev:
                        cycle.append(prev[cycle[-1]])
                    return [c for i, c in enumerate(cycle) if c != s or i == 0]
                if p not in prev:
                    prev[p] = x
                    queue.append(p)
    raise AssertionError("a stuck topological sort has a cycle")


def _ancestors(s: str, parents: Mapping[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    stack = [s]
    while stack:
        for p in parents[stack.pop()]:
            if p not in seen:
                seen.add(p)
                stack.append(p)
    return seen


def _component(start: str, parents: Mapping[str, list[str]], children: Mapping[str, list[str]]) -> set[str]:
    seen = {start}
    stack = [start]
    while stack:
        s = stack.pop()
        for n in (*parents[s], *children[s]):
            if n not in seen:
                seen.add(n)
                stack.append(n)
    return seen


@dataclass(frozen=True)
class StagePlan:
    """How one stage runs: its resource kind, the largest batch a replica takes, how many replicas."""

    stage: str
    kind: str
    batch_size: int
    replicas: int

    def __post_init__(self) -> None:
        where = f"the plan of stage {self.stage!r}"
        for name in ("stage", "kind"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise invalid_parameter(name, where, "a non-empty string", value)
        for name in ("batch_size", "replicas"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise invalid_parameter(name, where, "an int >= 1", value)

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "kind": self.kind, "batch_size": self.batch_size, "replicas": self.replicas}

    @classmethod
    def from_json(cls, data: Any) -> StagePlan:
        if not isinstance(data, Mapping):
            raise invalid_parameter("stages", "a plan", "an object per stage", data)
        for name in ("stage", "kind", "batch_size", "replicas"):
            if name not in data:
                raise invalid_parameter(name, "a stage plan", "present", None)
        return cls(data["stage"], data["kind"], data["batch_size"], data["replicas"])


@dataclass(frozen=True)
class Plan:
    """Every stage's StagePlan, the simulated p99 (seconds; inf when the load is never served), the
    cost per second, whether it meets the objective, and why (or why not)."""

    stages: Mapping[str, StagePlan] = field(hash=False)
    predicted_p99_s: float
    cost_per_s: float
    feasible: bool
    reason: str = ""

    def __post_init__(self) -> None:
        stages = dict(self.stages)
        for name, sp in stages.items():
            if not isinstance(sp, StagePlan) or sp.stage != name:
                raise invalid_parameter("stages", "a plan", f"the StagePlan of stage {name!r}", sp)
        object.__setattr__(self, "stages", stages)
        p99 = self.predicted_p99_s
        if not isinstance(p99, (int, float)) or math.isnan(p99) or p99 < 0:
            raise invalid_parameter("predicted_p99_s", "a plan", "a number >= 0 (inf allowed)", p99)
        cost = self.cost_per_s
        if not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost < 0:
            raise invalid_parameter("cost_per_s", "a plan", "a finite number >= 0", cost)

    @property
    def total_replicas(self) -> int:
        return sum(sp.replicas for sp in self.stages.values())

    def to_json(self) -> dict[str, Any]:
        p99 = self.predicted_p99_s
        return {
            "stages": {name: sp.to_json() for name, sp in self.stages.items()},
            "predicted_p99_s": p99 if math.isfinite(p99) else None,  # JSON has no inf: null is "never served"
            "cost_per_s": self.cost_per_s,
            "feasible": self.feasible,
            "reason": self.reason,
        }

    @classmethod
    def from_json(cls, data: Any) -> Plan:
        if not isinstance(data, Mapping):
            raise invalid_parameter("plan", "a plan", "an object", data)
        for name in ("stages", "predicted_p99_s", "cost_per_s", "feasible"):
            if name not in data:
                raise invalid_parameter(name, "a plan", "present", None)
        stages = data["stages"]
        if not isinstance(stages, Mapping):
            raise invalid_parameter("stages", "a plan", "an object of stage plans by stage name", stages)
        plans = {}
        for name, sp in stages.items():
            plan = StagePlan.from_json(sp)
            if plan.stage != name:
                raise invalid_parameter("stages", "a plan", f"the plan of stage {name!r} under its name", plan.stage)
            plans[name] = plan
        if not isinstance(data["feasible"], bool):
            raise invalid_parameter("feasible", "a plan", "true or false", data["feasible"])
        reason = data.get("reason", "")
        if not isinstance(reason, str):
            raise invalid_parameter("reason", "a plan", "a string", reason)
        p99 = data["predicted_p99_s"]
        return cls(plans, math.inf if p99 is None else p99, data["cost_per_s"], data["feasible"], reason)
