"""SharedUserTable: the users' online state kept in Redis, learned atomically by a Lua script.

Several server processes serve one model over one Redis. Each observation is learned inside
Redis by `shared_update.lua`, the same Sherman–Morrison update as the compiled kernel, on the
user's state in one atomic step, so two processes learning the same user at once never lose an
update (Redis runs one script at a time). bench/bench_scaleout.py measured this against routing
each user to an owner process; docs/storage.md says why this won.

Replays are idempotent: each user's hash remembers, per server instance, the last log position
of that instance already learned for the user (`@<instance>`), and an instance learns its own
log in log order. So any process may replay any instance's log (after a crash, or into a new
version's namespace) without learning an observation twice. Users Redis has not seen yet are
read from the version's trained statistics (`baseline`), and start from them on first update.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from veloxserve.errors import StoreUnavailable
from veloxserve.learning.user_table import UserTable
from veloxserve.models.version import Link
from veloxserve.storage.redis_store import STATE, RedisUserStore

_UPDATE = (Path(__file__).with_name("shared_update.lua")).read_text()
_RAISE_HINT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (not current) or tonumber(current) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""
_HEADER = 28  # UserTable's state header: magic, k, count, number of seen items


class SharedUserTable:
    """The read side of UserTable (weights, covariance, seen items) over Redis, plus `learn`."""

    def __init__(self, store: RedisUserStore, namespace: str, baseline: UserTable) -> None:
        self.store = store
        self.namespace = namespace
        self.baseline = baseline  # the version's trained statistics; never changed here
        self.dim = baseline.dim
        self._client = store.client
        self._known: set[str] = set()  # users this process has seen exist in Redis
        self._link = "l" if baseline.link is Link.LOGISTIC else "i"
        prior = baseline.prior
        self._sgd = (repr(baseline.learning_rate), (prior.precision / 100.0).tobytes(), prior.mean.tobytes())
        empty = UserTable(self.dim, prior, baseline.link, capacity=1)
        self._prior_state = empty.encode(empty.ensure("prior"))
        self.dirty: set[int] = set()  # nothing to checkpoint: Redis is the state

    def _key(self, user: str) -> str:
        return self.store.user_key(self.namespace, user)

    def __len__(self) -> int:
        with self.store.unavailable("counting users"):
            return len(self.baseline) + int(self._client.scard(self.store.key(self.namespace, "new_users")))

    # ---- reading -------------------------------------------------------------------------
    def weights(self, user: str) -> np.ndarray:
        with self.store.unavailable("reading a user's weights"):
            raw = self._client.hget(self._key(user), "w")
        return self.baseline.weights(user) if raw is None else np.frombuffer(raw, dtype=np.float64)

    def weights_many(self, users: Sequence[str]) -> np.ndarray:
        with self.store.unavailable("reading users' weights"):
            pipe = self._client.pipeline(transaction=False)
            for user in users:
                pipe.hget(self._key(user), "w")
            raws = pipe.execute()
        out = self.baseline.weights_many(users)
        for i, raw in enumerate(raws):
            if raw is not None:
                out[i] = np.frombuffer(raw, dtype=np.float64)
        return out

    def _state(self, user: str) -> bytes | None:
        with self.store.unavailable("reading a user's state"):
            return self._client.hget(self._key(user), STATE)

    def covariance(self, user: str) -> np.ndarray:
        state = self._state(user)
        if state is None:
            return self.baseline.covariance(user)
        k = self.dim
        return np.frombuffer(state, dtype=np.float64, offset=_HEADER, count=k * k).reshape(k, k)

    def seen_rows(self, user: str) -> np.ndarray:
        state = self._state(user)
        if state is None:
            return self.baseline.seen_rows(user)
        k = self.dim
        return np.frombuffer(state, dtype=np.int64, offset=_HEADER + 8 * (k * k + 2 * k))

    def initial_state(self, user: str) -> bytes:
        row = self.baseline.rows.get(user)
        return self._prior_state if row is None else self.baseline.encode(row)

    # ---- learning ------------------------------------------------------------------------
    def learn(self, instance: str, lsns: Iterable[int], users: Sequence[str], rows: np.ndarray,
              scores: np.ndarray, features: np.ndarray) -> int:
        """Learn observations of `instance`'s log in one round trip, in log order; returns how many
        were new (a replay of already learned ones counts 0). StoreUnavailable if Redis fails."""
        mark = f"@{instance}"
        rate, reg, prior = self._sgd
        fresh = [u for u in dict.fromkeys(users) if u not in self._known and u not in self.baseline.rows]
        commands = []
        started: set[str] = set()
        for lsn, user, row, y in zip(lsns, users, rows.tolist(), scores.tolist()):
            init = b""
            if user not in self._known and user not in started:  # first of the batch for this user
                init, _ = self.initial_state(user), started.add(user)
            commands.append((self._key(user), mark, lsn, row, np.float64(y).tobytes(), features[row].tobytes(),
                             init, self._link, rate, reg, prior))
        results = self.store.run_script(_UPDATE, commands, "learning observations")
        if fresh:
            self.store.add_to_set(self.store.key(self.namespace, "new_users"), fresh)
        missing = [users[i] for i, r in enumerate(results) if r == -1]
        if missing:  # Redis lost state it had (flushed, or restarted without persistence)
            self._known.difference_update(missing)
            raise StoreUnavailable(
                f"Redis at {self.store.settings.where} lost the state of {len(missing)} users (e.g. {missing[0]!r}): "
                "it restarted without its data. Restart the servers: they rebuild it from the observation logs."
            )
        self._known.update(users)
        return sum(1 for r in results if r == 1)

    # ---- how far each instance's log is learned ---------------------------------------------
    def hints(self) -> dict[str, int]:
        """instance -> an LSN such that all of its log up to it is learned (a lower bound)."""
        with self.store.unavailable("reading log positions"):
            raw = self._client.hgetall(self.store.key(self.namespace, "learned"))
        return {k.decode(): int(v) for k, v in raw.items()}

    def raise_hint(self, instance: str, lsn: int) -> None:
        self.store.run_script(_RAISE_HINT, [(self.store.key(self.namespace, "learned"), instance, lsn)],
                              "recording a log position")
