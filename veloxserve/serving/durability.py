"""The acknowledgement path, and coroutines waiting on it, woken once per group commit.

`Acknowledgement` is what an observation waits on before it is acknowledged: the observation
log's group commit (storage/observation_log.py) when this process holds the users' state, or the
log followed by the Applier that learns it into Redis (serving/applier.py) when several
processes share it. The backend (serving/backend.py) picks one per model.

Resolving one thread-safe future per request would cost one event-loop wake-up (a self-pipe
write) per request; here the log's writer thread schedules a single callback per fsync batch,
which releases every waiter whose LSN the batch covered.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from typing import Protocol

from veloxserve.errors import StoreUnavailable


class Acknowledgement(Protocol):
    """When an observation may be acknowledged: every LSN up to `durable_lsn` may."""

    @property
    def durable_lsn(self) -> int: ...

    @property
    def failure(self) -> StoreUnavailable | None:
        """Why nothing more is acknowledged for now (a failed disk, an unreachable Redis), or None."""
        ...

    def refused(self, lsn: int) -> StoreUnavailable | None:
        """Why `lsn` will not be acknowledged (its batch was refused), or None."""
        ...

    def subscribe(self, listener: Callable[[int], None]) -> None:
        """Call `listener(lsn)` from a background thread each time `durable_lsn` advances to
        `lsn`, and `listener(-1)` when some batch was refused."""
        ...

    def wait_durable(self, lsn: int, timeout: float | None = None) -> int:
        """Block until `lsn` may be acknowledged; its refusal, or StoreUnavailable on timeout."""
        ...


class DurableWaiter:
    """Await `wait(lsn)` on one event loop until the acknowledgement path has reached `lsn`."""

    def __init__(self, obs_log: Acknowledgement, loop: asyncio.AbstractEventLoop) -> None:
        self._log = obs_log
        self._loop = loop
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        obs_log.subscribe(self._on_commit)

    def _on_commit(self, lsn: int) -> None:  # the log's writer thread
        try:
            self._loop.call_soon_threadsafe(self._release, lsn)
        except RuntimeError:  # the loop has closed: nobody is waiting any more
            pass

    def _release(self, lsn: int) -> None:
        waiting = self._waiting
        if lsn < 0:  # some batch was refused: fail exactly the waiters whose batch it was
            kept = []
            for entry in waiting:
                refused = self._log.refused(entry[0])
                if refused is None:
                    kept.append(entry)
                elif not entry[2].done():
                    entry[2].set_exception(refused)
            heapq.heapify(kept)
            self._waiting = kept
            return
        while waiting and waiting[0][0] <= lsn:
            future = heapq.heappop(waiting)[2]
            if not future.done():
                future.set_result(None)

    async def wait(self, lsn: int, timeout: float) -> None:
        if self._log.durable_lsn >= lsn:
            return
        refused = self._log.refused(lsn)
        if refused is not None:
            raise refused
        future = self._loop.create_future()
        heapq.heappush(self._waiting, (lsn, next(self._order), future))
        timer = self._loop.call_later(timeout, self._expire, future, lsn, timeout)  # cheaper than wait_for
        try:
            await future
        finally:
            timer.cancel()

    @staticmethod
    def _expire(future: asyncio.Future[None], lsn: int, timeout: float) -> None:
        if not future.done():
            future.set_exception(
                StoreUnavailable(
                    f"The observation log did not make LSN {lsn} durable within {timeout} s; the disk may be stalled."
                )
            )
