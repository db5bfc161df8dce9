"""SQLite vs LMDB as the embedded user store: checkpoint, point read, scan.

    .venv/bin/python bench/store_choice.py [--users 10000] [--rank 50]
    .venv/bin/python bench/store_choice.py --quick   # 200 users: checks the script runs

A checkpoint writes every changed user's state (P, r, w at rank 50: ~22 KB) in one transaction.
Prints JSON medians over --repeats runs. docs/storage.md records the result and the choice.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from veloxserve.storage.lmdb_store import LMDBUserStore
from veloxserve.storage.sqlite_store import SQLiteUserStore
from veloxserve.storage.user_store import Checkpoint


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rank", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.users, args.rank, args.repeats = 200, 8, 1
    k = args.rank + 2
    rng = np.random.default_rng(0)
    blob = rng.normal(size=k * k + 2 * k).tobytes()
    states = {str(u): blob for u in range(args.users)}
    keys = rng.integers(0, args.users, size=2000).astype(str)
    results: dict[str, dict[str, float]] = {"sqlite": {}, "lmdb": {}}
    samples: dict[str, dict[str, list[float]]] = {
        name: {"checkpoint_s": [], "read_us": [], "scan_s": []} for name in results
    }
    stores = {"sqlite": lambda tmp: SQLiteUserStore(tmp / "s.sqlite"), "lmdb": lambda tmp: LMDBUserStore(tmp / "lmdb")}
    for _ in range(args.repeats):
        for name, open_store in stores.items():
            with tempfile.TemporaryDirectory() as tmp:
                store, s = open_store(Path(tmp)), samples[name]
                s["checkpoint_s"].append(timed(lambda: store.write_checkpoint("m", states, Checkpoint("v1", 1))))
                s["read_us"].append(timed(lambda: [store.get("m", key) for key in keys]) / len(keys) * 1e6)
                s["scan_s"].append(timed(lambda: sum(1 for _ in store.scan("m"))))
                store.close()
    for name, figures in samples.items():
        results[name] = {key: round(statistics.median(values), 4) for key, values in figures.items()}
    results["workload"] = {"users": args.users, "state_bytes": len(blob)}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
