"""Core benchmark: ALS training time and RMSE, in-process predict / observe / top-k latency.

    .venv/bin/python bench/bench_core.py [--data ../shared/data/ml-100k] [--ranks 10 50 100]
    .venv/bin/python bench/bench_core.py --quick   # a small Catify only: checks the script runs

Prints one JSON document. Latencies are per call, median and p99 over many calls, measured with
perf_counter_ns around each call (this machine is shared and noisy: trust medians). Also times
the three ways to update a user's ridge solution, which is how the online learner was chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.linalg

from veloxserve.config import HomeLayout, ServingConfig
from veloxserve.learning.kernels import rls_update
from veloxserve.serving.velox import Velox
from veloxserve.storage.pointer import write_pointer
from veloxserve.training.catify import generate_catify
from veloxserve.training.ratings import write_ratings_csv
from veloxserve.training.trainer import config_from, train_version

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ml-100k"


def latency(fn: Callable[[int], Any], n: int, warmup: int = 200) -> dict[str, float]:
    for i in range(min(warmup, n)):
        fn(i)
    samples = np.empty(n)
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        fn(i)
        samples[i] = clock() - t0
    return {
        "median_us": round(float(np.median(samples)) / 1e3, 2),
        "p99_us": round(float(np.percentile(samples, 99)) / 1e3, 2),
        "calls": n,
    }


def update_methods(rank: int, n: int = 20_000) -> dict[str, Any]:
    """Sherman–Morrison compiled vs in numpy vs a Cholesky re-solve, one observation each."""
    k = rank + 2
    rng = np.random.default_rng(0)
    F = rng.normal(size=(1000, k))
    P, r, W = np.eye(k)[None].copy(), np.zeros((1, k)), np.zeros((1, k))
    A, b = np.eye(k), np.zeros(k)

    def numpy_sm(i: int) -> None:
        f = F[i % 1000]
        pf = P[0] @ f
        P[0] -= np.outer(pf, pf) / (1.0 + f @ pf)
        r[0] += f
        W[0] = P[0] @ r[0]

    def cholesky(i: int) -> None:
        f = F[i % 1000]
        A[:] += np.outer(f, f)
        b[:] += f
        W[0] = scipy.linalg.cho_solve(scipy.linalg.cho_factor(A), b)

    return {
        "sherman_morrison_numba": latency(lambda i: rls_update(P, r, W, 0, F, i % 1000, 1.0), n),
        "sherman_morrison_numpy": latency(numpy_sm, n),
        "cholesky_resolve_scipy": latency(cholesky, n // 4),
    }


def serving_latency(home: Path, model: str, n_items: int, n: int) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    with Velox(home, config=ServingConfig(checkpoint_every=10**9, checkpoint_seconds=1e9)) as velox:
        server = velox.server(model)
        users = [str(u) for u in server.version.users.ids[:200]]
        items = server.version.catalog.externals(rng.integers(0, n_items, size=1000))
        table, F = server.users, server.version.features.matrix
        rows = [table.rows[u] for u in users]
        item_rows = rng.integers(0, n_items, size=1000)
        out = {
            "predict": latency(lambda i: server.predict(users[i % 200], items[i % 1000]), n),
            "predict_batch_100_per_query": _per(
                latency(lambda i: server.predict_many([(users[(i + j) % 200], items[j]) for j in range(100)]), n // 50),
                100,
            ),
            "observe_state_update": latency(
                lambda i: table.observe(rows[i % 200], F, int(item_rows[i % 1000]), 3.0), n
            ),
            "observe_logged_not_waiting": latency(
                lambda i: server.observe_many([(users[i % 200], items[i % 1000], 3.0)]), n
            ),
            "observe_durable": latency(lambda i: velox.observe(model, users[i % 200], items[i % 1000], 3.0), n // 20),
            "top_k_100_exact": latency(lambda i: server.top_k(users[i % 200], 100), n // 10),
            "top_k_100_exclude_seen": latency(lambda i: server.top_k(users[i % 200], 100, exclude_seen=True), n // 10),
        }
    return out


def _per(figures: dict[str, float], size: int) -> dict[str, float]:
    return {**{k: round(v / size, 3) for k, v in figures.items() if k.endswith("_us")}, "batch": size}


def run_dataset(
    label: str, ratings_path: Path, test_path: Path | None, ranks: list[int], n: int, base: dict[str, Any]
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for rank in ranks:
        with tempfile.TemporaryDirectory() as tmp:
            layout = HomeLayout(Path(tmp))
            config = config_from({**base, "rank": rank})
            meta = train_version(layout, label, ratings_path, config, heldout=test_path)
            write_pointer(layout.active_file(label), meta["version"])
            results[f"rank_{rank}"] = {
                "train_seconds": meta["train_seconds"],
                "train_rmse": meta["train_rmse"],
                "heldout_rmse": meta["heldout_rmse"],
                "heldout": "u1.test" if test_path else f"random {meta['heldout_fraction']:.0%}",
                "iterations": meta["iterations"],
                "latency": serving_latency(layout.root, label, meta["n_items"], n),
            }
            print(f"{label} rank {rank}: done", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens 100K directory")
    parser.add_argument("--ranks", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--calls", type=int, default=20_000, help="calls per latency figure")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.ranks, args.calls = [4], 250
    report: dict[str, Any] = {
        "update_methods": {f"rank_{r}": update_methods(r, 500 if args.quick else 20_000) for r in args.ranks}
    }
    if args.quick:
        report["ml-100k"] = "skipped: --quick"
    elif (args.data / "u1.base").exists():
        report["ml-100k"] = run_dataset(
            "ml100k", args.data / "u1.base", args.data / "u1.test", args.ranks, args.calls, {}
        )
    else:
        report["ml-100k"] = f"skipped: {args.data}/u1.base not found (pass --data)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "catify.csv"
        shape = {"n_users": 200, "n_items": 300, "n_ratings": 5000} if args.quick else {"n_items": 2000}
        write_ratings_csv(generate_catify(**shape, seed=0).ratings, path)  # the demo's shape
        catify = {"reg": 1.0, "prior_precision": 1.0, "iterations": 2 if args.quick else 10}  # as `demo` trains it
        report["catify"] = run_dataset("catify", path, None, args.ranks, args.calls, catify)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
