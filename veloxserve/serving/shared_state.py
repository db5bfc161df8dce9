"""SharedUserState: a served version's users' state in Redis, shared by several server processes.

The state is a SharedUserTable (learning/shared_table.py): this process learns its own logged
observations into it through the Applier (serving/applier.py), which is also what they wait on
before they are acknowledged. At start, and after Redis lost the state, every instance's log is
learned into it after what Redis says is learned; per-user, per-instance log marks make that
replay idempotent. Redis holds the state, so there is nothing to checkpoint.

A version switch (coordinated by serving/coordination.py) builds the new version's namespace the
same way in every process; each then catches up on its own observations logged meanwhile (the
old version learned them into its namespace), so none acknowledged before the switch is missing.

A forgotten user (`forgotten`, the model's set, kept by the backend as Redis's forgotten set
says) is never learned again here: not from a batch queued before the forget reached this
process, nor from a replay of a log not yet erased.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from veloxserve.config import ServingConfig
from veloxserve.learning.shared_table import SharedUserTable, StateSpaces
from veloxserve.learning.user_table import UserTable
from veloxserve.models.version import ModelVersion
from veloxserve.serving.applier import Applier
from veloxserve.serving.user_state import ErrorsListener, UserState
from veloxserve.storage.observation_log import MAIN_INSTANCE, ObservationLog, ObservationRecord, instance_logs, read_log

log = logging.getLogger(__name__)
_REPLAY_CHUNK = 2_000


def namespace(model: str, version: str) -> str:
    """Where a version's users' state lives in Redis."""
    return f"{model}/{version}"


class SharedUserState(UserState):
    """Learned into Redis by the Applier; recovered from every instance's log."""

    def __init__(
        self,
        version: ModelVersion,
        store: StateSpaces,
        obs_log: ObservationLog,
        config: ServingConfig,
        *,
        upto_lsn: int,
        on_errors: ErrorsListener,
        instance: str,
        applier: Applier,
        log_root: Path,
        forgotten: set[str],
    ) -> None:
        """`log_root`: the model's log directory, holding every instance's log."""
        self._forgotten = forgotten
        self.version = version
        self.instance = instance
        self._log = obs_log
        self._log_root = log_root
        self._applier = applier
        self._on_errors = on_errors
        self._features = version.features.matrix
        baseline = UserTable(
            version.dim,
            version.prior,
            version.link,
            learning_rate=config.learning_rate,
            capacity=len(version.users.ids) + 1024,
        )
        baseline.load_trained(version.users)
        self.table: SharedUserTable = SharedUserTable(store, namespace(version.name, version.version), baseline)
        self.replayed = self._learn_logs(self.table, upto_lsn)
        self._own_upto = upto_lsn  # this process's log learned up to here by the replay

    @property
    def name(self) -> str:
        return self.version.name

    # ---- the applier's side --------------------------------------------------------------
    def before_append(self, users: list[str], rows: np.ndarray, scores: np.ndarray) -> np.ndarray | None:
        """Prequential errors come from the Applier as it learns (it holds the states before the
        batch); here only refuse, before logging, while Redis is known to be failing."""
        if self._applier.redis_failure is not None:  # the log refuses for itself, and notices when it heals
            raise self._applier.redis_failure
        return None

    def append(self, append: Callable[[], int], users: list[str], rows: np.ndarray, scores: np.ndarray) -> int:
        lsn = append()
        self._applier.enqueue(lsn, users, rows, scores, self)
        return lsn

    def learn_now(self, lsns: list[int], users: list[str], rows: np.ndarray, scores: np.ndarray) -> None:
        """Learn logged observations of this instance into Redis (the Applier's thread)."""
        if self._forgotten and any(u in self._forgotten for u in users):
            keep = np.array([u not in self._forgotten for u in users])
            lsns, users = [n for n, k in zip(lsns, keep) if k], [u for u, k in zip(users, keep) if k]
            rows, scores = rows[keep], scores[keep]
            if not users:
                return
        errors = self.table.learn(self.instance, lsns, users, rows, scores, self._features)
        if errors.size:
            self._on_errors(errors)

    def check_generation(self) -> None:
        self.table.check_generation()

    def raise_hint(self, instance: str, lsn: int) -> None:
        self.table.raise_hint(instance, lsn)

    def learned(self, instance: str, user: str, lsn: int) -> bool:
        return self.table.learned(instance, user, lsn)

    # Redis holds the state: nothing to checkpoint.
    def after_observe(self, added: int) -> None:
        pass

    def checkpoint(self) -> int:
        return 0

    def freeze_checkpoints(self) -> None:
        pass

    def resume_checkpoints(self) -> None:
        pass

    # ---- recovery ------------------------------------------------------------------------
    def catch_up(self, upto_lsn: int) -> int:
        """This process's observations logged while the version was built, up to `upto_lsn` (the
        swap holds the old server's lock). Other processes learn theirs: each swaps too, and its
        replay reads its own log after what Redis says it learned."""
        records = read_log(self._log.directory, self._own_upto, upto_lsn)
        replayed = self._replay_into(self.table, self.instance, records)
        self._own_upto = max(self._own_upto, upto_lsn)
        return replayed

    def activated(self) -> None:
        pass  # the switch moved the active pointer in Redis (serving/coordination.py)

    def retire(self) -> None:
        """Batches still queued in the Applier are learned into this version's namespace."""

    def remove_user(self, user: str) -> bool:
        """Forget a user (already in the forgotten set): trained statistics here, state in Redis."""
        return self.table.remove(user)

    def rebuild_lost_state(self) -> int:
        """Redis lost this namespace's state (serving/redis_watch.py found it): join or start a
        new generation and learn every instance's log into it, as a restart would. No lock is
        held (an observation takes the serving lock on the event loop): meanwhile predictions
        answer 503 from the lost table and the applier cannot learn into it, so its batches wait;
        once the new table is in place they go there, and the replay's marks skip what it learned."""
        table = SharedUserTable(self.table.store, self.table.namespace, self.table.baseline)
        replayed = self._learn_logs(table, self._log.sync())
        self.table = table
        log.warning(
            "%s: rebuilt users' state in Redis from the logs after it was lost (%d observations)", self.name, replayed
        )
        return replayed

    def _learn_logs(self, table: SharedUserTable, own_upto: int) -> int:
        meta = self.version.meta
        trained_upto = {**meta.get("log_positions", {}), MAIN_INSTANCE: int(meta.get("log_position", 0))}
        learned = table.hints()
        replayed = 0
        for instance, directory in instance_logs(self._log_root):
            after = max(trained_upto.get(instance, 0), learned.get(instance, 0))
            upto = own_upto if instance == self.instance else None
            replayed += self._replay_into(table, instance, read_log(directory, after, upto))
        return replayed

    def _replay_into(self, table: SharedUserTable, instance: str, records: Iterable[ObservationRecord]) -> int:
        learned, chunk = 0, []
        for record in records:
            chunk.append(record)
            if len(chunk) >= _REPLAY_CHUNK:
                learned += self._learn_records(table, instance, chunk)
                chunk = []
        return learned + (self._learn_records(table, instance, chunk) if chunk else 0)

    def _learn_records(self, table: SharedUserTable, instance: str, records: list[ObservationRecord]) -> int:
        lookup = self.version.catalog.lookup
        forgotten = self._forgotten
        known = [  # unknown items: nothing to learn; forgotten users: never again
            (r, row) for r in records if (row := lookup(r.item)) is not None and r.user not in forgotten
        ]
        learned = (
            table.learn(
                instance,
                [r.lsn for r, _ in known],
                [r.user for r, _ in known],
                np.array([row for _, row in known], dtype=np.int64),
                np.array([r.score for r, _ in known]),
                self._features,
            ).size
            if known
            else 0
        )
        table.raise_hint(instance, records[-1].lsn)
        return learned
