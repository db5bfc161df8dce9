"""Predictions/s, p50 and p99 of one server: embedded (LMDB) vs over Redis with the client-side
cache on vs off (storage/redis_cache.py), in one run, under the same load.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_redis_cache.py [--seconds 10] [--observe-per-s 20]
    PYTHONPATH=$PWD .venv/bin/python bench/bench_redis_cache.py --quick   # 1 s each: checks it runs

Starts its own redis-server (tests/helpers.RedisServer) and, one after the other, a server per
setting (started together, measured one after the other) over a synthetic model (tests/conftest.synthetic_version_arrays, 30 trained users, 50
items). Each is warmed up, then wrk (2 threads, 32 connections) sends predictions rotating over
40 users (30 trained, 10 new) and every item while one thread posts `--observe-per-s`
observations to those users (so the cache is invalidated as it would be in service). Prints one
JSON document: per setting wrk's requests/s, p50 and p99, and for the cache its hit/miss counts.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import synthetic_version_arrays  # noqa: E402
from tests.helpers import RedisServer, ServerProcess  # noqa: E402
from veloxserve.config import HomeLayout  # noqa: E402
from veloxserve.storage.versions import VersionStore  # noqa: E402

_USERS = [str(n) for n in range(30)] + [f"new-{n}" for n in range(10)]
_WRK_SCRIPT = """
local users = {{{}}}
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/models/songs/predict?user=" .. users[n % #users + 1] .. "&item=" .. (100 + n % 50))
end
""".format(", ".join(f'"{u}"' for u in _USERS))


def _wrk(url: str, seconds: float, script: Path) -> dict:
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{max(1, round(seconds))}s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p50 = re.search(r"50%\s+(\S+)", out)
    p99 = re.search(r"99%\s+(\S+)", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    return {
        "requests_per_s": float(rate.group(1)) if rate else None,
        "p50": p50.group(1) if p50 else None,
        "p99": p99.group(1) if p99 else None,
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def _cache_reads(http: httpx.Client) -> dict:
    found = {}
    for line in http.get("/metrics").text.splitlines():
        match = re.match(r'veloxserve_redis_cache_reads_total\{outcome="(\w+)"\} (\S+)', line)
        if match:
            found[match.group(1)] = int(float(match.group(2)))
    return found


def _measure(server: ServerProcess, seconds: float, observe_per_s: float, script: Path) -> dict:
    stop = threading.Event()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for n, user in enumerate(_USERS):  # warm up: connections, scripts, every user's state
                if n % 8 == 0:  # a few observations (each waits for an fsync of the log and of Redis)
                    http.post("/models/songs/observe", json={"user": user, "item": 100 + n % 50, "score": 3.0})
                http.get("/models/songs/predict", params={"user": user, "item": 100 + n % 50})
            before = _cache_reads(http)

        def observe() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as client:
                n = 0
                while not stop.wait(1.0 / observe_per_s):
                    n += 1
                    client.post(
                        "/models/songs/observe",
                        json={"user": _USERS[n % len(_USERS)], "item": 100 + (7 * n) % 50, "score": 1.0 + n % 5},
                    )

        observer = threading.Thread(target=observe)
        observer.start()
        figures = _wrk(server.url, seconds, script)
        stop.set()
        observer.join()
        with httpx.Client(base_url=server.url, timeout=30) as http:
            after = _cache_reads(http)
        if after:
            figures["cache_reads"] = {k: after[k] - before.get(k, 0) for k in after}
        return figures
    finally:
        stop.set()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0, help="wrk's duration per setting")
    parser.add_argument("--observe-per-s", type=float, default=20.0, help="observations posted meanwhile")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: figures mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds = 1.0
    with tempfile.TemporaryDirectory() as tmp:
        arrays, meta = synthetic_version_arrays(name="songs")
        script = Path(tmp) / "predict.lua"
        script.write_text(_WRK_SCRIPT)
        redis_server = RedisServer(Path(tmp) / "redis").start()
        results: dict[str, dict] = {}
        servers: dict[str, ServerProcess] = {}
        try:
            settings = {
                "embedded": [],
                "redis_cache_on": ["--store", redis_server.url + "?prefix=on", "--instance", "a"],
                "redis_cache_off": ["--store", redis_server.url + "?prefix=off&cache=off", "--instance", "a"],
            }
            for name, server_args in settings.items():  # started together (starting is most of a --quick run)
                home = Path(tmp) / name
                VersionStore(HomeLayout(home).versions_dir("songs")).write(arrays, meta)
                servers[name] = ServerProcess(home, *server_args)
            for name, server in servers.items():  # measured one at a time; the others idle
                server.wait_ready()
                results[name] = _measure(server, args.seconds, args.observe_per_s, script)
        finally:
            for server in servers.values():
                server.stop()
            redis_server.stop()
        print(
            json.dumps(
                {
                    "seconds": args.seconds,
                    "observe_per_s": args.observe_per_s,
                    "wrk": "2 threads, 32 connections",
                    **results,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
