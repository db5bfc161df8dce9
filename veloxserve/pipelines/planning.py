"""The serving side's use of the planner: a deployable plan for a declared pipeline, or a 400.

The planner itself (planner.py, simulator.py, traces.py) is pure: profiles and a trace in, a Plan
out. This module joins it to a PipelineSpec: it builds the Topology and the arrival trace the
spec declares (Gamma inter-arrivals at `rate_qps` with coefficient of variation `cv`), asks for a
plan ("inferline") or takes the spec's own batch sizes and replicas ("fixed", the baselines'
way), and refuses an objective no plan can reach, saying which path of stages cannot and the best
achievable p99 (InvalidInput, before anything is deployed).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from veloxserve.errors import InvalidInput
from veloxserve.pipelines.profiles import StageProfile
from veloxserve.pipelines.spec import PipelineSpec

TRACE_SECONDS = 30.0  # of synthetic arrivals the planner provisions against …
TRACE_ARRIVALS = 1000  # … or fewer seconds at a high rate: the search simulates the trace many times
SEED = 0


def critical_path(spec: PipelineSpec, profiles: dict[str, StageProfile]) -> tuple[list[str], float]:
    """The path of stages whose fastest service (p50 of a batch of one) sums highest, and that sum:
    no plan answers faster than this, whatever it spends."""
    best: dict[str, tuple[float, list[str]]] = {}
    for name in spec.order():
        own = _fastest(profiles[name])
        before = max((best[p] for p in spec.parents(name)), default=(0.0, []), key=lambda b: b[0])
        best[name] = (before[0] + own, [*before[1], name])
    total, path = best[spec.sink]
    return path, total


def check_reachable(spec: PipelineSpec, profiles: dict[str, StageProfile]) -> None:
    path, seconds = critical_path(spec, profiles)
    if seconds * 1e3 > spec.objective_ms:
        parts = ", ".join(f"{n} {_fastest(profiles[n]) * 1e3:.2f} ms" for n in path)
        slowest = max(path, key=lambda n: _fastest(profiles[n]))
        raise InvalidInput(
            f"The objective of {spec.objective_ms:g} ms is out of reach: the stages {' -> '.join(path)} need at "
            f"least {seconds * 1e3:.2f} ms one after another ({parts}; measured on this machine), the slowest "
            f"being stage {slowest!r}. Raise objective_ms above {seconds * 1e3:.2f}, or use a faster model there.",
            field="objective_ms",
        )


def choose_plan(spec: PipelineSpec, profiles: dict[str, StageProfile]) -> dict[str, Any]:
    """The plan to deploy, as JSON: {planner, stages: [{stage, kind, batch_size, replicas}],
    predicted_p99_ms, cost_per_s, feasible, reason}."""
    check_reachable(spec, profiles)
    if spec.plan == "fixed":
        stages: list[dict[str, Any]] = [
            {"stage": s.name, "kind": profiles[s.name].kind, "batch_size": s.batch_size, "replicas": s.replicas}
            for s in spec.stages
        ]
        cost = sum(profiles[s["stage"]].price_per_replica_s * s["replicas"] for s in stages)
        return {
            "planner": "fixed",
            "stages": stages,
            "predicted_p99_ms": None,
            "cost_per_s": cost,
            "feasible": True,
            "reason": "batch sizes and replicas as declared",
        }
    from veloxserve.pipelines.planner import plan_pipeline
    from veloxserve.pipelines.plans import Topology

    trace = planned_trace(spec)
    topology = Topology.from_edges([s.name for s in spec.stages], list(spec.edges))
    chosen = plan_pipeline(topology, profiles, trace, spec.objective_ms / 1e3)
    if not chosen.feasible:
        raise InvalidInput(
            f"No plan meets the objective of {spec.objective_ms:g} ms at {spec.rate_qps:g} queries/s (cv "
            f"{spec.cv:g}): {chosen.reason} The best achievable p99 is {chosen.predicted_p99_s * 1e3:.2f} ms; "
            "raise objective_ms or lower rate_qps.",
            field="objective_ms",
        )
    return plan_json(chosen, "inferline")


def planned_trace(spec: PipelineSpec) -> np.ndarray:
    """The arrivals a spec's plan provisions for (and the tuner's planned envelope): Gamma at
    `rate_qps` with coefficient of variation `cv`, seeded, so a restart plans the same."""
    from veloxserve.pipelines.traces import gamma_trace

    return gamma_trace(spec.rate_qps, spec.cv, min(TRACE_SECONDS, TRACE_ARRIVALS / spec.rate_qps), SEED)


def plan_json(plan: Any, planner: str) -> dict[str, Any]:
    """A pipe-plan Plan as the JSON a pipeline version keeps."""
    stages = plan.stages.values()
    return {
        "planner": planner,
        "stages": [
            {"stage": s.stage, "kind": s.kind, "batch_size": int(s.batch_size), "replicas": int(s.replicas)}
            for s in stages
        ],
        "predicted_p99_ms": plan.predicted_p99_s * 1e3 if math.isfinite(plan.predicted_p99_s) else None,
        "cost_per_s": plan.cost_per_s,
        "feasible": plan.feasible,
        "reason": plan.reason,
    }


def _fastest(profile: StageProfile) -> float:
    return min(t.p50_s for t in profile.timings)
