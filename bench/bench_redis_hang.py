"""A hung Redis (SIGSTOP) vs one `veloxserve serve --store redis://...`: how long Redis-bound
requests take to fail, and how long routes that need no Redis take meanwhile.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_redis_hang.py [--seconds 20] [--workers 4]
    PYTHONPATH=$PWD .venv/bin/python bench/bench_redis_hang.py --quick   # 1 s stopped: checks it runs

Starts its own redis-server (tests/helpers.RedisServer) and a server over a synthetic model
(tests/conftest.synthetic_version_arrays), warms it up, then stops Redis with SIGSTOP for
`--seconds`: `--workers` threads send predictions and observations in a loop (each one's
status and latency recorded) while one thread polls /healthz and GET /models (before that,
with Redis up, 5 s of wrk on one prediction URL: the cost of the thread pool). Then SIGCONT and
the time until a prediction succeeds again; then FLUSHALL, and the time until the server has
noticed and rebuilt users from its log (predictions meanwhile: 200 are the trained statistics
before the loss is noticed, 503 after). Prints one JSON document: per route, the count,
the statuses, median and p99 latency in ms. Redis is always continued and stopped in `finally`.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import synthetic_version_arrays  # noqa: E402
from tests.helpers import RedisServer, ServerProcess  # noqa: E402
from veloxserve.config import HomeLayout  # noqa: E402
from veloxserve.storage.versions import VersionStore  # noqa: E402


def _figures(samples: list[tuple[int, float]]) -> dict:
    ms = sorted(s * 1000 for _, s in samples)
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "statuses": dict(Counter(str(code) for code, _ in samples)),
        "median_ms": round(statistics.median(ms), 1),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
        "max_ms": round(ms[-1], 1),
    }


def _timed(client: httpx.Client, method: str, path: str, **kwargs) -> tuple[int | str, float]:
    started = time.perf_counter()
    try:
        r = client.request(method, path, **kwargs)
        code = f"{r.status_code} {r.json()['status']}" if path == "/healthz" else r.status_code
    except httpx.HTTPError:
        code = 0  # a client timeout: the request hung
    return code, time.perf_counter() - started


def _rebuilds(client: httpx.Client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('veloxserve_redis_state_rebuilds_total{model="songs"}'):
            return float(line.split()[-1])
    return 0.0


def _wrk(url: str, seconds: int = 5) -> dict:
    """Predictions/s and latency with Redis up: what keeping Redis calls off the loop costs."""
    out = subprocess.run(
        ["wrk", "-t2", "-c32", f"-d{seconds}s", "--latency", url], capture_output=True, text=True
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"99%\s+(\S+)", out)
    return {"requests_per_s": float(rate.group(1)) if rate else None, "p99": p99.group(1) if p99 else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=20.0, help="how long Redis stays stopped")
    parser.add_argument("--workers", type=int, default=4, help="threads sending Redis-bound requests")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.workers = 1.0, 2
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        arrays, meta = synthetic_version_arrays(name="songs")
        VersionStore(HomeLayout(home).versions_dir("songs")).write(arrays, meta)
        redis_server = RedisServer(Path(tmp) / "redis").start()
        server = None
        try:
            server = ServerProcess(home, "--store", redis_server.url + "?prefix=hang", "--instance", "a")
            server.wait_ready()
            with httpx.Client(base_url=server.url, timeout=30) as http:
                for n in range(50):  # warm up: connections, scripts, the users' state
                    http.post("/models/songs/observe", json={"user": str(n % 7), "item": 100 + n % 50, "score": 3.0})
                    http.get("/models/songs/predict", params={"user": str(n % 7), "item": 100 + n % 50})
            healthy = (
                _wrk(f"{server.url}/models/songs/predict?user=1&item=101", 1 if args.quick else 5)
                if shutil.which("wrk")
                else None
            )
            results: dict[str, list[tuple[int, float]]] = {"predict": [], "observe": [], "healthz": [], "models": []}
            lock = threading.Lock()
            stop = threading.Event()

            def bound(worker: int) -> None:
                with httpx.Client(base_url=server.url, timeout=30) as http:
                    n = 0
                    while not stop.is_set():
                        n += 1
                        if (worker + n) % 2:
                            route, sample = (
                                "predict",
                                _timed(
                                    http,
                                    "GET",
                                    "/models/songs/predict",
                                    params={"user": str(n % 7), "item": 100 + n % 50},
                                ),
                            )
                        else:
                            route, sample = (
                                "observe",
                                _timed(
                                    http,
                                    "POST",
                                    "/models/songs/observe",
                                    json={"user": str(n % 7), "item": 100 + n % 50, "score": 1.0},
                                ),
                            )
                        with lock:
                            results[route].append(sample)

            def unrelated() -> None:
                with httpx.Client(base_url=server.url, timeout=30) as http:
                    while not stop.is_set():
                        for route, path in (("healthz", "/healthz"), ("models", "/models")):
                            sample = _timed(http, "GET", path)
                            with lock:
                                results[route].append(sample)
                        time.sleep(0.05)

            redis_server.proc.send_signal(signal.SIGSTOP)
            threads = [threading.Thread(target=bound, args=(w,)) for w in range(args.workers)]
            threads.append(threading.Thread(target=unrelated))
            for t in threads:
                t.start()
            time.sleep(args.seconds)
            stop.set()
            for t in threads:
                t.join()
            redis_server.proc.send_signal(signal.SIGCONT)
            continued = time.perf_counter()
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while http.get("/models/songs/predict", params={"user": "1", "item": 101}).status_code != 200:
                    time.sleep(0.01)
            recovered = time.perf_counter() - continued
            # FLUSHALL: how long until the server has noticed and rebuilt, and what predictions said meanwhile.
            flushed: list[tuple[int | str, float]] = []
            with httpx.Client(base_url=server.url, timeout=30) as http:
                import redis

                client = redis.Redis.from_url(redis_server.url)
                client.flushall()
                client.close()
                lost = time.perf_counter()
                while _rebuilds(http) < 1 and time.perf_counter() - lost < 30:  # never, before the rebuild existed
                    flushed.append(_timed(http, "GET", "/models/songs/predict", params={"user": "1", "item": 101}))
                rebuilt = time.perf_counter() - lost if _rebuilds(http) >= 1 else None
            print(
                json.dumps(
                    {
                        "healthy_predict_wrk_32_connections": healthy,
                        "redis_stopped_s": args.seconds,
                        "workers": args.workers,
                        "while_redis_is_stopped": {route: _figures(samples) for route, samples in results.items()},
                        "recovery_after_sigcont_ms": round(recovered * 1000, 1),
                        "flushall": {
                            "rebuilt_after_ms": None if rebuilt is None else round(rebuilt * 1000, 1),
                            "predict_meanwhile": _figures(flushed),
                        },
                    },
                    indent=2,
                )
            )
        finally:
            if redis_server.proc is not None:
                redis_server.proc.send_signal(signal.SIGCONT)
            if server is not None:
                server.stop()
            redis_server.stop()


if __name__ == "__main__":
    main()
