"""The acknowledgement path with state shared in Redis: acknowledge an observation once it is
fsynced in this instance's log *and* learned into Redis.

Each process (a server *instance*) logs its observations to its own durable log, then learns
them into Redis in log order by compare-and-set (learning/shared_table.py), and only then
acknowledges them. So an acknowledged observation is both durable and visible to every process.

    observe -> validate -> append to this instance's log (under the model lock, in LSN order)
            -> group commit (fsync) -> Applier, per batch: read the users' states, learn them with
               the compiled kernel, compare-and-set (two pipelined round trips) -> 200

A process killed between the fsync and the update acknowledged nothing; on start every process
replays every instance's log after what Redis says is learned (serving/shared_state.py), and the
per-user, per-instance log positions kept with each user's state make that replay idempotent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from veloxserve.errors import StoreUnavailable
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.storage.redis_client import RetryPolicy

log = logging.getLogger(__name__)
_HINT_SECONDS = 0.5  # how often the applier records how far its log is learned (a lower bound)


class LearnTarget(Protocol):
    """Where the Applier learns a batch: a served version's shared state (serving/shared_state.py)."""

    def learn_now(self, lsns: list[int], users: list[str], rows: np.ndarray, scores: np.ndarray) -> None: ...

    def check_generation(self) -> None: ...

    def raise_hint(self, instance: str, lsn: int) -> None: ...


@dataclass(frozen=True, slots=True)
class _Batch:
    lsn: int  # the batch's last LSN
    users: list[str]
    rows: np.ndarray
    scores: np.ndarray
    target: LearnTarget


class Applier:
    """Learns this instance's durable observations into Redis in log order, then acknowledges them.

    It is what requests wait on instead of the log: `durable_lsn` here is the last LSN both
    fsynced and learned, with the log's `subscribe` / `failure` / `wait_durable` protocol, so
    serving.durability.DurableWaiter works on it unchanged. While Redis fails, waiting requests
    get StoreUnavailable (503) and the batch is retried with the shared RetryPolicy's backoff;
    the observations are in the log, so they are learned once Redis is back. A hung Redis (one
    that never answers) fails them too once an attempt has lasted `deadline` seconds: a watchdog
    thread notices, since the applier's own thread is the one waiting for Redis.
    """

    def __init__(
        self,
        obs_log: ObservationLog,
        instance: str,
        policy: RetryPolicy,
        *,
        deadline: float | None = None,
        where: str = "Redis",
    ) -> None:
        self._log = obs_log
        self._instance = instance
        self._policy = policy
        self._deadline = deadline
        self._where = where
        self._attempt_started: float | None = None  # monotonic time the current learn began
        # Two conditions over one lock: `_cond` for whoever waits on acknowledgements (wait_durable,
        # the watchdog), `_work` for the applier's thread alone, so that the notify of new work can
        # never wake a waiter instead of the thread (which then slept to its next tick, ~0.5 s).
        lock = threading.Lock()
        self._cond = threading.Condition(lock)
        self._work = threading.Condition(lock)
        self._queue: deque[_Batch] = deque()
        self._listeners: list[Callable[[int], None]] = []
        self._applied = obs_log.last_lsn  # recovery learned the whole log before serving
        self._failure: StoreUnavailable | None = None
        self._closed = False
        obs_log.subscribe(self._on_commit)
        self._thread = threading.Thread(target=self._run, name=f"applier-{instance}", daemon=True)
        self._thread.start()
        if deadline is not None:
            threading.Thread(target=self._watchdog, name=f"applier-watchdog-{instance}", daemon=True).start()

    @property
    def durable_lsn(self) -> int:
        return self._applied

    @property
    def failure(self) -> StoreUnavailable | None:
        return self._failure or self._log.failure

    @property
    def redis_failure(self) -> StoreUnavailable | None:
        return self._failure

    def subscribe(self, listener: Callable[[int], None]) -> None:
        self._listeners.append(listener)

    def enqueue(self, lsn: int, users: list[str], rows: np.ndarray, scores: np.ndarray, target: LearnTarget) -> None:
        """A batch just appended to the log (called in LSN order, under the model's lock), to be
        learned into `target` (the served version's shared state) once durable."""
        with self._cond:
            self._queue.append(_Batch(lsn, users, rows, scores, target))
            self._work.notify()

    def refused(self, lsn: int) -> StoreUnavailable | None:
        """Why `lsn` is not acknowledged: its batch was refused by the disk, or Redis is failing."""
        return self._log.refused(lsn) or self._failure

    def wait_durable(self, lsn: int, timeout: float | None = None) -> int:
        with self._cond:
            done = self._cond.wait_for(lambda: self._applied >= lsn or self.refused(lsn) is not None, timeout)
        if self._applied >= lsn:
            return self._applied
        refused = self.refused(lsn)
        if not done or refused is None:
            raise StoreUnavailable(f"Observation {lsn} was not learned into Redis within {timeout} s.")
        raise refused

    def _on_commit(self, lsn: int) -> None:  # the log's writer thread, after each fsync
        if lsn < 0:
            self._publish(-1)
        with self._work:
            self._work.notify()

    def _ready(self) -> list[_Batch]:
        if self._log.write_failures:  # a batch the disk refused is never learned (its waiters got 503/507)
            refused = self._log.refused
            self._queue = deque(entry for entry in self._queue if refused(entry.lsn) is None)
        durable = self._log.durable_lsn
        return [entry for entry in self._queue if entry.lsn <= durable]

    def _run(self) -> None:
        failures, last_hint = 0, 0.0
        while True:
            with self._work:
                self._work.wait_for(lambda: self._closed or self._ready(), timeout=_HINT_SECONDS)
                batch = self._ready()
                if self._closed and not batch:
                    break
            if not batch:
                continue
            self._attempt_started = time.monotonic()
            try:
                hint = time.monotonic() - last_hint >= _HINT_SECONDS
                if hint:
                    batch[-1].target.check_generation()  # does Redis still hold what was learned?
                self._learn(batch)
                if hint:
                    batch[-1].target.raise_hint(self._instance, batch[-1].lsn)
                    last_hint = time.monotonic()
            except StoreUnavailable as exc:
                self._attempt_started = None
                failures += 1
                if failures == 1:
                    log.error("%s", exc.message)
                with self._cond:
                    self._failure = exc
                self._publish(-1)
                self._policy.pause(failures)
                continue
            if failures:
                log.info("Redis is back: learning resumed after %d failed attempts", failures)
            failures = 0
            self._attempt_started = None
            with self._cond:
                for _ in batch:
                    self._queue.popleft()
                self._applied, self._failure = batch[-1].lsn, None
                self._cond.notify_all()
            self._publish(batch[-1].lsn)
        if self._queue:
            log.warning(
                "%d observation batches not learned into Redis at shutdown; they are in the log and "
                "will be learned at the next start",
                len(self._queue),
            )

    def _watchdog(self) -> None:
        """Fail the waiters of an attempt that has waited for Redis past the deadline (they get
        503 at the documented bound, not after every timeout and retry of every command)."""
        assert self._deadline is not None
        while True:
            with self._cond:
                if self._closed:
                    return
                self._cond.wait(self._deadline / 8)
                started = self._attempt_started
                overdue = started is not None and self._failure is None and time.monotonic() - started > self._deadline
                failure = None
                if overdue:
                    failure = self._failure = StoreUnavailable(
                        f"{self._where} did not answer within {self._deadline} s while learning observations. "
                        "They are logged, not acknowledged, and learned once it answers; retry after Retry-After."
                    )
                    self._cond.notify_all()  # synchronous wait_durable callers
            if failure is not None:
                log.error("%s", failure.message)
                self._publish(-1)

    def _learn(self, batch: list[_Batch]) -> None:
        """One learn per target (a swap may leave batches for two versions in the queue)."""
        start = 0
        while start < len(batch):
            target = batch[start].target
            end = start
            lsns: list[int] = []
            users: list[str] = []
            rows: list[np.ndarray] = []
            scores: list[np.ndarray] = []
            while end < len(batch) and batch[end].target is target:
                entry = batch[end]
                lsns.extend(range(entry.lsn - len(entry.users) + 1, entry.lsn + 1))
                users.extend(entry.users)
                rows.append(entry.rows)
                scores.append(entry.scores)
                end += 1
            target.learn_now(lsns, users, np.concatenate(rows), np.concatenate(scores))
            start = end

    def _publish(self, lsn: int) -> None:
        for listener in self._listeners:
            listener(lsn)

    def close(self, timeout: float = 10.0) -> None:
        """Learn what is durable and queued (waiting up to `timeout` for Redis), then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._work.notify_all()
        self._thread.join(timeout)
