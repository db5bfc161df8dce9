"""Load shedding under 2x overload: latency of served requests with and without a latency objective.

    .venv/bin/python bench/bench_overload.py [--duration 10] [--objective-ms 100] [--items 50000]
    .venv/bin/python bench/bench_overload.py --quick   # 1 s runs over 2,000 items: checks the script runs

One `veloxserve serve` process (pinned to CPU 0 when taskset exists; the load generator here, CPU 1)
serves a model whose exact top-k over --items items costs a few milliseconds. The capacity is
measured with wrk (closed loop, 8 connections; `apt-get install wrk`); then an open-loop generator (Poisson arrivals, latency counted from
each request's due time: tests/loadgen.py) offers 2x that rate for --duration seconds, to a server
without an objective and to one started with `--objective-ms`. Prints one JSON document: per
run, the served rate, the share refused with 503 + Retry-After, and served latency p50/p99/max.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import synthetic_version_arrays  # noqa: E402
from tests.helpers import ServerProcess  # noqa: E402
from tests.loadgen import closed_loop_rate, open_loop, percentile, served_latencies  # noqa: E402
from veloxserve.config import HomeLayout  # noqa: E402
from veloxserve.storage.versions import VersionStore  # noqa: E402

PATH = "/models/big/top_k?user=3&k=10"


def make_home(root: Path, items: int) -> Path:
    arrays, meta = synthetic_version_arrays(n_users=50, n_items=items, rank=32, name="big")
    VersionStore(HomeLayout(root).versions_dir("big")).write(arrays, meta)
    return root


def measure_capacity(url: str, seconds: int = 3) -> float:
    """Requests/s the server answers when always busy: wrk, 8 connections (else a Python closed loop)."""
    if shutil.which("wrk"):
        out = subprocess.run(
            ["wrk", "-t1", "-c8", f"-d{seconds}s", url + PATH], capture_output=True, text=True, check=True
        ).stdout
        assert "Non-2xx" not in out, out
        return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return asyncio.run(closed_loop_rate("127.0.0.1", int(url.rsplit(":", 1)[1]), PATH, float(seconds), connections=8))


def run(home: Path, rate: float | None, duration: float, server_args: list[str]) -> dict:
    """Offer `rate` (default: twice the capacity measured here) and describe what was served."""
    server = ServerProcess(home, *server_args)
    server.wait_ready()
    if shutil.which("taskset"):  # the server on CPU 0, this generator on CPU 1
        subprocess.run(["taskset", "-cp", "0", str(server.proc.pid)], check=True, capture_output=True)
        os.sched_setaffinity(0, {1})
    try:
        capacity = measure_capacity(server.url, 1 if duration < 3 else 3) if rate is None else None
        offered = rate or 2 * capacity
        outcomes = asyncio.run(open_loop("127.0.0.1", server.port, PATH, offered, duration))
        estimates = httpx.get(f"{server.url}/models/big/metrics").json()["admission"]
    finally:
        server.stop()
    served = served_latencies(outcomes)
    refused = [o for o in outcomes if o.status == 503]
    return {
        "server_args": server_args,
        "capacity_per_s": capacity,
        "offered_per_s": round(offered, 1),
        "requests": len(outcomes),
        "served_per_s": round(len(served) / duration, 1),
        "refused_503_share": round(len(refused) / len(outcomes), 3),
        "refused_with_retry_after": sum(o.retry_after is not None for o in refused),
        "other_statuses": sorted({o.status for o in outcomes} - {200, 503}),
        "served_p50_ms": round(percentile(served, 50) * 1000, 2),
        "served_p99_ms": round(percentile(served, 99) * 1000, 2),
        "served_max_ms": round(served[-1] * 1000, 2) if served else None,
        "served_mean_ms": round(statistics.fmean(served) * 1000, 2) if served else None,
        "server_admission": estimates,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--objective-ms", type=float, default=100.0)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.items = 1.0, 2000
    with tempfile.TemporaryDirectory() as tmp:
        home = make_home(Path(tmp), args.items)
        unshed = run(home, None, args.duration, [])
        shed = run(home, unshed["offered_per_s"], args.duration, ["--objective-ms", f"big={args.objective_ms}"])
        report = {
            "route": PATH,
            "items": args.items,
            "duration_s": args.duration,
            "objective_ms": args.objective_ms,
            "without_objective": unshed,
            "with_objective": shed,
            "served_p99_ratio_without_to_with": round(unshed["served_p99_ms"] / shed["served_p99_ms"], 1),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
