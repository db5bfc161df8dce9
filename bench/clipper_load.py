"""Shared by the Clipper benchmarks: a closed-loop load generator over a ClipperRuntime on this
process's event loop, and latency summaries. Not a benchmark itself."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def run(coroutine: Any) -> Any:
    """Run on uvloop, the loop `veloxserve serve` uses."""
    import uvloop

    return uvloop.run(coroutine)


def write_report(name: str, figures: dict[str, Any], keep: bool = True) -> None:
    """Print a benchmark's JSON document and keep a copy as bench/results/<name>.json (not for a
    --quick run: its figures mean nothing and must not replace the ones docs/benchmarks.md cites)."""
    out = json.dumps(figures, indent=2)
    print(out)
    if not keep:
        return
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path(f"bench/results/{name}.json").write_text(out)


def summary(latencies_s: list[float] | np.ndarray) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1e3
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 4),
        "p99_ms": round(float(np.percentile(ms, 99)), 4),
        "mean_ms": round(float(ms.mean()), 4),
        "n": int(ms.size),
    }


async def closed_loop(
    call: Callable[[int], Any], concurrency: int, seconds: float, warmup: float | None = None
) -> dict[str, Any]:
    """`concurrency` clients each awaiting `call(i)` back to back; figures after `warmup` seconds
    (default 1 s, or a fifth of `seconds` when that is shorter)."""
    warmup = min(1.0, seconds / 5) if warmup is None else warmup
    latencies: list[float] = []
    answers: list[Any] = []
    counter = iter(range(1 << 62))
    start = time.perf_counter()
    measure_from = start + warmup
    stop = measure_from + seconds

    async def client() -> None:
        while (now := time.perf_counter()) < stop:
            answer = await call(next(counter))
            done = time.perf_counter()
            if now >= measure_from:
                latencies.append(done - now)
                answers.append(answer)

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return {"throughput_qps": round(len(latencies) / seconds, 1), **summary(latencies), "answers": answers}
