"""How bench/bench_scaleout.py measures one configuration: wrk's throughput and latency, the CPU
the server processes and Redis spent per request (their own /proc/<pid>/stat accounting), and the
freshness lag from one process's acknowledgement to another's prediction."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np

CONNECTIONS = 32
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}
_TICK = os.sysconf("SC_CLK_TCK")


def run_wrk(url: str, script: Path, connections: int, duration: int) -> dict[str, float]:
    """bench_http's wrk run, with a 10 s request timeout and latencies of seconds parsed too."""
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    result = {
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
    }
    for pct, value, unit in re.findall(r"^\s+(50|99)(?:\.0+)?%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M):
        result[f"p{pct}_ms"] = float(value) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    result["non_2xx"] = int(errors.group(1)) if errors else 0
    if "p99_ms" not in result:
        raise RuntimeError(f"no latency distribution in wrk's output:\n{out}")
    return result


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of these processes and all their descendants (a --workers server's children)."""
    total, seen, todo = 0.0, set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICK  # fields 14 and 15 of stat(5)
            for task in Path(f"/proc/{pid}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def redis_pids(urls: list[str]) -> list[int]:
    import redis

    pids = []
    for url in urls:
        with redis.Redis.from_url(url) as client:
            pids.append(int(client.info("server")["process_id"]))
    return pids


def measure(urls: list[str], script: Path, duration: int, servers: list[int], redis: list[int]) -> dict:
    """One wrk per server at once: throughput summed, latency the median over the servers, CPU
    per request from the servers' and Redis's own accounting over the run."""
    results: list[dict] = [{}] * len(urls)

    def one(i: int) -> None:
        results[i] = run_wrk(urls[i], script, CONNECTIONS // len(urls), duration)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(urls))]
    server_cpu, redis_cpu = cpu_seconds(servers), cpu_seconds(redis)
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    server_cpu, redis_cpu = cpu_seconds(servers) - server_cpu, cpu_seconds(redis) - redis_cpu
    requests = max(1, sum(r["requests"] for r in results))
    server_us, redis_us = server_cpu * 1e6 / requests, redis_cpu * 1e6 / requests
    return {
        "rps": round(sum(r["requests_per_s"] for r in results)),
        "p50_ms": round(statistics.median(r["p50_ms"] for r in results), 2),
        "p99_ms": round(statistics.median(r["p99_ms"] for r in results), 2),
        "cpu_us_per_request": round(server_us + redis_us, 1),
        "server_cpu_us_per_request": round(server_us, 1),
        "redis_cpu_us_per_request": round(redis_us, 1),
        "non_2xx": sum(r["non_2xx"] for r in results),
    }


def freshness(writer: str, reader: str, samples: int, poll_timeout: float = 5.0) -> dict[str, float | int]:
    """ms from an observation acknowledged by `writer` until `reader`'s prediction changes with it,
    and the ms a lone observe (no other load) waited for its acknowledgement."""
    rng = np.random.default_rng(0)
    lags, acks, stale = [], [], 0
    with httpx.Client(timeout=30) as client:
        for _ in range(samples):
            user, item = int(rng.integers(0, 2000)), int(rng.integers(0, 1000))
            predict = f"{reader}/models/catify/predict?user={user}&item={item}"
            before = client.get(predict).json()["score"]
            posted = time.perf_counter()
            done = client.post(f"{writer}/models/catify/observe", json={"user": user, "item": item, "score": 5.0})
            if done.status_code != 200:
                raise RuntimeError(f"observe answered {done.status_code}: {done.text}")
            acked = time.perf_counter()
            acks.append((acked - posted) * 1e3)
            while client.get(predict).json()["score"] == before:
                if time.perf_counter() - acked > poll_timeout:
                    stale += 1
                    break
            else:
                lags.append((time.perf_counter() - acked) * 1e3)
    lags = lags or [poll_timeout * 1e3]
    return {
        "p50": round(float(np.percentile(lags, 50)), 2),
        "p99": round(float(np.percentile(lags, 99)), 2),
        "samples": samples,
        "single_observe_ack_ms": {
            "p50": round(float(np.percentile(acks, 50)), 2),
            "p99": round(float(np.percentile(acks, 99)), 2),
        },
        "not_seen_within_5_s": stale,
    }
