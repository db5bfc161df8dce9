"""SharedUserTable: the users' online state kept in Redis, updated atomically by compare-and-set.

Several server processes serve one model over one Redis. To learn a batch, a process reads the
states of the batch's users, applies the observations with the same compiled Sherman–Morrison
kernel as a single process, and writes each changed state back with a tiny Lua script that
succeeds only if the user's version has not moved since the read (compare-and-set, one atomic
step in Redis). A user another process changed meanwhile is read and learned again, so two
processes learning the same user at once never lose an update. bench/bench_scaleout.py measured
this against doing the whole update in a Lua script inside Redis (Redis's single core then does
O(k²) interpreted work per observation: ~1 ms at rank 50) and against routing each user to an
owner process; docs/storage.md says why this won.

Replays are idempotent: each user's hash remembers, per server instance, the last log position
of that instance already learned for the user (`@<instance>`), and an instance learns its own
log in log order. So any process may replay any instance's log (after a crash, or into a new
version's namespace) without learning an observation twice. Users Redis has not seen yet are
read from the version's trained statistics (`baseline`), and start from them on first update.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from veloxserve.errors import StoreUnavailable
from veloxserve.learning.user_table import UserTable, state_covariance, state_seen
from veloxserve.models.version import Link, sigmoid
from veloxserve.storage.redis_states import GENERATION_LOST, WRITTEN, RedisStateSpace, UserWrite

MAX_ATTEMPTS = 1000  # compare-and-set rounds before giving up on a user someone updates non-stop


class StateSpaces(Protocol):
    """Where shared states live: storage.redis_store.RedisUserStore."""

    def state_space(self, namespace: str) -> RedisStateSpace: ...


class SharedUserTable:
    """The read side of UserTable (weights, covariance, seen items) over Redis, plus `learn`."""

    def __init__(self, store: StateSpaces, namespace: str, baseline: UserTable) -> None:
        self.store = store
        self.namespace = namespace
        self.baseline = baseline  # the version's trained statistics; never changed here
        self.dim = baseline.dim
        self._space = store.state_space(namespace)
        self.generation = b""
        self.lost: StoreUnavailable | None = None  # set once Redis is found to have lost this generation
        self._open_generation()
        self._count = 0
        self.refresh_count()

    def _open_generation(self) -> None:
        """Join the namespace's generation, or start one if Redis has none (a new namespace, or
        Redis lost its data). States and marks of another generation count as absent, so after
        a loss the servers rebuild every user from the logs instead of trusting what is left.
        Generations sort by Redis's clock: a process still on a lost one cannot overwrite a
        rebuilt user (its compare-and-set answers GENERATION_LOST and it finds itself lost), and
        the first write of a generation to a user drops the old generation's log marks."""
        self.generation = self._space.open_generation()

    def check_generation(self) -> None:
        """StoreUnavailable if Redis no longer holds this generation: it lost its data."""
        if self._space.generation() != self.generation:
            self._mark_lost()

    def _mark_lost(self) -> None:
        self.lost = StoreUnavailable(
            f"Redis at {self._space.settings.where} lost the users' state of {self.namespace} (restarted without "
            "persistence, or flushed). The server rebuilds every user from the trained statistics and the "
            "observation logs and answers 503 meanwhile. Run Redis with appendonly yes."
        )
        raise self.lost

    def _check_absent_is_new(self) -> None:
        """A user without a state of this generation is served its trained statistics, unless Redis
        lost the generation: then every user looks absent. One more round trip, only for such users,
        so that the trained defaults are never served as if they were state (no window until the
        watch notices)."""
        self.check_generation()

    def _check_kept(self) -> None:
        """Once the state is known lost, answer 503 saying so: never the trained defaults as if
        they were the users' state."""
        if self.lost is not None:
            raise self.lost

    def remove(self, user: str) -> bool:
        """Forget a user here: their trained statistics and their state in Redis."""
        in_memory = self.baseline.remove(user)
        return self._space.remove(user) or in_memory

    def __len__(self) -> int:
        """Users with a state, as last known (no Redis call: /models and /metrics must not wait
        for it): this process's new users at once, other processes' after `refresh_count`."""
        return len(self.baseline) + self._count

    def refresh_count(self) -> None:
        """Re-read how many users other than the trained ones Redis holds (serving/redis_watch.py)."""
        self._count = self._space.count_new_users()

    # ---- reading -------------------------------------------------------------------------
    def weights(self, user: str) -> np.ndarray:
        self._check_kept()
        ((raw, generation),) = self._space.weights([user])
        if generation != self.generation or raw is None:
            self._check_absent_is_new()
            return self.baseline.weights(user)
        return np.frombuffer(raw, dtype=np.float64)

    def weights_many(self, users: Sequence[str]) -> np.ndarray:
        self._check_kept()
        found = self._space.weights(users)
        out = self.baseline.weights_many(users)
        mine = self.generation
        for i, (raw, generation) in enumerate(found):
            if generation == mine and raw is not None:
                out[i] = np.frombuffer(raw, dtype=np.float64)
        if any(generation != mine for _, generation in found):
            self._check_absent_is_new()
        return out

    def _state(self, user: str) -> bytes | None:
        self._check_kept()
        ((state, generation),) = self._space.states([user])
        if generation != self.generation:
            self._check_absent_is_new()
            return None
        return state

    def covariance(self, user: str) -> np.ndarray:
        state = self._state(user)
        return self.baseline.covariance(user) if state is None else state_covariance(state, self.dim)

    def seen_rows(self, user: str) -> np.ndarray:
        state = self._state(user)
        return self.baseline.seen_rows(user) if state is None else state_seen(state, self.dim)

    # ---- learning ------------------------------------------------------------------------
    def learn(
        self,
        instance: str,
        lsns: Sequence[int],
        users: Sequence[str],
        rows: np.ndarray,
        scores: np.ndarray,
        features: np.ndarray,
    ) -> np.ndarray:
        """Learn observations of `instance`'s log, in log order. Returns the prequential errors
        (y minus the prediction before learning the batch) of those that were new: a replay of
        already learned ones returns none. Two round trips per batch unless another process
        changed one of its users meanwhile. StoreUnavailable if Redis fails."""
        self._check_kept()
        pending = np.arange(len(users))
        errors = []
        for _ in range(MAX_ATTEMPTS):
            done, learned = self._learn_once(instance, lsns, users, rows, scores, features, pending)
            errors.append(learned)
            pending = pending[~np.isin([users[int(i)] for i in pending], list(done))]
            if pending.size == 0:
                return np.concatenate(errors)
        raise StoreUnavailable(
            f"Could not update user {users[int(pending[0])]!r} in Redis after {MAX_ATTEMPTS} "
            "attempts: other processes change it continuously."
        )

    def _learn_once(
        self,
        instance: str,
        lsns: Sequence[int],
        users: Sequence[str],
        rows: np.ndarray,
        scores: np.ndarray,
        features: np.ndarray,
        todo: np.ndarray,
    ) -> tuple[set[str], np.ndarray]:
        """Read, learn locally, compare-and-set; returns the users done (written, or nothing to
        learn) and the prequential errors of the observations written."""
        distinct = list(dict.fromkeys(users[i] for i in todo.tolist()))
        found = self._space.for_update(distinct, instance)
        local = UserTable(
            self.dim,
            self.baseline.prior,
            self.baseline.link,
            learning_rate=self.baseline.learning_rate,
            capacity=len(distinct),
        )
        versions, marks = {}, {}
        for user, stored in zip(distinct, found):
            current = stored.generation == self.generation  # else absent, or left from a generation Redis lost
            if current and stored.state is not None:
                local.restore(user, stored.state)
            elif user in self.baseline.rows:  # first update of a trained user: from its trained statistics
                local.restore(user, self.baseline.encode(self.baseline.rows[user]))
            else:  # a new user: from the prior
                local.ensure(user)
            versions[user], marks[user] = stored.version, stored.mark if current else 0
        fresh = [u for u in distinct if versions[u] == 0 and u not in self.baseline.rows]
        keep = [i for i in todo.tolist() if lsns[i] > marks[users[i]]]  # the rest are already learned
        new_marks = {users[i]: lsns[i] for i in keep}
        local_rows = np.fromiter((local.rows[users[i]] for i in keep), dtype=np.int64, count=len(keep))
        z = np.einsum("ij,ij->i", features[rows[keep]], local.W[local_rows])
        errors = scores[keep] - (z if self.baseline.link is Link.IDENTITY else sigmoid(z))
        if keep:
            local.observe_many(local_rows, features, rows[keep], scores[keep])
        changed = list(new_marks)
        results = self._space.compare_and_set(
            [
                UserWrite(u, versions[u], local.encode(local.rows[u]), local.W[local.rows[u]].tobytes(), new_marks[u])
                for u in changed
            ],
            instance,
            self.generation,
        )
        if any(ok == GENERATION_LOST for ok in results):
            self._mark_lost()
        written = {u for u, ok in zip(changed, results) if ok == WRITTEN}
        fresh = [u for u in fresh if u in written]
        if fresh:
            self._count += self._space.add_new_users(fresh)
        done = written | (set(distinct) - set(changed))
        return done, errors[np.fromiter((users[i] in written for i in keep), dtype=bool, count=len(keep))]

    # ---- how far each instance's log is learned ---------------------------------------------
    def learned(self, instance: str, user: str, lsn: int) -> bool:
        """Is `instance`'s observation `lsn` of `user` learned: the user's mark for that instance, or
        the instance's hint, has reached it (serving/idempotency: a retry answered at another process)."""
        mark, generation = self._space.mark(user, instance)
        if generation == self.generation and mark is not None and mark >= lsn:
            return True
        return self.hints().get(instance, 0) >= lsn

    def hints(self) -> dict[str, int]:
        """instance -> an LSN such that all of its log up to it is learned (a lower bound)."""
        return self._space.hints(self.generation)

    def raise_hint(self, instance: str, lsn: int) -> None:
        self._space.raise_hint(self.generation, instance, lsn)
