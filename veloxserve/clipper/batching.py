"""Adaptive batching: a per-replica queue whose batch size follows the latency objective.

AIMD as in the Clipper prototype: while a batch's latency is under 90% of the objective the next
batch may hold 2 more queries; in the last 10% the size holds; over the objective it is cut to
90%. Delayed batching waits up to `delay` seconds for a batch to fill before sending a short one,
which trades a little latency for throughput when queries trickle in. A query whose deadline has
passed when its batch is formed is answered with DeadlineExceeded and never computed.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from veloxserve.errors import DeadlineExceeded


@dataclass(frozen=True)
class BatchingConfig:
    """How a model's replicas batch. Objective and delay are in seconds."""

    objective: float = 0.020
    delay: float = 0.0
    initial_size: int = 1
    max_size: int = 1024
    adaptive: bool = True  # False: every batch is `initial_size` (1: no batching)

    def __post_init__(self) -> None:
        if not self.objective > 0:
            raise ValueError(f"objective must be > 0 seconds, got {self.objective}")
        if self.delay < 0:
            raise ValueError(f"delay must be >= 0 seconds, got {self.delay}")
        if not 1 <= self.initial_size <= self.max_size:
            raise ValueError(f"need 1 <= initial_size <= max_size, got {self.initial_size}, {self.max_size}")


class AIMDController:
    """The batch size: +2 under 90% of the objective, held up to it, ×0.9 over it."""

    INCREASE = 2
    DECREASE = 0.9
    HEADROOM = 0.9

    def __init__(self, config: BatchingConfig) -> None:
        self.config = config
        self.size = config.initial_size

    def update(self, batch_latency: float, batch_size: int) -> int:
        """Learn from one batch's latency; a batch smaller than the limit says nothing about more."""
        if not self.config.adaptive:
            return self.size
        objective = self.config.objective
        if batch_latency > objective:
            self.size = max(1, math.floor(self.size * self.DECREASE))
        elif batch_latency < self.HEADROOM * objective and batch_size >= self.size:
            self.size = min(self.config.max_size, self.size + self.INCREASE)
        return self.size


@dataclass
class Query:
    """One input waiting for one output, answered through `future` by its deadline (monotonic s)."""

    input: Any
    deadline: float
    future: asyncio.Future = field(repr=False)
    enqueued: float = field(default_factory=time.monotonic)


class BatchQueue:
    """Queries waiting for a replica. `take` forms the next batch: it waits for one query, lingers
    up to `delay` for more, and answers the expired ones instead of returning them."""

    def __init__(self) -> None:
        self._items: deque[Query] = deque()
        self._arrived = asyncio.Event()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._items)

    def put(self, query: Query) -> None:
        self._items.append(query)
        self._arrived.set()

    def put_first(self, query: Query) -> None:
        """Ahead of the waiting queries (a restarted container's warm-up batch)."""
        self._items.appendleft(query)
        self._arrived.set()

    async def take(self, size: int, delay: float) -> list[Query]:
        while not self._items:
            self._arrived.clear()
            await self._arrived.wait()
        if delay > 0 and len(self._items) < size:
            until = time.monotonic() + delay
            while len(self._items) < size and (left := until - time.monotonic()) > 0:
                self._arrived.clear()
                try:  # not wait_for: on 3.11 it swallows a cancel that comes as the wait ends (replica.stop hung)
                    async with asyncio.timeout(left):
                        await self._arrived.wait()
                except TimeoutError:
                    break
        now = time.monotonic()
        batch: list[Query] = []
        while self._items and len(batch) < size:
            query = self._items.popleft()
            if query.future.done():  # the caller gave up (cancelled) already
                continue
            if query.deadline <= now:
                self.dropped += 1
                query.future.set_exception(
                    DeadlineExceeded(
                        f"The query waited {now - query.enqueued:.3f} s and its deadline passed before a "
                        "replica was free; it was not computed. Raise the latency objective or add replicas."
                    )
                )
                continue
            batch.append(query)
        return batch

    def drain(self) -> list[Query]:
        """Take every waiting query out (to hand them to another replica)."""
        items, self._items = list(self._items), deque()
        return items

    def fail_all(self, error: Exception) -> None:
        while self._items:
            query = self._items.popleft()
            if not query.future.done():
                query.future.set_exception(error)
