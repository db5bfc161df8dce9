"""Embedded workers: predict and observe requests/s of `serve --workers 1` vs `--workers 2`.

Catify, rank 50, 2,000 users x 1,000 songs, as bench/bench_http.py (its wrk requests: a random
trained user and song). 32 wrk connections, one wrk. Nothing is pinned: the workers are meant to
use every core, so they share this machine's cores with wrk and with whatever else runs here;
read the ratio of the two configurations, measured back to back in each repeat, not the absolute
figures. The configuration bench_scaleout.py calls `embedded_workers` is `serve_command(home,
port, workers)`:

    python -m veloxserve.cli serve --home HOME --port PORT --no-auth --workers N

    .venv/bin/python bench/bench_workers.py            # 3 repeats x 5 s per route and configuration
    .venv/bin/python bench/bench_workers.py --quick    # 1 repeat x 2 s

Prints one JSON document (medians over the repeats); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_http import LOADS, free_port, run_wrk, train, wait_ready

ROUTES = {"predict": "predict_get", "observe": "observe"}
CONNECTIONS = 32


def serve_command(home: Path, port: int, workers: int) -> list[str]:
    """The `embedded_workers` configuration: one home, `workers` processes on one port."""
    return [
        sys.executable,
        "-m",
        "veloxserve.cli",
        "serve",
        "--home",
        str(home),
        "--port",
        str(port),
        "--no-auth",
        "--workers",
        str(workers),
    ]


def start_workers(home: Path, workers: int) -> tuple[subprocess.Popen[bytes], str]:
    """`serve --workers N` started and ready (every worker answering); its process and URL."""
    port = free_port()
    proc = subprocess.Popen(
        serve_command(home, port, workers),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", proc)
    return proc, url


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)  # the supervisor stops its workers; the group catches stragglers
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="1 repeat x 2 s")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.repeats = 2, 1
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        home = Path(tmp) / "home"
        train(home, iterations=2 if args.quick else 5)
        scripts = {}
        for route, load in ROUTES.items():
            scripts[route] = Path(tmp) / f"{route}.lua"
            scripts[route].write_text(LOADS[load])
        for repeat in range(args.repeats):
            for workers in (1, 2):
                proc, url = start_workers(home, workers)
                try:
                    for route, script in scripts.items():
                        print(f"repeat {repeat}: --workers {workers} {route}", file=sys.stderr, flush=True)
                        stats = run_wrk(url, script, CONNECTIONS, args.duration)
                        runs.setdefault(f"workers_{workers}", {}).setdefault(route, []).append(stats)
                finally:
                    stop(proc)
    report: dict[str, object] = {
        "connections": CONNECTIONS,
        "duration_s": args.duration,
        "repeats": args.repeats,
        "cpus": os.cpu_count(),
    }
    for config, routes in runs.items():
        report[config] = {
            route: {key: statistics.median(r[key] for r in stats) for key in stats[0]}
            for route, stats in routes.items()
        }
    for route in ROUTES:
        one = report["workers_1"][route]["requests_per_s"]  # type: ignore[index]
        two = report["workers_2"][route]["requests_per_s"]  # type: ignore[index]
        report[f"{route}_speedup_2_over_1"] = round(two / one, 3) if one else None
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
