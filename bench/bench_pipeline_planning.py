"""InferLine's planning side on profiles and traces alone (no deployment): how fast the simulator
is at 100× loads, how close it is to queueing theory, and how close the greedy planner gets to an
exhaustive search.

    .venv/bin/python bench/bench_pipeline_planning.py [--instances 30] [--queries 100000]
    .venv/bin/python bench/bench_pipeline_planning.py --quick   # 4 instances, 5,000 queries

- simulator: a 4-stage diamond (featuriser -> two classifiers -> correction) replaying a Gamma trace
  (cv 2) at 100,000 queries/s with 500 replicas per stage at batch 8 (sampled service times), and at
  batch 1 with 1,300 replicas: wall time and simulated queries per second of wall time;
- queueing: mean wait of M/D/1 (rho 0.5, 0.8) and M/M/3 (rho 0.7) against the closed forms;
- planner: random small instances (2-stage chains and 3-stage forks, 1-2 kinds, batch sizes
  {1, 2, 4}, up to 3 replicas): feasibility agreement with exhaustive search, the cost ratio, and
  the planner's and the search's wall time.

Prints one JSON document. Times depend on the machine (2 shared cores when written).
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from veloxserve.pipelines.planner import exhaustive_plan, plan_pipeline
from veloxserve.pipelines.plans import StagePlan, Topology
from veloxserve.pipelines.profiles import BatchTiming, StageProfile
from veloxserve.pipelines.simulator import simulate
from veloxserve.pipelines.traces import gamma_trace


def _linear(stage: str, kind: str, price: float, t1: float, slope: float, sizes: tuple[int, ...]) -> StageProfile:
    times = [(b, t1 + slope * (b - 1)) for b in sizes]
    return StageProfile(stage, kind, price, tuple(BatchTiming(b, t, 1.3 * t, 1.1 * t) for b, t in times))


def simulator_speed(queries: int) -> dict[str, object]:
    top = Topology.from_edges(
        ["feat", "sk", "torch", "corr"], [("feat", "sk"), ("feat", "torch"), ("sk", "corr"), ("torch", "corr")]
    )
    profiles = {s: _linear(s, "k", 1.0, 0.010, 0.003, (1, 8)) for s in top.stages}
    rate = 100_000.0
    trace = gamma_trace(rate, 2.0, queries / rate, seed=3)
    out: dict[str, object] = {"queries": int(trace.size), "rate_qps": rate, "stages": len(top.stages)}
    for batch, replicas in ((8, 500), (1, 1300)):
        plan = {s: StagePlan(s, "k", batch, replicas) for s in top.stages}
        start = time.perf_counter()
        result = simulate(top, profiles, plan, trace, service="sampled")
        wall = time.perf_counter() - start
        out[f"batch_{batch}"] = {
            "replicas_per_stage": replicas,
            "wall_s": round(wall, 3),
            "simulated_queries_per_wall_s": round(trace.size / wall),
            "p99_ms": round(result.p99_s * 1e3, 2),
        }
    return out


def _erlang_c_wait(lam: float, mu: float, c: int) -> float:
    a = lam / mu
    tail = a**c / math.factorial(c) / (1 - a / c)
    return tail / (sum(a**k / math.factorial(k) for k in range(c)) + tail) / (c * mu - lam)


def queueing(duration_s: float) -> dict[str, object]:
    one = Topology.from_edges(["a"], [])
    mu = 100.0
    profile = {"a": StageProfile("a", "k", 1.0, (BatchTiming(1, 1 / mu, 1 / mu, 1 / mu),))}
    out: dict[str, object] = {}
    for rho in (0.5, 0.8):
        r = simulate(one, profile, {"a": StagePlan("a", "k", 1, 1)}, gamma_trace(rho * mu, 1.0, duration_s, seed=11))
        expected = rho / (2 * mu * (1 - rho))
        out[f"md1_rho_{rho}"] = {
            "simulated_wait_ms": round(r.stages["a"].mean_queue_s * 1e3, 4),
            "formula_wait_ms": round(expected * 1e3, 4),
        }
    lam = 210.0
    r = simulate(
        one,
        profile,
        {"a": StagePlan("a", "k", 1, 3)},
        gamma_trace(lam, 1.0, duration_s, seed=5),
        service="exponential",
        seed=9,
    )
    out["mm3_rho_0.7"] = {
        "simulated_wait_ms": round(r.stages["a"].mean_queue_s * 1e3, 4),
        "formula_wait_ms": round(_erlang_c_wait(lam, mu, 3) * 1e3, 4),
    }
    return out


def _instance(seed: int) -> tuple[Topology, dict[str, list[StageProfile]], np.ndarray, float]:
    rng = np.random.default_rng(seed)
    stages, edges = (["a", "b"], [("a", "b")]) if seed % 2 else (["a", "b", "c"], [("a", "b"), ("a", "c")])
    profiles = {}
    for s in stages:
        kinds = []
        for k in range(int(rng.integers(1, 3))):
            t1 = rng.uniform(0.002, 0.01)
            kinds.append(_linear(s, f"k{k}", float(rng.uniform(0.5, 2)), t1, t1 * rng.uniform(0.1, 0.6), (1, 2, 4)))
        profiles[s] = kinds
    trace = gamma_trace(float(rng.uniform(100, 400)), float(rng.choice([1.0, 3.0])), 1.5, seed=seed)
    return Topology.from_edges(stages, edges), profiles, trace, float(rng.uniform(0.015, 0.06))


def planner_vs_exhaustive(instances: int) -> dict[str, object]:
    agree, ratios, greedy_s, exhaustive_s = 0, [], 0.0, 0.0
    for seed in range(instances):
        topology, profiles, trace, objective = _instance(seed)
        start = time.perf_counter()
        greedy = plan_pipeline(topology, profiles, trace, objective, max_replicas=3)
        middle = time.perf_counter()
        best = exhaustive_plan(topology, profiles, trace, objective, max_replicas=3)
        greedy_s += middle - start
        exhaustive_s += time.perf_counter() - middle
        agree += greedy.feasible == best.feasible
        if greedy.feasible and best.feasible:
            ratios.append(greedy.cost_per_s / best.cost_per_s)
    return {
        "instances": instances,
        "feasibility_agrees": agree,
        "feasible": len(ratios),
        "same_cost_as_exhaustive": sum(r <= 1 + 1e-9 for r in ratios),
        "worst_cost_ratio": round(max(ratios, default=1.0), 4),
        "mean_cost_ratio": round(float(np.mean(ratios)) if ratios else 1.0, 4),
        "planner_wall_s": round(greedy_s, 2),
        "exhaustive_wall_s": round(exhaustive_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=30)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="4 instances, 5,000 queries, short queueing runs")
    args = parser.parse_args()
    instances, queries, duration = (4, 5_000, 50.0) if args.quick else (args.instances, args.queries, 1000.0)
    result = {
        "simulator": simulator_speed(queries),
        "queueing": queueing(duration),
        "planner_vs_exhaustive": planner_vs_exhaustive(instances),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
