"""Scale-out benchmark: N server processes over Redis vs one embedded process, and the cost of durability.

    .venv/bin/python bench/bench_scaleout.py [--duration 5] [--processes 1 2 4]
    .venv/bin/python bench/bench_scaleout.py --quick   # 2 s runs, 2 processes: checks the script runs

Catify, rank 50, 2,000 users x 1,000 songs (as bench/bench_http.py). 32 wrk connections in total,
split evenly over the servers (one wrk per server). Configurations:

- embedded: one `veloxserve serve` with LMDB (state in process memory): the single-node figure.
- redis-N: N `serve --store redis://... --instance iK` processes over one Redis (started here,
  no persistence), any user on any process, updates by compare-and-set (the design chosen).
- owner-N: N embedded processes, each owning the users u with u mod N = K, the load generator
  routing each request to the owner: an upper bound for routing users to owner processes (no
  forwarding hop, no failover), the alternative the issue names.
- observe without fsync (embedded): what the durable group commit costs over HTTP.

It also times one update per observation at k = 10 and k = 52 (in Redis's CPU: the whole
Sherman–Morrison update as a Lua script vs compare-and-set of a state computed in the server),
and the log's
durability modes in-process with 32 concurrent writers: group commit, one fsync per request
(appends serialised), no fsync. Every server and Redis share this machine's cores with wrk, so
figures are noisy; each is one run of --duration seconds. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_http import LOADS, wait_ready  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import RedisServer, free_port  # noqa: E402

CONNECTIONS = 32
LUA = {"predict": LOADS["predict_get"], "observe": LOADS["observe"]}  # bench_http's requests: a random trained user
NO_FSYNC_SERVER = """
import sys, uvicorn
from veloxserve.api import create_app
from veloxserve.config import ServingConfig
from veloxserve.serving.velox import Velox
velox = Velox(sys.argv[1], config=ServingConfig(fsync=False))
uvicorn.run(create_app(velox), host="127.0.0.1", port=int(sys.argv[2]), access_log=False, log_level="warning",
            http="httptools", loop="uvloop", lifespan="off")
"""


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def run_wrk(url: str, script: Path, connections: int, duration: int) -> dict[str, float]:
    """bench_http's wrk run, with a 10 s request timeout and latencies of seconds parsed too."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct, value, unit in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        result[f"p{pct}_ms"] = float(value) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(errors.group(1)) if errors else 0
    if "p99_ms" not in result:
        raise RuntimeError(f"no latency distribution in wrk's output:\n{out}")
    return result


def owner_lua(route: str, part: int, n: int) -> str:
    """bench_http's request for `route`, restricted to the users one owner serves."""
    user = f"(math.random(0, {2000 // n - 1}) * {n} + {part})"
    return LUA[route].replace("math.random(0, 1999)", user)


def train(home: Path, iterations: int = 5) -> None:
    from veloxserve.config import HomeLayout
    from veloxserve.storage.pointer import write_pointer
    from veloxserve.training.als import ALSConfig
    from veloxserve.training.catify import generate_catify
    from veloxserve.training.trainer import train_version

    layout = HomeLayout(home)
    meta = train_version(
        layout,
        "catify",
        generate_catify(2000, 1000, n_ratings=100_000).ratings,
        ALSConfig(rank=50, reg=1.0, prior_precision=1.0, iterations=iterations),
    )
    write_pointer(layout.active_file("catify"), meta["version"])


def start(command: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        [*command[:-1], str(port)] if command[-1] == "PORT" else [*command, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(f"{url}/healthz", proc)
    return proc, url


def serve_cmd(home: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "veloxserve.cli", "serve", "--home", str(home), *extra]


def load(urls: list[str], scripts: list[Path], duration: int) -> dict[str, float]:
    """One wrk per server at once; throughput summed, latency the median over the servers."""
    results: list[dict] = [{}] * len(urls)

    def one(i: int) -> None:
        results[i] = run_wrk(urls[i], scripts[i], CONNECTIONS // len(urls), duration)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "requests_per_s": round(sum(r["requests_per_s"] for r in results)),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in results), 2),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in results), 2),
        "non_2xx": sum(r["non_2xx"] for r in results),
    }


def run_config(
    label: str,
    procs_urls: list[tuple[subprocess.Popen, str]],
    scripts: dict[str, list[Path]],
    duration: int,
    report: dict,
    routes=("predict", "observe"),
) -> None:
    try:
        for route in routes:
            report[f"{label}_{route}"] = load([u for _, u in procs_urls], scripts[route], duration)
            print(f"{label} {route}: {report[f'{label}_{route}']}", file=sys.stderr, flush=True)
    finally:
        for proc, _ in procs_urls:
            proc.terminate()
            proc.wait(60)


def update_cost(redis_url: str, evals: int = 300, batches: int = 30) -> dict[str, dict[str, float]]:
    """Per observation, at k = 10 and 52: Redis CPU (its own commandstats) of the whole update as a
    Lua script (bench/lua_update.lua) and of compare-and-set with the update computed in the
    server (the design used), and the server's wall time for the latter, in batches of 100."""
    import redis

    from tests.conftest import synthetic_version_arrays
    from veloxserve.learning.shared_table import SharedUserTable
    from veloxserve.learning.user_table import UserTable
    from veloxserve.models.version import ModelVersion
    from veloxserve.storage.redis_store import RedisUserStore

    client = redis.Redis.from_url(redis_url)
    lua = client.script_load((Path(__file__).parent / "lua_update.lua").read_text())

    def redis_usec() -> float:
        stats = client.info("commandstats")
        return sum(v["usec"] for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_hmget"))

    out = {}
    with RedisUserStore(redis_url + "?prefix=benchupdate") as store:
        for rank in (8, 50):
            k = rank + 2
            arrays, meta = synthetic_version_arrays(n_users=100, n_items=500, rank=rank)
            version = ModelVersion.from_arrays(arrays, meta)
            F = version.features.matrix
            rng = np.random.default_rng(0)
            empty = UserTable(version.dim, version.prior, version.link, capacity=1)
            init = empty.encode(empty.ensure("u"))
            client.config_resetstat()
            for lsn in range(1, evals + 1):
                item = int(rng.integers(0, 500))
                client.evalsha(
                    lua,
                    1,
                    f"lua{k}:{{u}}",
                    "@b",
                    lsn,
                    item,
                    np.float64(3.0).tobytes(),
                    F[item].tobytes(),
                    init,
                    "i",
                    "0.05",
                    b"",
                    b"",
                )
            lua_us = redis_usec() / evals
            table = SharedUserTable(store, f"k{k}", UserTable(version.dim, version.prior, version.link))
            client.config_resetstat()
            wall, lsn = [], 0
            for _ in range(batches):
                users = [str(u) for u in rng.integers(0, 100, 100)]
                started = time.perf_counter()
                table.learn(
                    "b", list(range(lsn + 1, lsn + 101)), users, rng.integers(0, 500, 100), rng.normal(size=100), F
                )
                wall.append((time.perf_counter() - started) / 100 * 1e6)
                lsn += 100
            out[f"k{k}"] = {
                "lua_update_redis_us": round(lua_us, 1),
                "compare_and_set_redis_us": round(redis_usec() / (100 * batches), 1),
                "compare_and_set_server_wall_us": round(statistics.median(wall[5:]), 1),
            }
    client.close()
    return out


def log_durability(directory: Path, writers: int = 32, per_writer: int = 100) -> dict[str, dict[str, float]]:
    """Concurrent appends to one log, each waiting until durable: three ways to be durable."""
    from veloxserve.storage.observation_log import ObservationLog

    out = {}
    for mode in ("group_commit", "fsync_per_request", "no_fsync"):
        serial = threading.Lock() if mode == "fsync_per_request" else None
        latencies: list[float] = []
        with ObservationLog(directory / mode, fsync=mode != "no_fsync", commit_delay=0.001) as obs_log:

            def writer(w: int) -> None:
                for n in range(per_writer):
                    started = time.perf_counter()
                    if serial is None:
                        obs_log.append_and_wait([(f"u{w}", "1", float(n), "v1")])
                    else:
                        with serial:  # nothing else is queued: one fsync for this request alone
                            obs_log.append_and_wait([(f"u{w}", "1", float(n), "v1")])
                    latencies.append(time.perf_counter() - started)

            started = time.perf_counter()
            threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - started
        out[mode] = {
            "observations_per_s": round(writers * per_writer / elapsed),
            "p50_ms": round(float(np.percentile(latencies, 50)) * 1e3, 3),
            "p99_ms": round(float(np.percentile(latencies, 99)) * 1e3, 3),
        }
    out["group_commit"]["speedup_over_fsync_per_request"] = round(
        out["group_commit"]["observations_per_s"] / out["fsync_per_request"]["observations_per_s"], 1
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.duration, args.processes = 2, [2]
    if not shutil.which("wrk") or not shutil.which("redis-server"):
        sys.exit("needs wrk and redis-server (apt-get install wrk redis-server)")
    report: dict[str, object] = {
        "machine": {"cpus": os.cpu_count()},
        "connections": CONNECTIONS,
        "model": "catify rank 50, 2000 users x 1000 songs",
        "duration_s": args.duration,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        redis_server = RedisServer(tmp / "redis")
        redis_server.start()
        subprocess.run(
            ["redis-cli", "-p", str(redis_server.port), "config", "set", "appendonly", "no"],
            check=True,
            capture_output=True,
        )
        try:
            report["update_cost_per_observation"] = update_cost(redis_server.url, *((20, 6) if args.quick else ()))
            report["log_durability_32_writers"] = log_durability(tmp / "logs", per_writer=5 if args.quick else 100)
            home = tmp / "home"
            train(home, iterations=1 if args.quick else 5)
            plain = {}
            for route in ("predict", "observe"):
                plain[route] = tmp / f"{route}.lua"
                plain[route].write_text(LUA[route])

            def same(n: int) -> dict[str, list[Path]]:
                return {route: [plain[route]] * n for route in plain}

            run_config("embedded_1", [start(serve_cmd(home))], same(1), args.duration, report)
            run_config(
                "embedded_1_no_fsync",
                [start([sys.executable, "-c", NO_FSYNC_SERVER, str(home), "PORT"])],
                same(1),
                args.duration,
                report,
                routes=("observe",),
            )
            for n in args.processes:
                url = f"{redis_server.url}?prefix=bench{n}"
                servers = [start(serve_cmd(home, "--store", url, "--instance", f"i{k}")) for k in range(n)]
                run_config(f"redis_{n}", servers, same(n), args.duration, report)
            for n in [p for p in args.processes if p > 1]:
                homes, scripts = [], {route: [] for route in plain}
                for k in range(n):
                    owned = tmp / f"owner{n}-{k}"
                    shutil.copytree(home, owned, ignore=shutil.ignore_patterns("log", "state.lmdb", ".lock*"))
                    homes.append(owned)
                    for route in plain:
                        script = tmp / f"{route}-{n}-{k}.lua"
                        script.write_text(owner_lua(route, k, n))
                        scripts[route].append(script)
                run_config(f"owner_{n}", [start(serve_cmd(h)) for h in homes], scripts, args.duration, report)
        finally:
            redis_server.stop()
    for route in ("predict", "observe"):
        base = report["embedded_1_" + route]["requests_per_s"]
        for key in [k for k in report if k.endswith("_" + route) and k != f"embedded_1_{route}"]:
            report[key]["ratio_to_embedded_1"] = round(report[key]["requests_per_s"] / base, 2) if base else None
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
