"""Serving one model from several processes over one Redis: the state lives in Redis, not here.

Each process (a server *instance*) logs its observations to its own durable log, then learns
them into Redis in log order by compare-and-set (learning/shared_table.py), and only then
acknowledges them. So an acknowledged observation is both durable and visible to every process.

    observe -> validate -> append to this instance's log (under the model lock, in LSN order)
            -> group commit (fsync) -> Applier, per batch: read the users' states, learn them with
               the compiled kernel, compare-and-set (two pipelined round trips) -> 200

A process killed between the fsync and the update acknowledged nothing; on start every process
replays every instance's log after what Redis says is learned, and the per-user, per-instance
log positions kept with each user's state make that replay idempotent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from veloxserve.errors import StoreUnavailable
from veloxserve.learning.shared_table import SharedUserTable
from veloxserve.serving.model_server import ModelServer
from veloxserve.storage.observation_log import MAIN_INSTANCE, ObservationLog, ObservationRecord, instance_logs, read_log
from veloxserve.storage.redis_client import RetryPolicy

log = logging.getLogger(__name__)
_REPLAY_CHUNK = 2_000
_HINT_SECONDS = 0.5  # how often the applier records how far its log is learned (a lower bound)


class SharedModelServer(ModelServer):
    """A ModelServer whose users' state is a SharedUserTable; learning goes through the Applier."""

    def __init__(self, *args, instance: str, applier: Applier, log_root: Path, **kwargs) -> None:
        self.instance = instance
        self._log_root = log_root  # the model's log directory, holding every instance's log
        self._applier = applier
        super().__init__(*args, **kwargs)

    def _recover(self) -> int:
        """Trained statistics as the baseline, then every instance's log after what Redis holds."""
        self.users.load_trained(self.version.users)
        self.users = SharedUserTable(self._store, f"{self.name}/{self.version_id}", self.users)
        return self._learn_logs(self.users, self.applied_lsn)

    def rebuild_lost_state(self) -> int:
        """Redis lost this namespace's state (serving/redis_watch.py found it): join or start a
        new generation and learn every instance's log into it, as a restart would. No lock is
        held (an observation takes the serving lock on the event loop): meanwhile predictions
        answer 503 from the lost table and the applier cannot learn into it, so its batches wait;
        once the new table is in place they go there, and the replay's marks skip what it learned."""
        table = SharedUserTable(self._store, self.users.namespace, self.users.baseline)
        replayed = self._learn_logs(table, self._log.sync())
        self.users = table
        log.warning("%s: rebuilt users' state in Redis from the logs after it was lost (%d observations)",
                    self.name, replayed)
        return replayed

    def _learn_logs(self, table: SharedUserTable, own_upto: int) -> int:
        meta = self.version.meta
        trained_upto = {**meta.get("log_positions", {}), MAIN_INSTANCE: int(meta.get("log_position", 0))}
        learned = table.hints()
        replayed = 0
        for instance, directory in instance_logs(self._log_root):
            after = max(trained_upto.get(instance, 0), learned.get(instance, 0))
            upto = own_upto if instance == self.instance else None
            replayed += self._replay_into_redis(table, instance, read_log(directory, after, upto))
        return replayed

    def _replay_into_redis(self, table: SharedUserTable, instance: str, records: Iterable[ObservationRecord]) -> int:
        learned, chunk = 0, []
        for record in records:
            chunk.append(record)
            if len(chunk) >= _REPLAY_CHUNK:
                learned += self._learn_records(table, instance, chunk)
                chunk = []
        return learned + (self._learn_records(table, instance, chunk) if chunk else 0)

    def _learn_records(self, table: SharedUserTable, instance: str, records: list[ObservationRecord]) -> int:
        lookup = self._catalog.lookup
        known = [(r, row) for r in records if (row := lookup(r.item)) is not None]  # unknown items: nothing to learn
        learned = table.learn(
            instance, [r.lsn for r, _ in known], [r.user for r, _ in known],
            np.array([row for _, row in known], dtype=np.int64), np.array([r.score for r, _ in known]), self._features,
        ).size if known else 0
        table.raise_hint(instance, records[-1].lsn)
        return learned

    def _prequential_errors(self, users: list[str], rows: np.ndarray, scores: np.ndarray) -> None:
        """Computed by the Applier as it learns (it holds the states before the batch); here only
        refuse, before logging, while Redis is known to be failing."""
        if self._applier.redis_failure is not None:  # the log refuses for itself, and notices when it heals
            raise self._applier.redis_failure

    def _learn(self, lsn: int, users: list[str], rows: np.ndarray, scores: np.ndarray) -> None:
        self._applier.enqueue(lsn, users, rows, scores, self)

    def learn_now(self, lsns: list[int], users: list[str], rows: np.ndarray, scores: np.ndarray) -> None:
        """Learn logged observations of this instance into Redis (the Applier's thread)."""
        errors = self.users.learn(self.instance, lsns, users, rows, scores, self._features)
        if errors.size:
            self.record_feedback(errors)

    # Redis holds the state: nothing to checkpoint.
    def _maybe_checkpoint(self, added: int) -> None:
        pass

    def checkpoint(self) -> int:
        return 0


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

    def __init__(self, obs_log: ObservationLog, instance: str, policy: RetryPolicy, *,
                 deadline: float | None = None, where: str = "Redis") -> None:
        self._log = obs_log
        self._instance = instance
        self._policy = policy
        self._deadline = deadline
        self._where = where
        self._attempt_started: float | None = None  # monotonic time the current learn began
        self._cond = threading.Condition()
        self._queue: deque[tuple] = deque()
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

    def enqueue(self, lsn: int, users: list[str], rows: np.ndarray, scores: np.ndarray,
                server: SharedModelServer) -> None:
        """A batch just appended to the log (called in LSN order, under the model's lock)."""
        with self._cond:
            self._queue.append((lsn, users, rows, scores, server))
            self._cond.notify()

    def refused(self, lsn: int) -> StoreUnavailable | None:
        """Why `lsn` is not acknowledged: its batch was refused by the disk, or Redis is failing."""
        return self._log.refused(lsn) or self._failure

    def wait_durable(self, lsn: int, timeout: float | None = None) -> int:
        with self._cond:
            done = self._cond.wait_for(lambda: self._applied >= lsn or self.refused(lsn) is not None, timeout)
        if self._applied >= lsn:
            return self._applied
        if not done:
            raise StoreUnavailable(f"Observation {lsn} was not learned into Redis within {timeout} s.")
        raise self.refused(lsn)  # type: ignore[misc]

    def _on_commit(self, lsn: int) -> None:  # the log's writer thread, after each fsync
        if lsn < 0:
            self._publish(-1)
        with self._cond:
            self._cond.notify()

    def _ready(self) -> list[tuple]:
        if self._log.write_failures:  # a batch the disk refused is never learned (its waiters got 503/507)
            refused = self._log.refused
            self._queue = deque(entry for entry in self._queue if refused(entry[0]) is None)
        durable = self._log.durable_lsn
        return [entry for entry in self._queue if entry[0] <= durable]

    def _run(self) -> None:
        failures, last_hint = 0, 0.0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._ready(), timeout=_HINT_SECONDS)
                batch = self._ready()
                if self._closed and not batch:
                    break
            if not batch:
                continue
            self._attempt_started = time.monotonic()
            try:
                hint = time.monotonic() - last_hint >= _HINT_SECONDS
                if hint:
                    batch[-1][4].users.check_generation()  # does Redis still hold what was learned?
                self._learn(batch)
                if hint:
                    batch[-1][4].users.raise_hint(self._instance, batch[-1][0])
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
                self._applied, self._failure = batch[-1][0], None
                self._cond.notify_all()
            self._publish(batch[-1][0])
        if self._queue:
            log.warning("%d observation batches not learned into Redis at shutdown; they are in the log and "
                        "will be learned at the next start", len(self._queue))

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
                overdue = (started is not None and self._failure is None
                           and time.monotonic() - started > self._deadline)
                if overdue:
                    self._failure = StoreUnavailable(
                        f"{self._where} did not answer within {self._deadline} s while learning observations. "
                        "They are logged, not acknowledged, and learned once it answers; retry after Retry-After.")
                    self._cond.notify_all()  # synchronous wait_durable callers
            if overdue:
                log.error("%s", self._failure.message)
                self._publish(-1)

    def _learn(self, batch: list[tuple]) -> None:
        """One learn per server (a swap may leave batches for two versions in the queue)."""
        start = 0
        while start < len(batch):
            server = batch[start][4]
            end = start
            lsns, users, rows, scores = [], [], [], []
            while end < len(batch) and batch[end][4] is server:
                lsn, u, r, s = batch[end][:4]
                lsns.extend(range(lsn - len(u) + 1, lsn + 1))
                users.extend(u), rows.append(r), scores.append(s)
                end += 1
            server.learn_now(lsns, users, np.concatenate(rows), np.concatenate(scores))
            start = end

    def _publish(self, lsn: int) -> None:
        for listener in self._listeners:
            listener(lsn)

    def close(self, timeout: float = 10.0) -> None:
        """Learn what is durable and queued (waiting up to `timeout` for Redis), then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
