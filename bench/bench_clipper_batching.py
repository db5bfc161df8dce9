"""Throughput and p99 of scikit-learn models in containers: batches of one vs adaptive batching.

    .venv/bin/python -m bench.bench_clipper_batching [--seconds 5] [--concurrency 128] [--frontends N] [--quick]

A linear model (logistic regression) and a random forest trained on scikit-learn's bundled digits
data, each deployed in one container with a 20 ms batch latency objective; closed-loop clients in
this process send distinct inputs (digits rows plus tiny noise, so the cache never answers) through
the whole runtime path (application, queue, ZeroMQ, container). The Clipper paper measured about
25x more throughput from batching for linear models. Prints one JSON document (also written to
bench/results/clipper_batching.json, or clipper_batching_<N>_frontends.json).

With `--frontends N` (N > 1), N frontend processes serve one home (veloxserve/clipper/frontends.py):
frontend 0 owns the container, the others attach to it, and each runs its own `--concurrency`
clients and batches its own queries; throughput is their sum over the same window.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/x.py` as well as `-m bench.x`

from bench.clipper_load import closed_loop, run, write_report  # noqa: E402
from veloxserve.clipper import ClipperRuntime  # noqa: E402
from veloxserve.clipper.frontends import Frontend  # noqa: E402


async def measure(
    home: Path,
    path: Path,
    X: np.ndarray,
    adaptive: bool,
    args: argparse.Namespace,
    frontend: Frontend | None = None,
    barrier: Any = None,
) -> dict:
    """One frontend's figures. Several frontends meet at `barrier`: once deployed and attached,
    to start measuring together, and once measured, so the owner keeps its container up."""
    frontend = frontend or Frontend()
    runtime = ClipperRuntime(home, model_dirs=[path.parent], frontend=frontend)
    await runtime.start()
    try:
        name = f"{path.stem}-{'adaptive' if adaptive else 'single'}"
        if runtime.owner:
            await runtime.deploy(name, "sklearn", path, objective_ms=20.0, adaptive=adaptive, max_batch=4096)
            await runtime.create_app(name, [name], objective_ms=10_000)  # the app waits: we measure the model path
        while name not in runtime.apps or not runtime.deployment(name).replicas:
            await asyncio.sleep(0.05)
        if barrier is not None:
            await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
        rng = np.random.default_rng(frontend.index)
        noise = rng.normal(scale=1e-6, size=(1 << 16, X.shape[1]))

        async def call(i: int) -> dict:
            return await runtime.predict(name, "bench", X[i % len(X)] + noise[i % len(noise)])

        result = await closed_loop(call, args.concurrency, args.seconds)
        answers = result.pop("answers")
        replica = runtime.describe_model(name)["replicas"][0]
        result.update(
            defaults=sum(a["default"] for a in answers),
            final_batch_size=replica["batch_size"],
            batch_latency_ms=replica["batch_latency_ms"],
            batches=replica["batches"],
        )
        if barrier is not None:
            await asyncio.get_running_loop().run_in_executor(None, barrier.wait)
        return result
    finally:
        await runtime.close()


def _frontend_process(
    home: Path, path: Path, adaptive: bool, args: argparse.Namespace, index: int, barrier: Any, out: Any
) -> None:
    X, _ = load_digits(return_X_y=True)
    out.put((index, run(measure(home, path, X, adaptive, args, Frontend(index, args.frontends), barrier))))


def measure_frontends(home: Path, path: Path, X: np.ndarray, adaptive: bool, args: argparse.Namespace) -> dict:
    """`args.frontends` processes over one home; the owner (frontend 0) is started first."""
    if args.frontends == 1:
        return run(measure(home, path, X, adaptive, args))
    context = mp.get_context("spawn")
    barrier, out = context.Barrier(args.frontends, timeout=600), context.Queue()
    processes = []
    for index in range(args.frontends):
        process = context.Process(target=_frontend_process, args=(home, path, adaptive, args, index, barrier, out))
        process.start()
        processes.append(process)
        if index == 0:
            time.sleep(1.0)  # let it take the owner's lock
    results = dict(out.get() for _ in processes)
    for process in processes:
        process.join()
    per = [results[i] for i in range(args.frontends)]
    return {
        "throughput_qps": round(sum(r["throughput_qps"] for r in per), 1),
        "p50_ms": max(r["p50_ms"] for r in per),
        "p99_ms": max(r["p99_ms"] for r in per),
        "defaults": sum(r["defaults"] for r in per),
        "final_batch_size": [r["final_batch_size"] for r in per],
        "frontends": per,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=128, help="closed-loop clients per frontend")
    parser.add_argument("--frontends", type=int, default=1, help="frontend processes over one home (>= 1)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    if args.frontends < 1:
        parser.error("--frontends must be >= 1")
    if args.quick:
        args.seconds, args.concurrency = 0.5, 8
    X, y = load_digits(return_X_y=True)
    tmp = Path(tempfile.mkdtemp(prefix="clipper-bench-"))
    models = {
        "linear": LogisticRegression(max_iter=2000).fit(X, y),
        "random_forest": RandomForestClassifier(n_estimators=5 if args.quick else 50, random_state=0, n_jobs=1).fit(
            X, y
        ),
    }
    report: dict = {
        "objective_ms": 20.0,
        "concurrency": args.concurrency,
        "seconds": args.seconds,
        "frontends": args.frontends,
        "paper_linear_batching_speedup": 25.0,
    }
    for kind, model in models.items():
        path = tmp / f"{kind}.joblib"
        joblib.dump(model, path)
        single = measure_frontends(tmp / f"home-{kind}-1", path, X, False, args)
        adaptive = measure_frontends(tmp / f"home-{kind}-a", path, X, True, args)
        report[kind] = {
            "no_batching": single,
            "adaptive": adaptive,
            "throughput_ratio": round(adaptive["throughput_qps"] / single["throughput_qps"], 2),
        }
    shutil.rmtree(tmp, ignore_errors=True)
    name = "clipper_batching" if args.frontends == 1 else f"clipper_batching_{args.frontends}_frontends"
    write_report(name, report, keep=not args.quick)


if __name__ == "__main__":
    main()
