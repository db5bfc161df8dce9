"""`veloxserve serve` over one Redis vs over a Redis Cluster (three masters, one replica each),
without and with `replica_wait=1`: predictions and observations per second, median and p99.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_redis_cluster.py [--seconds 5] [--workers 4]
    PYTHONPATH=$PWD .venv/bin/python bench/bench_redis_cluster.py --quick   # 1 s per phase: checks it runs

Starts its own redis-servers (tests/helpers.RedisServer, RedisClusterServers: append-only,
fsync every second on the cluster, always on the single Redis as the tests' one) and, per
setup, one server over a synthetic model (tests/conftest.synthetic_version_arrays). Each
phase, `--workers` threads send only predictions, then only observations, to 50 users, for
`--seconds`. Prints one JSON document: per setup and route, requests per second, statuses,
median and p99 latency in ms. Every process is stopped in `finally`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import synthetic_version_arrays  # noqa: E402
from tests.helpers import RedisClusterServers, RedisServer, ServerProcess  # noqa: E402
from veloxserve.config import HomeLayout  # noqa: E402
from veloxserve.storage.versions import VersionStore  # noqa: E402


def _phase(url: str, route: str, seconds: float, workers: int) -> dict:
    samples: list[tuple[int, float]] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def worker(w: int) -> None:
        mine: list[tuple[int, float]] = []
        with httpx.Client(base_url=url, timeout=10) as http:
            n = w
            while time.monotonic() < end:
                user, item = str(n % 50), 100 + n % 50
                started = time.perf_counter()
                if route == "predict":
                    r = http.get("/models/songs/predict", params={"user": user, "item": item})
                else:
                    r = http.post("/models/songs/observe", json={"user": user, "item": item, "score": 3.0})
                mine.append((r.status_code, time.perf_counter() - started))
                n += workers
        with lock:
            samples.extend(mine)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ms = sorted(s * 1000 for _, s in samples)
    return {
        "rps": round(len(ms) / seconds, 1),
        "statuses": dict(Counter(str(code) for code, _ in samples)),
        "median_ms": round(statistics.median(ms), 2),
        "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 2),
    }


def _measure(home: Path, store: str, seconds: float, workers: int) -> dict:
    server = ServerProcess(home, "--store", store, "--instance", "a")
    try:
        server.wait_ready()
        _phase(server.url, "observe", min(1.0, seconds), workers)  # warm-up: compiled kernels, connections
        return {route: _phase(server.url, route, seconds, workers) for route in ("predict", "observe")}
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="1 s per phase: checks that it runs")
    args = parser.parse_args()
    seconds = 1.0 if args.quick else args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        arrays, meta = synthetic_version_arrays(name="songs")
        single, cluster = RedisServer(Path(tmp) / "redis"), RedisClusterServers(Path(tmp) / "cluster")
        try:
            single.start(), cluster.start()
            out = {"seconds": seconds, "workers": args.workers}
            setups = {
                "single": single.url + "?prefix=bench",
                "cluster": cluster.url + "&prefix=bench",
                "cluster_replica_wait_1": cluster.url + "&prefix=benchwait&replica_wait=1",
            }
            for name, store in setups.items():
                home = Path(tmp) / f"home-{name}"
                VersionStore(HomeLayout(home).versions_dir("songs")).write(arrays, meta)
                out[name] = _measure(home, store, seconds, args.workers)
        finally:
            single.stop(), cluster.stop()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
