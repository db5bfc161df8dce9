"""HTTP servers side by side: which one `veloxserve serve --http-server` should default to.

One process's ceiling is its HTTP server's floor. Started here, all pinned to CPU 0 (wrk to CPU 1):
- hello-world floors: a raw ASGI callable on uvicorn and on granian (ASGI), both started by
  veloxserve's own api/http_server.py, and the same answer on granian's RSGI interface (what
  granian can do without ASGI's message dicts; veloxserve does not use it);
- veloxserve serving a Catify model (rank 50, 2,000 users × 1,000 songs), GET predict, on uvicorn
  and on granian (`serve --http-server`).

Every repeat measures each server in turn, the others paused (SIGSTOP), so a change in the shared
machine's load hits all alike. Per figure: requests/s, p50, p99 (medians over --repeats wrk runs)
and the server process's CPU time per request (user + system, all its threads, from
/proc/PID/stat over the wrk run, divided by the requests answered).

    .venv/bin/python bench/bench_http_servers.py           # 3 repeats × 5 s at 32 connections
    .venv/bin/python bench/bench_http_servers.py --quick   # 3 repeats × 2 s (~30 s of load)

Needs wrk (Debian: `apt-get install wrk`). Prints one JSON document; progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import LOADS, Server, run_wrk, signal_all, start, stop, train  # noqa: E402

_HELLO_ASGI = """
import sys, orjson
from urllib.parse import parse_qs
from veloxserve.api.http_server import HTTPServer, serve
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    q = parse_qs(scope["query_string"].decode())
    body = orjson.dumps({"user": q.get("user", [None])[0], "score": 1.0})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
serve(app, "127.0.0.1", int(sys.argv[1]), HTTPServer(%r))
"""

_HELLO_RSGI = """
import asyncio, signal, sys, orjson, uvloop
from urllib.parse import parse_qs
from granian.constants import HTTPModes, Interfaces
from granian.log import LogLevels
from granian.server.embed import Server
class App:
    async def __rsgi__(self, scope, proto):
        q = parse_qs(scope.query_string)
        body = orjson.dumps({"user": q.get("user", [None])[0], "score": 1.0})
        proto.response_bytes(200, [("content-type", "application/json")], body)
server = Server(App(), address="127.0.0.1", port=int(sys.argv[1]), interface=Interfaces.RSGI,
                http=HTTPModes.http1, websockets=False, backlog=2048, log_level=LogLevels.error)
async def main():
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, server.stop)
    await server.serve()
uvloop.run(main())
"""


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="3 repeats × 2 s")
    args = parser.parse_args()
    if args.quick:
        args.duration = 2
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    python, c = sys.executable, args.connections
    report: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()[0]},
        "settings": {"duration_s": args.duration, "repeats": args.repeats, "connections": c, "server_cpu": 0},
    }
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        train(home, iterations=2 if args.quick else 5)
        shutil.copytree(home, Path(tmp) / "home2")  # one process serves a home (its lock)
        scripts = {}
        for name in ("hello_get", "predict_get"):
            scripts[name] = Path(tmp) / f"{name}.lua"
            scripts[name].write_text(LOADS[name])
        serve = [python, "-m", "veloxserve.cli", "serve", "--no-auth", "--home"]
        servers = {
            "hello_asgi_uvicorn": Server([python, "-c", _HELLO_ASGI % "uvicorn"], "/hello?user=1", {}),
            "hello_asgi_granian": Server([python, "-c", _HELLO_ASGI % "granian"], "/hello?user=1", {}),
            "hello_rsgi_granian": Server([python, "-c", _HELLO_RSGI], "/hello?user=1", {}),
            "predict_uvicorn": Server([*serve, str(home), "--http-server", "uvicorn", "--port"], "/healthz", {}),
            "predict_granian": Server([*serve, f"{home}2", "--http-server", "granian", "--port"], "/healthz", {}),
        }
        runs: dict[str, list[dict[str, float]]] = {label: [] for label in servers}
        try:
            for server in servers.values():
                start(server)
            for repeat in range(args.repeats):
                for label, server in servers.items():
                    others = [s for s in servers.values() if s is not server]
                    signal_all(others, signal.SIGSTOP)
                    try:
                        assert server.proc is not None
                        before = cpu_seconds(server.proc.pid)
                        stats = run_wrk(server.url, scripts[label.split("_")[0] + "_get"], c, args.duration)
                        used = cpu_seconds(server.proc.pid) - before
                        stats["cpu_us_per_request"] = 1e6 * used / (stats["requests_per_s"] * args.duration)
                    finally:
                        signal_all(others, signal.SIGCONT)
                    runs[label].append(stats)
                    print(f"[{repeat + 1}/{args.repeats}] {label} c={c}: {stats}", file=sys.stderr)
        finally:
            for server in servers.values():
                stop(server)
    report["results"] = {
        label: {
            **{key: round(statistics.median(r[key] for r in rs), 3) for key in rs[0]},
            "requests_per_s_runs": [round(r["requests_per_s"]) for r in rs],
            "non_2xx": sum(r["non_2xx"] for r in rs),
        }
        for label, rs in runs.items()
    }

    def ratio(a: str, b: str) -> float:  # median over repeats of a's requests/s over b's
        return round(statistics.median(x["requests_per_s"] / y["requests_per_s"] for x, y in zip(runs[a], runs[b])), 3)

    report["ratios"] = {
        "predict_granian_to_uvicorn": ratio("predict_granian", "predict_uvicorn"),
        "hello_asgi_granian_to_uvicorn": ratio("hello_asgi_granian", "hello_asgi_uvicorn"),
        "hello_rsgi_to_asgi_granian": ratio("hello_rsgi_granian", "hello_asgi_granian"),
        "predict_granian_to_its_floor": ratio("predict_granian", "hello_asgi_granian"),
        "predict_uvicorn_to_its_floor": ratio("predict_uvicorn", "hello_asgi_uvicorn"),
    }
    report["machine"]["load_average_at_end"] = os.getloadavg()[0]  # type: ignore[index]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
