"""Coroutines waiting for their observations to become durable, woken once per group commit.

Resolving one thread-safe future per request would cost one event-loop wake-up (a self-pipe
write) per request; here the log's writer thread schedules a single callback per fsync batch,
which releases every waiter whose LSN the batch covered.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from veloxserve.errors import StoreUnavailable
from veloxserve.storage.observation_log import ObservationLog


class DurableWaiter:
    """Await `wait(lsn)` on one event loop until the log has fsynced `lsn` (or, with state shared
    in Redis, until the serving.shared_server.Applier has also learned it: the same protocol)."""

    def __init__(self, obs_log: ObservationLog, loop: asyncio.AbstractEventLoop) -> None:
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
            future.set_exception(StoreUnavailable(
                f"The observation log did not make LSN {lsn} durable within {timeout} s; the disk may be stalled."
            ))
