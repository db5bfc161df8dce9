"""Embedded workers: predict, top-k and observe requests/s of `serve --workers 1` vs `--workers 2`.

Catify, rank 50, 2,000 users x 1,000 songs, as bench/bench_http.py (its wrk requests: a random
trained user and song). 32 wrk connections, one wrk thread pinned to the last core; the workers
are not pinned, so on a 2-core machine they share cores with wrk and with whatever else runs here:
read the ratio of the two configurations, measured back to back in each repeat, not the absolute
figures.

Each answer names the worker that took it and whether worker 0 computed it
(`x-veloxserve-forwarded`); wrk's script counts them, and /proc gives each worker's CPU time, so
each configuration reports, per worker, the requests it answered itself, those it forwarded, the
cores it used and its CPU-µs per request. A core's worth of requests (`requests_per_core`, predict and top-k)
is what N cores serve N times over when the readers' cost holds: the figure that carries to a
machine with more cores than this one. The configuration bench_scaleout.py calls
`embedded_workers` is `serve_command(home, port, workers)`:

    python -m veloxserve.cli serve --home HOME --port PORT --no-auth --workers N

    .venv/bin/python bench/bench_workers.py            # 3 repeats x 5 s per route and configuration
    .venv/bin/python bench/bench_workers.py --quick    # 1 repeat x 2 s

Prints one JSON document (per route and configuration, the median repeat by requests/s); progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_http import LOADS, free_port, run_wrk, train, wait_ready

ROUTES = {"predict": "predict_get", "top_k": "top_k_get", "observe": "observe"}
CONNECTIONS = 32
# Appended to a load's script: count answers by worker and by who computed them, printed by done().
COUNTING = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) answered = {} end
function response(status, headers, body)
  local key = (headers["x-veloxserve-worker"] or "?") .. "/" .. (headers["x-veloxserve-forwarded"] and "forwarded" or "local")
  answered[key] = (answered[key] or 0) + 1
end
function done(summary, latency, requests)
  for _, t in ipairs(threads) do
    for key, n in pairs(t:get("answered")) do io.write("answered ", key, " ", n, "\\n") end
  end
end
"""


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _workers(proc: subprocess.Popen[bytes]) -> dict[str, int]:
    """Worker index -> pid: the supervisor's children, or `serve` itself for --workers 1."""
    found = {}
    for pid in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split():
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"--worker-index" in argv:
            found[argv[argv.index(b"--worker-index") + 1].decode()] = int(pid)
    return found or {"0": proc.pid}  # --workers 1 is `serve` itself, and its answers name no worker


def measure(proc: subprocess.Popen[bytes], url: str, script: Path, duration: int) -> dict[str, object]:
    """One wrk run, with each worker's share of the answers and of the CPU."""
    pids = _workers(proc)
    before = {w: _cpu_seconds(p) for w, p in pids.items()}
    stats, output = run_wrk(url, script, CONNECTIONS, duration, output=True)
    used = {w: _cpu_seconds(p) - before[w] for w, p in pids.items()}
    answered: dict[str, dict[str, int]] = {w: {"local": 0, "forwarded": 0} for w in pids}
    for line in output.splitlines():
        if line.startswith("answered "):
            _, key, n = line.split()
            worker, how = key.split("/")
            worker = "0" if worker == "?" else worker
            answered.setdefault(worker, {"local": 0, "forwarded": 0})[how] += int(n)
    per_worker = {}
    for worker, counts in sorted(answered.items()):
        n = counts["local"] + counts["forwarded"]
        per_worker[worker] = {
            **counts,
            "cores": round(used.get(worker, 0.0) / duration, 3),
            "cpu_us_per_request": round(used.get(worker, 0.0) / n * 1e6, 1) if n else None,
        }
    total = sum(c["local"] + c["forwarded"] for c in answered.values())
    stats = {**stats, "cpu_us_per_request": round(sum(used.values()) / total * 1e6, 1) if total else None}
    return {**stats, "workers": per_worker}


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
            scripts[route].write_text(LOADS[load] + COUNTING)
        for repeat in range(args.repeats):
            for workers in (1, 2):
                proc, url = start_workers(home, workers)
                try:
                    for route, script in scripts.items():
                        print(f"repeat {repeat}: --workers {workers} {route}", file=sys.stderr, flush=True)
                        stats = measure(proc, url, script, args.duration)
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
        report[config] = {route: _median_run(stats) for route, stats in routes.items()}
    for route in ROUTES:
        one = report["workers_1"][route]["requests_per_s"]  # type: ignore[index]
        two = report["workers_2"][route]["requests_per_s"]  # type: ignore[index]
        report[f"{route}_speedup_2_over_1"] = round(two / one, 3) if one else None
    per_core: dict[str, dict[str, int | None]] = {}
    for route in ("predict", "top_k"):
        reader = report["workers_2"][route]["workers"].get("1", {})  # type: ignore[index]
        alone = report["workers_1"][route]["cpu_us_per_request"]  # type: ignore[index]
        per_core[route] = {
            "workers_1": round(1e6 / alone) if alone else None,
            "reader_of_workers_2": round(1e6 / reader["cpu_us_per_request"])
            if reader.get("cpu_us_per_request")
            else None,
        }
    report["requests_per_core"] = per_core
    print(json.dumps(report, indent=2))


def _median_run(runs: list[dict]) -> dict:
    """The median repeat by requests/s (its figures belong together: the split, the CPU)."""
    return sorted(runs, key=lambda r: r["requests_per_s"])[len(runs) // 2]


if __name__ == "__main__":
    main()
