"""LocalUserState: every user of a served version in this process's memory (one process per home).

Observations are learned into the UserTable by the log's commit hook once their group commit made
them durable, in LSN order: log order is learning order, a batch the disk refuses is never
learned, and a checkpoint taken under the learning lock reflects exactly the log prefix up to its
LSN. The acknowledgement path is the log's group commit itself (by the time the log says a batch
is durable, the hook has learned it).

Recovery: the version's trained statistics, then the newest checkpoint of this version in the
user store, then the log after the checkpoint's position.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np

from veloxserve.config import ServingConfig
from veloxserve.learning.user_table import UserTable
from veloxserve.models.version import ModelVersion
from veloxserve.serving.user_state import ErrorsListener, UserState, link_array
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.storage.published_states import PublishedStates
from veloxserve.storage.user_store import Checkpoint, UserStore

log = logging.getLogger(__name__)
_REPLAY_CHUNK = 100_000


class LocalUserState(UserState):
    """A UserTable learned by the log's commit hook and checkpointed to the user store."""

    def __init__(
        self,
        version: ModelVersion,
        store: UserStore,
        obs_log: ObservationLog,
        config: ServingConfig,
        *,
        upto_lsn: int,
        on_errors: ErrorsListener,
        published: PublishedStates | None = None,
    ) -> None:
        """`published`: where this state's weights are published for the reader workers of
        `serve --workers N` (storage/published_states.py), from the end of the recovery on."""
        self.version = version
        self.config = config
        self._store = store
        self._log = obs_log
        self._features = version.features.matrix
        self.table: UserTable = UserTable(
            version.dim,
            version.prior,
            version.link,
            learning_rate=config.learning_rate,
            capacity=len(version.users.ids) + 1024,
        )
        self._learn_lock = threading.Lock()  # the user table, what is logged but not yet learned, applied_lsn
        self._unlearned: deque[tuple[int, list[str], np.ndarray, np.ndarray]] = deque()
        self._checkpoint_lock = threading.Lock()
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._checkpoints_frozen = False
        self.applied_lsn = upto_lsn  # the log prefix this state reflects
        self._published: PublishedStates | None = None
        # Each server publishes into a namespace of its own: a swap to the version already served,
        # or a restarted worker 0, never overwrites what the readers read until the pointer moves.
        self._namespace = f"{version.version}@{secrets.token_hex(4)}"
        self.replayed = self._recover()
        if published is not None:  # everything recovered at once, then each learned batch
            users = list(self.table.rows)
            seen = [self.table.seen_rows(u) for u in users]
            published.replace(self.name, self._namespace, users, self.table.W[list(self.table.rows.values())], seen)
            self._published = published
        obs_log.add_commit_hook(self._on_durable, self._on_refused)

    @property
    def name(self) -> str:
        return self.version.name

    # ---- learning ------------------------------------------------------------------------
    def before_append(self, users: list[str], rows: np.ndarray, scores: np.ndarray) -> np.ndarray | None:
        """Prediction errors of a batch with the weights as they are before it is learned."""
        features = self._features[rows]
        if len(users) == 1:
            z = features @ self.table.weights(users[0])
        else:
            z = np.einsum("ij,ij->i", features, self.table.weights_many(users))
        return scores - link_array(self.version, z)

    def append(self, append: Callable[[], int], users: list[str], rows: np.ndarray, scores: np.ndarray) -> int:
        """Learn a batch just logged (its last LSN) once the log has made it durable: a batch the
        disk refuses is never learned, and the acknowledgement (sent after the commit hooks)
        already reflects it. Queued before the writer's commit hook can look for it."""
        with self._learn_lock:
            lsn = append()
            self._unlearned.append((lsn, users, rows, scores))
        return lsn

    def _on_durable(self, durable_lsn: int) -> None:  # the log's writer thread, after each fsync
        with self._learn_lock:
            unlearned = self._unlearned
            while unlearned and unlearned[0][0] <= durable_lsn:
                lsn, users, rows, scores = unlearned.popleft()
                self._apply(users, rows, scores)
                self.applied_lsn = lsn

    def _on_refused(self, first: int, last: int) -> None:  # the log's writer thread: never learned
        with self._learn_lock:
            self._unlearned = deque(entry for entry in self._unlearned if not first <= entry[0] <= last)

    def _apply(self, users: list[str], rows: np.ndarray, scores: np.ndarray) -> None:
        table = self.table
        if len(users) == 1:
            table.observe(table.ensure(users[0]), self._features, int(rows[0]), float(scores[0]))
        else:
            user_rows = np.fromiter((table.ensure(u) for u in users), dtype=np.int64, count=len(users))
            table.observe_many(user_rows, self._features, rows, scores)
        self._since_checkpoint += len(users)
        published = self._published
        if published is not None:
            changed = list(dict.fromkeys(users))
            weights = table.W[[table.rows[u] for u in changed]]
            seen = [table.seen_rows(u) for u in changed]
            self._to_readers(lambda: published.publish(self.name, self._namespace, changed, weights, seen, len(table)))

    def _to_readers(self, write: Callable[[], None]) -> None:
        """Publish to the reader workers before the batch is acknowledged (or the forget receipted).
        A map that cannot be written would let readers answer without it: the process stops
        instead (nothing acknowledged is lost: the batch is durable and not yet acknowledged), and
        the supervisor restarts it to recover and republish."""
        try:
            write()
        except Exception:
            log.critical("%s: publishing to the reader workers failed; stopping this worker", self.name, exc_info=True)
            logging.shutdown()
            os._exit(70)

    def activated(self) -> None:
        published = self._published
        if published is not None:  # before the switch returns: no reader answers the old state after it
            self._to_readers(lambda: published.activate(self.name, self._namespace))

    def retire(self) -> None:
        self._log.remove_commit_hook(self._on_durable)

    def remove_user(self, user: str) -> bool:
        with self._learn_lock:
            removed = self.table.remove(user)
            published = self._published
            if published is not None:  # readers answer the prior from now on
                self._to_readers(lambda: published.remove(self.name, user))
            return removed

    def learned(self, instance: str, user: str, lsn: int) -> bool:
        return lsn <= self.applied_lsn

    # ---- recovery and swaps --------------------------------------------------------------
    def _recover(self) -> int:
        """Rebuild every user's state: trained statistics, then the checkpoint, then the log tail."""
        self.table.load_trained(self.version.users)
        saved = self._store.checkpoint(self.name)
        version_id = self.version.version
        if saved is not None and saved.version == version_id:
            for user, state in self._store.scan(self.name):
                self.table.restore(user, state)
            after = saved.lsn
        else:
            after = int(self.version.meta.get("log_position", 0))
        if after > self._log.last_lsn:  # the log lost its tail: never reuse the LSNs that state claims
            self._log.reserve_above(after)
            self.applied_lsn = max(self.applied_lsn, after)
        self.table.dirty.clear()
        replayed = self._replay(after, self.applied_lsn)
        states = self.table.take_dirty()
        same_version = saved is not None and saved.version == version_id
        if not same_version or states:
            self._store.write_checkpoint(
                self.name, states, Checkpoint(version_id, self.applied_lsn), replace_all=not same_version
            )
        return replayed

    def catch_up(self, upto_lsn: int) -> int:
        with self._learn_lock:
            replayed = self._replay(self.applied_lsn, upto_lsn)
            self.applied_lsn = max(self.applied_lsn, upto_lsn)
            return replayed

    def _replay(self, after_lsn: int, upto_lsn: int) -> int:
        users: list[str] = []
        rows: list[int] = []
        scores: list[float] = []
        skipped = replayed = 0
        lookup = self.version.catalog.lookup
        low, high = self.version.score_range
        for record in self._log.replay(after_lsn, upto_lsn):
            row = lookup(record.item)
            # An item this version does not know: nothing to learn from it. A score outside the
            # range (logged before scores were bounded, e.g. 1e308): learning it would poison the user.
            if row is None or not low <= record.score <= high:
                skipped += 1
                continue
            users.append(record.user)
            rows.append(row)
            scores.append(record.score)
            if len(users) >= _REPLAY_CHUNK:
                replayed += self._apply_chunk(users, rows, scores)
        replayed += self._apply_chunk(users, rows, scores)
        if skipped:
            log.warning(
                "%s: %d logged observations name items unknown to %s or scores outside its range; skipped",
                self.name,
                skipped,
                self.version.version,
            )
        return replayed

    def _apply_chunk(self, users: list[str], rows: list[int], scores: list[float]) -> int:
        n = len(users)
        if n:
            self._apply(list(users), np.asarray(rows, dtype=np.int64), np.asarray(scores, dtype=np.float64))
            users.clear()
            rows.clear()
            scores.clear()
        return n

    # ---- checkpoints ---------------------------------------------------------------------
    def after_observe(self, added: int) -> None:
        due = self._since_checkpoint >= self.config.checkpoint_every or (
            time.monotonic() - self._last_checkpoint >= self.config.checkpoint_seconds and self._since_checkpoint
        )
        if due and self._checkpoint_lock.acquire(blocking=False):
            threading.Thread(target=self._checkpoint_locked, name=f"checkpoint-{self.name}", daemon=True).start()

    def checkpoint(self) -> int:
        """Write every user changed since the last checkpoint, with the LSN they reflect."""
        with self._checkpoint_lock:
            return self._write_checkpoint()

    def freeze_checkpoints(self) -> None:
        """Stop writing checkpoints (waiting for one in progress). Learning goes on until retired."""
        with self._checkpoint_lock:
            self._checkpoints_frozen = True

    def resume_checkpoints(self) -> None:
        self._checkpoints_frozen = False

    def _checkpoint_locked(self) -> None:
        try:
            self._write_checkpoint()
        except Exception:  # a failed checkpoint loses nothing: the log still holds every observation
            log.exception("%s: checkpoint failed; will retry at the next one", self.name)
        finally:
            self._checkpoint_lock.release()

    def _write_checkpoint(self) -> int:
        if self._checkpoints_frozen:
            return 0
        with self._learn_lock:
            states = self.table.take_dirty()
            lsn = self.applied_lsn
            self._since_checkpoint = 0
            self._last_checkpoint = time.monotonic()
        if not states:
            return 0
        self._log.sync()  # never record a position the log has not made durable
        try:
            self._store.write_checkpoint(self.name, states, Checkpoint(self.version.version, lsn))
        except Exception:
            with self._learn_lock:  # put them back so the next checkpoint writes them
                self.table.dirty.update(self.table.rows[u] for u in states if u in self.table.rows)
            raise
        return len(states)
