"""An open-loop HTTP load generator (asyncio, keep-alive connections, a few lines of HTTP/1.1).

Open loop: request i is due at a time fixed in advance (Poisson arrivals at `rate`), whether or
not earlier ones have been answered, and its latency is measured from that due time. A closed loop
(wrk, or N clients each waiting for its answer) slows down with the server and so never overloads
it; measuring from the due time also counts any wait for a free connection (no coordinated omission).
Shared by tests/test_overload.py and bench/bench_overload.py.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Outcome:
    due: float  # seconds since the start
    latency: float  # seconds from due time to the full answer
    status: int  # 0 when the connection failed
    retry_after: str | None


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> tuple[int, str | None]:
    writer.write(raw)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    fields = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    if fields.get("transfer-encoding") == "chunked":
        while (size := int((await reader.readuntil(b"\r\n"))[:-2], 16)) > 0:
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    else:
        await reader.readexactly(int(fields.get("content-length", "0")))
    return status, fields.get("retry-after")


async def open_loop(
    host: str,
    port: int,
    path: str,
    rate: float,
    duration: float,
    *,
    headers: dict[str, str] | None = None,
    connections: int = 256,
    seed: int = 0,
) -> list[Outcome]:
    """GET `path` at `rate` requests/s (Poisson) for `duration` seconds; every request's outcome."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    raw = f"GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n".encode()
    rng = random.Random(seed)
    due, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            break
        due.append(t)
    order = itertools.count()
    outcomes: list[Outcome] = []
    start = time.perf_counter() + 0.2  # let the connections open first

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while (i := next(order)) < len(due):
                delay = start + due[i] - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                try:
                    status, retry_after = await _request(reader, writer, raw)
                except (OSError, asyncio.IncompleteReadError):
                    status, retry_after = 0, None
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                outcomes.append(Outcome(due[i], time.perf_counter() - start - due[i], status, retry_after))
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(connections)))
    return outcomes


async def closed_loop_rate(
    host: str, port: int, path: str, seconds: float, *, connections: int = 4, headers: dict[str, str] | None = None
) -> float:
    """Answers per second with `connections` clients each waiting for its answer: the capacity."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    raw = f"GET {path} HTTP/1.1\r\nhost: {host}\r\n{extra}\r\n".encode()
    done = 0
    end = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        reader, writer = await asyncio.open_connection(host, port)
        while time.perf_counter() < end:
            await _request(reader, writer, raw)
            done += 1
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(connections)))
    return done / (time.perf_counter() - started)


def served_latencies(outcomes: list[Outcome]) -> list[float]:
    return sorted(o.latency for o in outcomes if o.status == 200)


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, int(round(q / 100 * len(sorted_values))) - 1))]
