"""Scale-out benchmark: configurations of server processes and Redis, each measured the same way.

    .venv/bin/python bench/bench_scaleout.py [--duration 5] [--configurations redis_1,redis_2] [--require-all]
    .venv/bin/python bench/bench_scaleout.py --quick   # 1 s runs: checks the script runs

Catify, rank 50, 2,000 users x 1,000 songs (as bench/bench_http.py). Each configuration in
CONFIGURATIONS is a declarative entry (processes, store, URL options, --workers); for each,
predict and observe at 32 wrk connections in total (split evenly over the processes): requests/s,
p50/p99, and CPU-µs per request from the processes' own accounting (/proc/<pid>/stat utime+stime
of every server process and its children, and of every redis-server, whose pid is INFO's
process_id), server and Redis separately and summed; and the freshness lag: an observation
acknowledged by process A until a prediction from process B reflects it (A = B for one process).
A configuration whose feature this checkout lacks (`serve --help` has no --workers, the store
refuses a URL option) is reported as {"unavailable": why}, or fails the run under --require-all.
bench/scaleout_model.py then predicts each throughput from its costs and projects to N cores.

It also times one update per observation at k = 10 and k = 52 (in Redis's CPU: the whole
Sherman–Morrison update as a Lua script vs compare-and-set of a state computed in the server),
and the log's durability modes in-process with 32 concurrent writers: group commit, one fsync per
request (appends serialised), no fsync. Every server and Redis share this machine's cores with
wrk, so figures are noisy; each is one run of --duration seconds. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scaleout_model  # noqa: E402
from bench_http import LOADS, wait_ready  # noqa: E402
from scaleout_measure import CONNECTIONS, freshness, measure, redis_pids  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import RedisClusterServers, RedisServer, free_port  # noqa: E402

LUA = {"predict": LOADS["predict_get"], "observe": LOADS["observe"]}  # bench_http's requests: a random trained user


@dataclass(frozen=True)
class Configuration:
    """How to start one configuration: `processes` x `veloxserve serve`, over the embedded store
    (store None), one Redis ("redis") or a Redis Cluster ("cluster"), with these store URL
    options and --workers (0: not given)."""

    processes: int
    store: str | None = None
    options: tuple[str, ...] = ()
    workers: int = 0


CONFIGURATIONS = {
    "embedded_1": Configuration(1),
    "embedded_workers": Configuration(1, workers=os.cpu_count() or 2),
    "redis_1": Configuration(1, "redis", ("cache=off",)),
    "redis_2": Configuration(2, "redis", ("cache=off",)),
    "redis_1_cached": Configuration(1, "redis", ("cache=on",)),
    "redis_2_cached": Configuration(2, "redis", ("cache=on",)),
    "redis_cluster": Configuration(2, "cluster", ("cluster=1",)),
}


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


class Unavailable(Exception):
    """This checkout lacks what a configuration needs."""


def probe_option(url: str, option: str) -> str | None:
    """Why the store refuses this URL option, or None if it takes it."""
    from veloxserve.storage.redis_store import RedisUserStore

    try:
        store = RedisUserStore(f"{url}?prefix=probe&{option}")
        try:
            store.client.ping()
        finally:
            store.close()
    except Exception as exc:  # noqa: BLE001  (any refusal means: not in this checkout)
        return f"the store refuses the URL option {option!r}: {type(exc).__name__}: {exc}"
    return None


def start_server(home: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "veloxserve.cli", "serve", "--home", str(home), "--port", str(port), *extra]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(f"{url}/healthz", proc)
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    return proc, url


def run_configuration(name: str, config: Configuration, env: dict, args: argparse.Namespace) -> dict:
    """Start the configuration's processes, measure predict, observe and freshness, stop them."""
    if config.workers and "--workers" not in env["serve_help"]:
        raise Unavailable("`veloxserve serve --help` has no --workers")
    extra: list[str] = ["--workers", str(config.workers)] if config.workers else []
    redis_urls: list[str] = []
    if config.store is not None:
        base = env["cluster"]().address if config.store == "cluster" else env["redis"].url
        options = []
        for option in config.options:
            refused = probe_option(base, option)
            if refused and option == "cache=off" and probe_option(base, "cache=on"):
                continue  # no client-side cache in this checkout: uncached is all there is
            if refused:
                raise Unavailable(refused)
            options.append(option)
        url = f"{base}?{'&'.join([f'prefix={name}', *options])}"
        extra += ["--store", url]
        redis_urls = env["cluster_urls"]() if config.store == "cluster" else [base]
    servers = []
    try:
        for k in range(config.processes):
            servers.append(start_server(env["home"], *extra, *(["--instance", f"i{k}"] if config.store else [])))
        urls, pids = [u for _, u in servers], [p.pid for p, _ in servers]
        redis = redis_pids(redis_urls)
        out = {route: measure(urls, env["scripts"][route], args.duration, pids, redis) for route in LUA}
        out["freshness_ms"] = freshness(urls[0], urls[-1], args.samples)
        return out
    finally:
        for proc, _ in servers:
            proc.terminate()
        for proc, _ in servers:
            proc.wait(60)


def deployment(config: Configuration, shards: int) -> scaleout_model.Deployment:
    return scaleout_model.Deployment(
        processes=config.processes * max(1, config.workers),
        shards={None: 0, "redis": 1, "cluster": shards}[config.store],
        cores=os.cpu_count() or 1,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--samples", type=int, default=50, help="freshness samples per configuration")
    parser.add_argument("--configurations", default=",".join(CONFIGURATIONS), help="comma-separated subset")
    parser.add_argument("--require-all", action="store_true", help="fail if a configuration is unavailable")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    chosen = [c for c in args.configurations.split(",") if c]
    if unknown := sorted(set(chosen) - set(CONFIGURATIONS)):
        parser.error(f"unknown configurations {unknown}; choose among {', '.join(CONFIGURATIONS)}")
    if args.quick:
        args.duration, args.samples = 1, 5
    if not all(shutil.which(tool) for tool in ("wrk", "redis-server", "redis-cli")):
        sys.exit("needs wrk, redis-server and redis-cli (apt-get install wrk redis-server)")
    report: dict[str, object] = {
        "machine": {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()},
        "connections": CONNECTIONS,
        "dataset": "catify rank 50, 2000 users x 1000 songs",
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
        clusters: list[RedisClusterServers] = []

        def cluster() -> RedisClusterServers:
            if not clusters:
                clusters.append(RedisClusterServers(tmp / "cluster").start())
                for port in clusters[0].ports:  # as the single Redis: no append-only file in the figures
                    subprocess.run(
                        ["redis-cli", "-p", str(port), "config", "set", "appendonly", "no"],
                        check=True,
                        capture_output=True,
                    )
            return clusters[0]

        try:
            report["update_cost_per_observation"] = update_cost(redis_server.url, *((20, 6) if args.quick else ()))
            report["log_durability_32_writers"] = log_durability(tmp / "logs", per_writer=5 if args.quick else 100)
            home = tmp / "home"
            train(home, iterations=1 if args.quick else 5)
            scripts = {}
            for route, lua in LUA.items():
                scripts[route] = tmp / f"{route}.lua"
                scripts[route].write_text(lua)
            help_text = subprocess.run(
                [sys.executable, "-m", "veloxserve.cli", "serve", "--help"], capture_output=True, text=True, check=True
            ).stdout
            env = {
                "home": home,
                "scripts": scripts,
                "serve_help": help_text,
                "redis": redis_server,
                "cluster": cluster,
                "cluster_urls": lambda: [f"redis://127.0.0.1:{p}/0" for p in cluster().ports],
            }
            results: dict[str, dict] = {}
            for name in chosen:
                try:
                    results[name] = run_configuration(name, CONFIGURATIONS[name], env, args)
                except Unavailable as why:
                    if args.require_all:
                        sys.exit(f"{name} is unavailable: {why}")
                    results[name] = {"unavailable": str(why)}
                print(f"{name}: {results[name]}", file=sys.stderr, flush=True)
            report["configurations"] = results
            shards = len(cluster().masters()) if clusters else 3
        finally:
            for c in clusters:
                c.stop()
            redis_server.stop()
    deployments = {name: deployment(CONFIGURATIONS[name], shards) for name in results}
    report["scaleout_model"] = {
        "check": scaleout_model.check(results, deployments, LUA),
        "projection_one_process_per_core": {
            f"{name}_{route}_{shards}_shards": scaleout_model.project(
                scaleout_model.Costs(m[route]["server_cpu_us_per_request"], m[route]["redis_cpu_us_per_request"]),
                (2, 4, 8, 16, 32),
                shards,
            )
            for name, m in results.items()
            if name in ("redis_1", "redis_1_cached") and "unavailable" not in m
            for route in LUA
            for shards in (1, 3)
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
