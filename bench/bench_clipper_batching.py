"""Throughput and p99 of scikit-learn models in containers: batches of one vs adaptive batching.

    .venv/bin/python -m bench.bench_clipper_batching [--seconds 5] [--concurrency 128] [--quick]

A linear model (logistic regression) and a random forest trained on scikit-learn's bundled digits
data, each deployed in one container with a 20 ms batch latency objective; closed-loop clients in
this process send distinct inputs (digits rows plus tiny noise, so the cache never answers) through
the whole runtime path (application, queue, ZeroMQ, container). The Clipper paper measured about
25x more throughput from batching for linear models. Prints one JSON document (also written to
bench/results/clipper_batching.json).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/x.py` as well as `-m bench.x`

from bench.clipper_load import closed_loop, run, write_report  # noqa: E402
from veloxserve.clipper import ClipperRuntime  # noqa: E402


async def measure(home: Path, path: Path, X: np.ndarray, adaptive: bool, args: argparse.Namespace) -> dict:
    runtime = ClipperRuntime(home, model_dirs=[path.parent])
    await runtime.start()
    try:
        name = f"{path.stem}-{'adaptive' if adaptive else 'single'}"
        await runtime.deploy(name, "sklearn", path, objective_ms=20.0, adaptive=adaptive, max_batch=4096)
        await runtime.create_app(name, [name], objective_ms=10_000)  # the app waits: we measure the model path
        rng = np.random.default_rng(0)
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
        return result
    finally:
        await runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
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
        "paper_linear_batching_speedup": 25.0,
    }
    for kind, model in models.items():
        path = tmp / f"{kind}.joblib"
        joblib.dump(model, path)
        single = run(measure(tmp / f"home-{kind}-1", path, X, False, args))
        adaptive = run(measure(tmp / f"home-{kind}-a", path, X, True, args))
        report[kind] = {
            "no_batching": single,
            "adaptive": adaptive,
            "throughput_ratio": round(adaptive["throughput_qps"] / single["throughput_qps"], 2),
        }
    shutil.rmtree(tmp, ignore_errors=True)
    write_report("clipper_batching", report, keep=not args.quick)


if __name__ == "__main__":
    main()
