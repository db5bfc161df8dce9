"""InferLine on this machine: a planned and tuned pipeline against the two baselines, measured on
real containers, then the same comparison in simulation at 100× the rate.

    .venv/bin/python bench/bench_pipelines.py [--quick]

The pipeline (real small models, each in its own container processes):

    featurise (callable: HashingVectorizer + TruncatedSVD on the query's text, 16 numbers)
      ├─> linear (scikit-learn LogisticRegression, predict_proba: 2 numbers)
      └─> mlp    (an ONNX graph of a fitted scikit-learn MLP: 1 number)
    correct (callable over the 3 numbers: the combined score)

Each stage is profiled alone (veloxserve/pipelines/profiler.py). The traces are Gamma arrivals at
two coefficients of variation (1: Poisson, 4: bursty), each with the rate doubling halfway. The
objective is tight for 2 cores: a few times the critical path's batch-of-one p99. On each trace:

  inferline       the planner's batch sizes and replicas per stage, and the tuner while serving
  per_stage_aimd  Clipper's way: the objective split evenly, AIMD batching per stage, the replicas
                  the planner gives the bottleneck stage everywhere (pipe-plan's per_stage_aimd_plan)
  whole_pipeline  the pipeline replicated as one unit (pipe-plan's whole_pipeline_plan)

Reported per configuration (averaged over the traces): slo_miss_rate (answers later than the
objective or degraded), cost_replica_s (replica-seconds, measured by sampling the replicas every
20 ms), p50_ms, p99_ms, predicted_p99_ms (the simulator's on the same trace and plan). Then
`simulated_100x`: the same three plans made for a 100× rate trace and simulated (no containers).
One JSON document (also bench/results/pipelines.json, not for --quick).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cloudpickle
import joblib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/x.py` as well as `-m bench.x`

from bench.clipper_load import run, write_report  # noqa: E402
from veloxserve.clipper import ClipperRuntime  # noqa: E402
from veloxserve.pipelines.profiler import Profiler  # noqa: E402
from veloxserve.pipelines.runtime import PipelineRuntime  # noqa: E402
from veloxserve.pipelines.spec import parse_spec  # noqa: E402

STAGES = ["featurise", "linear", "mlp", "correct"]
EDGES = [["featurise", "linear"], ["featurise", "mlp"], ["linear", "correct"], ["mlp", "correct"]]
WORDS = [f"w{i}" for i in range(400)]
CONFIGS = ("inferline", "per_stage_aimd", "whole_pipeline")


# ---- the planning side (pipe-plan): every call it is asked for, in one place ----------------------
def planning() -> Any:
    from veloxserve.pipelines import baselines, planner, simulator, traces
    from veloxserve.pipelines.plans import Topology

    return (planner, baselines), simulator, traces, Topology


def make_plans(profiles: dict[str, Any], objective_s: float, trace: np.ndarray) -> dict[str, Any]:
    (planner, baselines), _, _, Topology = planning()
    topology = Topology.from_edges(STAGES, EDGES)
    inferline = planner.plan_pipeline(topology, profiles, trace, objective_s)
    return {
        "inferline": inferline,
        "per_stage_aimd": baselines.per_stage_aimd_plan(topology, profiles, trace, objective_s, inferline),
        "whole_pipeline": baselines.whole_pipeline_plan(topology, profiles, trace, objective_s),
    }


def simulate(plan: Any, profiles: dict[str, Any], trace: np.ndarray) -> Any:
    _, simulator, _, Topology = planning()
    return simulator.simulate(Topology.from_edges(STAGES, EDGES), profiles, plan, trace)


def rate_change(rate: float, cv: float, seconds: float, seed: int) -> np.ndarray:
    """Gamma arrivals at `rate` for the first half, at 2×`rate` for the second."""
    _, _, traces, _ = planning()
    return np.asarray(traces.rate_change_trace([(rate, cv, seconds / 2), (2 * rate, cv, seconds / 2)], seed))


# ---- the models ------------------------------------------------------------------------------------
def _texts(rng: np.random.Generator, n: int) -> tuple[list[str], np.ndarray]:
    docs = [" ".join(rng.choice(WORDS, size=rng.integers(8, 30))) for _ in range(n)]
    labels = np.array([sum(int(w[1:]) < 40 for w in d.split()) >= 3 for d in docs], dtype=int)
    return docs, labels


def _featuriser(vectoriser: Any, svd: Any) -> Any:
    def featurise(batch: Any) -> Any:
        return svd.transform(vectoriser.transform(list(batch)))

    return featurise


def _corrector() -> Any:
    def correct(batch: Any) -> Any:
        import numpy as np

        batch = np.asarray(batch, dtype=float)
        return (batch[:, 1] + batch[:, 2]) / 2  # P(class 1) of linear, and of mlp

    return correct


def _mlp_onnx(mlp: Any, path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    (W1, W2), (b1, b2) = mlp.coefs_, mlp.intercepts_
    nodes = [
        helper.make_node("MatMul", ["x", "W1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "W2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], ["o1"]),
        helper.make_node("Sigmoid", ["o1"], ["y"]),
    ]
    weights = [
        numpy_helper.from_array(np.asarray(a, dtype=np.float32), n)
        for a, n in ((W1, "W1"), (b1, "b1"), (W2, "W2"), (b2, "b2"))
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, W1.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, W2.shape[1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


async def deploy_models(clipper: ClipperRuntime, tmp: Path, rng: np.random.Generator) -> list[str]:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import HashingVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    docs, labels = _texts(rng, 600)
    vectoriser = HashingVectorizer(n_features=2**12, ngram_range=(1, 2), alternate_sign=False)
    svd = TruncatedSVD(16, random_state=0).fit(vectoriser.transform(docs))
    X = svd.transform(vectoriser.transform(docs))
    with open(tmp / "featurise.pkl", "wb") as fh:
        cloudpickle.dump(_featuriser(vectoriser, svd), fh)
    with open(tmp / "correct.pkl", "wb") as fh:
        cloudpickle.dump(_corrector(), fh)
    joblib.dump(LogisticRegression(max_iter=500).fit(X, labels), tmp / "linear.joblib")
    mlp = MLPClassifier((64,), max_iter=300, random_state=0).fit(X, labels)
    _mlp_onnx(mlp, tmp / "mlp.onnx")
    await clipper.deploy("featurise", "callable", tmp / "featurise.pkl", sample=docs[0])
    await clipper.deploy("linear", "sklearn", tmp / "linear.joblib", method="predict_proba", sample=[0.0] * 16)
    await clipper.deploy("mlp", "onnx", tmp / "mlp.onnx", sample=[0.0] * 16)
    await clipper.deploy("correct", "callable", tmp / "correct.pkl", sample=[0.0] * 3)
    return _texts(rng, 2000)[0]


# ---- one measured run ------------------------------------------------------------------------------
def pipeline_body(name: str, objective_ms: float, plan: Any, config: str) -> dict[str, Any]:
    planned = plan.stages
    return {
        "name": name,
        "objective_ms": objective_ms,
        "plan": "fixed",
        "autoscale": config == "inferline",
        "stages": [
            {
                "name": n,
                "model": n,
                "batch_size": int(planned[n].batch_size),
                "replicas": int(planned[n].replicas),
                "aimd": config == "per_stage_aimd",
                "default": 0.5 if n == "correct" else None,
            }
            for n in STAGES
        ],
        "edges": EDGES,
    }


async def replay(pipelines: PipelineRuntime, name: str, trace: np.ndarray, texts: list[str], objective_s: float):
    """Send the trace's queries open loop (at their arrival times, whatever is outstanding)."""
    pipeline = pipelines.pipeline(name)
    loop = asyncio.get_running_loop()
    latencies = np.zeros(len(trace))
    missed = np.zeros(len(trace), dtype=bool)
    replica_seconds = 0.0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal replica_seconds
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.02)
            now = time.perf_counter()
            replica_seconds += (now - last) * sum(s.replicas for s in pipeline.stages.values())
            last = now

    async def one(i: int) -> None:
        started = time.perf_counter()
        answer = await pipelines.predict(name, "bench", texts[i % len(texts)])
        latencies[i] = time.perf_counter() - started
        missed[i] = answer["degraded"] or latencies[i] > objective_s

    sampler = loop.create_task(sample())
    start = loop.time()
    tasks = []
    for i, t in enumerate(trace):
        delay = start + float(t) - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(one(i)))
    await asyncio.gather(*tasks)
    done.set()
    await sampler
    return latencies, missed, replica_seconds


def figures(latencies_s: np.ndarray, miss: float, cost: float, predicted_s: float | None) -> dict[str, float | None]:
    ms = np.asarray(latencies_s) * 1e3
    return {
        "slo_miss_rate": round(float(miss), 4),
        "cost_replica_s": round(float(cost), 2),
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "predicted_p99_ms": None if predicted_s is None else round(float(predicted_s) * 1e3, 3),
    }


def _mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = rows[0].keys()
    return {
        k: None if any(r[k] is None for r in rows) else round(float(np.mean([r[k] for r in rows])), 4) for k in keys
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipelines-"))
    clipper = ClipperRuntime(tmp / "home", model_dirs=[tmp])
    await clipper.start()
    sizes = (1, 2, 4, 8) if args.quick else (1, 2, 4, 8, 16, 32)
    pipelines = PipelineRuntime(clipper, profiler=Profiler(clipper, batch_sizes=sizes, batches=5 if args.quick else 20))
    await pipelines.start()
    try:
        texts = await deploy_models(clipper, tmp, rng)
        spec = parse_spec(
            {"name": "probe", "objective_ms": 1e6, "stages": [{"name": n, "model": n} for n in STAGES], "edges": EDGES}
        )
        profiles = await pipelines.profiler.profile_pipeline(spec)
        critical = max(
            sum(profiles[n].timings[0].p99_s for n in path)
            for path in (["featurise", "linear", "correct"], ["featurise", "mlp", "correct"])
        )
        objective_s = max(args.objective_ms / 1e3 if args.objective_ms else 4 * critical, 0.005)
        measured: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
        simulated: dict[str, list[dict[str, Any]]] = {c: [] for c in CONFIGS}
        for k, cv in enumerate((1.0, 4.0)):
            trace = rate_change(args.rate, cv, args.seconds, seed=10 + k)
            plans = make_plans(profiles, objective_s, trace)
            for config, plan in plans.items():
                name = f"{config}-{k}"
                await pipelines.deploy(pipeline_body(name, objective_s * 1e3, plan, config))
                latencies, missed, cost = await replay(pipelines, name, trace, texts, objective_s)
                await pipelines.remove(name)
                predicted = simulate(plan, profiles, trace)
                measured[config].append(figures(latencies, missed.mean(), cost, predicted.p99_s))
            big = rate_change(100 * args.rate, cv, args.seconds, seed=20 + k)  # 100× the rate
            for config, plan in make_plans(profiles, objective_s, big).items():
                result = simulate(plan, profiles, big)
                simulated[config].append(
                    figures(result.latencies_s, result.miss_rate(objective_s), result.cost_replica_s, result.p99_s)
                )
        return {
            "pipeline": "featurise -> (linear, mlp) -> correct",
            "objective_ms": round(objective_s * 1e3, 3),
            "rate_qps": args.rate,
            "rate_change": "x2 halfway",
            "cvs": [1.0, 4.0],
            "seconds_per_trace": args.seconds,
            "profiles": {n: p.to_json() for n, p in profiles.items()},
            "measured": {c: _mean(rows) for c, rows in measured.items()},
            "simulated_100x": {c: _mean(rows) for c, rows in simulated.items()},
        }
    finally:
        await pipelines.close()
        await clipper.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short traces, few profile batches")
    parser.add_argument("--rate", type=float, default=None, help="queries/s before the rate change (default 40)")
    parser.add_argument("--seconds", type=float, default=None, help="length of each trace (default 20; quick 1.5)")
    parser.add_argument("--objective-ms", type=float, default=None, help="default: 4 × the critical path's p99")
    args = parser.parse_args()
    args.rate = args.rate or (20.0 if args.quick else 40.0)
    args.seconds = args.seconds or (1.5 if args.quick else 20.0)
    write_report("pipelines", run(bench(args)), keep=not args.quick)


if __name__ == "__main__":
    main()
