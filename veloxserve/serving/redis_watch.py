"""Keeping a hung Redis off the event loop: a background watch for /healthz, a deadline for requests.

A stopped (SIGSTOP) or partitioned Redis does not refuse connections, it just never answers:
every command waits for its socket timeout, then for its retries. Run on the event loop, one
such call froze every route for seconds, /healthz included. So, with state shared in Redis:

- `RedisWatch`, a thread, pings Redis every `interval` seconds with a client that does not
  retry, checks that Redis still holds each model's generation of users' state (a FLUSHALL or a
  restart without persistence loses it, see learning/shared_table.py) and refreshes the user
  counts. /healthz, /metrics and GET /models read what it found, never Redis. A lost state is
  said (an ERROR, /healthz degraded, predictions 503 instead of the trained defaults) and
  rebuilt from the logs (`rebuild`, SharedUserState.rebuild_lost_state), counted in `rebuilds`.
- `StoreCalls.run` runs each Redis-bound piece of a request (a prediction, a ranking) on a
  few worker threads and answers 503 StoreUnavailable with Retry-After once
  `RedisSettings.deadline` has passed, whether the call is still waiting for Redis or still
  queued behind calls that are. A running call finishes on its own socket timeout and its
  result is dropped. Such calls change no user state (a ranking that finishes late leaves
  at most a decision-log record nobody was given).
- `StoreCalls.read` runs a prediction on the event loop when this process holds what it reads
  (storage/redis_cache.py: only after the request's fence came back, so it reflects every
  observation acknowledged before the request arrived, by any process); a CacheMiss runs it
  again through `run`, on the workers, which read Redis and fill the cache.

Without a shared store every call runs inline: LMDB and memory are not network services, and
the embedded hot path keeps its speed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from veloxserve.errors import StoreUnavailable
from veloxserve.learning.shared_table import SharedUserTable
from veloxserve.storage.redis_cache import CacheMiss, Fence, TrackedCache
from veloxserve.storage.redis_client import RedisProbe, RedisSettings

log = logging.getLogger(__name__)
T = TypeVar("T")
_Call = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]", asyncio.AbstractEventLoop]
_POOL_THREADS = 2  # Redis-bound calls in flight at once; the rest queue (and time out) behind them


class RedisWatch:
    """What /healthz says about Redis, found by a thread so that no request waits for it."""

    def __init__(
        self,
        settings: RedisSettings,
        tables: Callable[[], dict[str, SharedUserTable]],
        rebuild: Callable[[str], object] | None = None,
        interval: float = 0.5,
    ) -> None:
        self.settings = settings
        self._tables = tables
        self._rebuild = rebuild
        self.rebuilds: dict[str, int] = {}  # model -> times its lost state was rebuilt from the logs
        self._interval = interval
        self._probe = RedisProbe(settings)  # one attempt per ping: the watch itself is the retry
        self.unreachable: str | None = None  # why the last ping failed, None while Redis answers
        self._since = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-watch", daemon=True)
        self._thread.start()

    def health(self) -> dict[str, list[str]]:
        """Per model, what is wrong with its state in Redis: unreachable, or its data lost."""
        reasons: dict[str, list[str]] = {}
        for name, table in self._tables().items():
            why = reasons[name] = []
            if self.unreachable is not None:
                why.append(
                    f"Redis at {self.settings.where} has not answered for {time.monotonic() - self._since:.1f} s "
                    f"({self.unreachable}): predictions and observations answer 503 until it does; the server "
                    "reconnects by itself."
                )
            if table.lost is not None:
                why.append(table.lost.message)
        return {name: why for name, why in reasons.items() if why}

    def check(self) -> None:
        """One round: ping, then each model's generation and user count."""
        why = self._probe.ping()
        if why is not None:
            if self.unreachable is None:
                self._since = time.monotonic()
                log.error("Redis at %s does not answer: %s", self.settings.where, why)
            self.unreachable = why
            return
        if self.unreachable is not None:
            log.info("Redis at %s answers again", self.settings.where)
        self.unreachable = None
        for name, table in self._tables().items():
            try:
                if table.lost is None:
                    table.check_generation()  # marks the table lost if Redis no longer holds its state
                    table.refresh_count()
            except StoreUnavailable:
                pass  # lost (the table says so) or Redis failed meanwhile (the next ping says so)
            if table.lost is not None and self._rebuild is not None:
                self._rebuild_lost(name, table.lost, self._rebuild)

    def _rebuild_lost(self, name: str, lost: StoreUnavailable, rebuild: Callable[[str], object]) -> None:
        log.error("%s", lost.message)
        try:
            rebuild(name)
        except StoreUnavailable as exc:  # Redis failed meanwhile: the next round tries again
            log.error("rebuilding the users' state of %s failed: %s", name, exc.message)
            return
        self.rebuilds[name] = self.rebuilds.get(name, 0) + 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.check()
            except Exception:  # the watch must outlive anything one round does
                log.exception("checking Redis failed")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(self.settings.deadline + self._interval)
        self._probe.close()


class StoreCalls:
    """Runs calls that need Redis off the event loop, each answered within the deadline.

    Not a ThreadPoolExecutor: bench/bench_redis_hang.py measured one event-loop wake-up and one
    asyncio.wait_for per call costing about a third of the predictions/s over Redis. Here each of
    `_POOL_THREADS` workers takes every call queued so far, runs them, and resolves them all
    with one wake-up of the loop; a timer per call answers 503 at the deadline."""

    def __init__(self, settings: RedisSettings | None, cache: TrackedCache | None = None) -> None:
        self.settings = settings
        self.cache = cache
        self._fences: dict[Fence, asyncio.Future[bool]] = {}  # one future per fence, shared by its requests
        self._deadline = 0.0 if settings is None else settings.deadline
        self._where = "" if settings is None else settings.where
        self._queue: deque[_Call] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._threads = (
            []
            if settings is None
            else [
                threading.Thread(target=self._work, name=f"redis-call-{n}", daemon=True) for n in range(_POOL_THREADS)
            ]
        )
        for thread in self._threads:
            thread.start()

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`: inline without Redis, else on a worker, StoreUnavailable at the deadline."""
        if not self._threads:
            return fn(*args)
        return await self._on_worker(self._deadline, fn, *args)

    async def _on_worker(self, within: float, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._cond:
            self._queue.append((fn, args, future, loop))
            self._cond.notify()
        timer = loop.call_later(within, self._expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)`, a call that only reads user state: from memory on the event loop once the
        request's fence has come back, else (not held, or the fence failed) as `run` does."""
        cache = self.cache
        if cache is None or not self._threads:
            return await self.run(fn, *args)
        fence = cache.fence()
        if fence is None:  # not tracking: Redis answers
            return await self.run(fn, *args)
        loop = asyncio.get_running_loop()
        started = loop.time()
        passed = await self._passed(fence)
        left = max(0.0, self._deadline - (loop.time() - started))  # the fence's wait counts against the deadline
        if not passed:  # no PONG in time
            return await self._on_worker(left, fn, *args)
        try:
            with cache.answering(memory_only=True):
                return fn(*args)
        except CacheMiss:
            return await self._on_worker(left, _answering, cache, fn, *args)

    def _passed(self, fence: Fence) -> asyncio.Future[bool]:
        future = self._fences.get(fence)
        if future is None:
            loop = asyncio.get_running_loop()
            future = self._fences[fence] = loop.create_future()
            fence.on_done(lambda ok: loop.call_soon_threadsafe(self._settle, fence, ok))
        return future

    def _settle(self, fence: Fence, ok: bool) -> None:
        future = self._fences.pop(fence)
        if not future.done():
            future.set_result(ok)

    def _expire(self, future: asyncio.Future[Any]) -> None:
        if not future.done():  # still queued (never runs) or running (finishes on its socket timeout, unheard)
            future.set_exception(
                StoreUnavailable(
                    f"Redis at {self._where} did not answer within {self._deadline} s. Requests that need "
                    "user state fail with 503 until it answers; retry after Retry-After (the server reconnects by itself)."
                )
            )

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                batch = list(self._queue)
                self._queue.clear()
            done: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
            for fn, args, future, loop in batch:
                if future.done():  # expired while queued
                    continue
                outcome: _Outcome
                try:
                    outcome = (future, fn(*args), None)
                except Exception as exc:  # handed to the request, which answers it
                    outcome = (future, None, exc)
                done.setdefault(loop, []).append(outcome)
            for loop, outcomes in done.items():
                try:
                    loop.call_soon_threadsafe(_resolve, outcomes)
                except RuntimeError:  # the loop has closed: nobody is waiting any more
                    pass

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


def _answering(cache: TrackedCache, fn: Callable[..., T], *args: Any) -> T:
    """On a worker, after the request's fence: memory answers what it holds, Redis the rest."""
    with cache.answering(memory_only=False):
        return fn(*args)


_Outcome = tuple["asyncio.Future[Any]", Any, "Exception | None"]


def _resolve(outcomes: list[_Outcome]) -> None:
    for future, result, exc in outcomes:
        if future.done():  # answered 503 at the deadline meanwhile
            continue
        if exc is None:
            future.set_result(result)
        else:
            future.set_exception(exc)
