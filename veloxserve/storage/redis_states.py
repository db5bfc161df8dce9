"""RedisStateSpace: the Redis side of users' state shared by several processes (one namespace).

The learner (learning/shared_table.py) decides what to learn; this module knows where it lives in
Redis and how it is read and written: one hash per user (the store's key, hash-tagged by user)
holding the state bytes, the weights, a version for compare-and-set, the generation the state
belongs to and, per server instance, the last log position learned for the user; a generation
key; a set of the users Redis holds beyond the trained ones; and per generation a hash of how far
each instance's log is learned (hints). Every driver error becomes StoreUnavailable here.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from veloxserve.storage.redis_cache import Row, TrackedCache
from veloxserve.storage.redis_client import RedisSettings

if TYPE_CHECKING:
    from veloxserve.storage.redis_store import RedisUserStore

STATE = "s"  # the hash field holding a user's state bytes (shared with RedisUserStore)
_WEIGHTS, _VERSION, _GENERATION = "w", "v", "g"

# -1: the user holds a state of a newer generation (its "<Redis time, µs>-<id>" sorts later): the caller's
# generation was lost and another process rebuilt; never overwrite the rebuilt state with an old one.
_COMPARE_AND_SET = """
local g = redis.call('HGET', KEYS[1], 'g')
if g and g ~= ARGV[6] and string.find(g, '-', 1, true) and string.find(ARGV[6], '-', 1, true) and g > ARGV[6] then
  return -1
end
local version = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if version ~= tonumber(ARGV[1]) then return 0 end
if g ~= ARGV[6] then redis.call('DEL', KEYS[1]) end  -- another generation's log marks say nothing of this one
redis.call('HSET', KEYS[1], 's', ARGV[2], 'w', ARGV[3], 'v', version + 1, ARGV[4], ARGV[5], 'g', ARGV[6])
return 1
"""
_RAISE_HINT = """
local current = redis.call('HGET', KEYS[1], ARGV[1])
if (not current) or tonumber(current) < tonumber(ARGV[2]) then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
"""
WRITTEN, CHANGED_MEANWHILE, GENERATION_LOST = 1, 0, -1  # what compare_and_set answers per user


@dataclass(frozen=True, slots=True)
class StoredUser:
    """One user's hash as read for an update: absent fields are None, a missing version is 0."""

    state: bytes | None
    version: int
    mark: int  # the last LSN of the instance asked about learned for this user (0: none)
    generation: bytes | None


@dataclass(frozen=True, slots=True)
class UserWrite:
    """A compare-and-set of one user: succeeds only if its version is still `version`."""

    user: str
    version: int
    state: bytes
    weights: bytes
    lsn: int  # the new mark of the writing instance


def _bytes(value: object) -> bytes | None:
    """A reply that is bytes or absent (the client never decodes: decode_responses is off)."""
    assert value is None or isinstance(value, bytes), type(value)
    return value


class RedisStateSpace:
    """The shared users' state of one namespace (a model version) in Redis."""

    def __init__(self, store: RedisUserStore, namespace: str, cache: TrackedCache | None = None) -> None:
        """`cache`: where predictions' reads (weights, states, the generation) may be answered from
        memory (storage/redis_cache.py); the learner's reads always go to Redis."""
        self._store = store
        self._cache = cache
        self._client = store.client
        self.namespace = namespace
        self.settings: RedisSettings = store.settings

    def _user(self, user: str) -> str:
        return self._store.user_key(self.namespace, user)

    def _key(self, name: str) -> str:
        return self._store.key(self.namespace, name)

    # ---- generations ---------------------------------------------------------------------
    def open_generation(self) -> bytes:
        """The namespace's generation, started now if Redis has none ("<Redis time, µs>-<id>":
        Redis's clock, one for every process, so generations sort by when they began)."""
        with self._store.unavailable("opening the users' state"):
            seconds, micros = self._client.time()
            started = f"{seconds * 1_000_000 + micros:020d}-{uuid.uuid4().hex}"
            self._client.set(self._key("generation"), started, nx=True)
            generation = _bytes(self._client.get(self._key("generation")))
        assert generation is not None  # just set if absent
        return generation

    def generation(self) -> bytes | None:
        """The generation Redis holds now (None after it lost its data)."""
        key = self._key("generation")
        if self._cache is not None:
            return self._cache.read([key], ("",), lambda keys: [(self._get(key),)])[0][0]
        return self._get(key)

    def _get(self, key: str) -> bytes | None:
        with self._store.unavailable("checking the users' state"):
            return _bytes(self._client.get(key))

    # ---- reading -------------------------------------------------------------------------
    def weights(self, users: Sequence[str]) -> list[tuple[bytes | None, bytes | None]]:
        """(weights, generation) of each user, in one round trip."""
        return [(w, g) for w, g in self._cached(users, (_WEIGHTS, _GENERATION), "reading users' weights")]

    def states(self, users: Sequence[str]) -> list[tuple[bytes | None, bytes | None]]:
        """(state, generation) of each user, in one round trip."""
        return [(s, g) for s, g in self._cached(users, (STATE, _GENERATION), "reading users' state")]

    def mark(self, user: str, instance: str) -> tuple[int | None, bytes | None]:
        """(the last LSN of `instance` learned for the user, generation)."""
        ((mark, generation),) = self._fields([user], (f"@{instance}", _GENERATION), "reading a log position")
        return (None if mark is None else int(mark)), generation

    def for_update(self, users: Sequence[str], instance: str) -> list[StoredUser]:
        """What compare-and-set needs of each user: state, version, `instance`'s mark, generation."""
        found = self._fields(users, (STATE, _VERSION, f"@{instance}", _GENERATION), "reading users' state")
        return [
            StoredUser(state, int(version or 0), int(mark or 0), generation)
            for state, version, mark, generation in found
        ]

    def _cached(self, users: Sequence[str], fields: tuple[str, ...], doing: str) -> list[Row]:
        keys = [self._user(user) for user in users]
        if self._cache is None:
            return self._hmget(keys, fields, doing)
        return self._cache.read(keys, fields, lambda missing: self._hmget(missing, fields, doing))

    def _fields(self, users: Sequence[str], fields: tuple[str, ...], doing: str) -> list[Row]:
        return self._hmget([self._user(user) for user in users], fields, doing)

    def _hmget(self, keys: Sequence[str], fields: tuple[str, ...], doing: str) -> list[Row]:
        with self._store.unavailable(doing):
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.hmget(key, *fields)
            return [tuple(_bytes(v) for v in row) for row in pipe.execute()]

    # ---- writing -------------------------------------------------------------------------
    def compare_and_set(self, writes: Sequence[UserWrite], instance: str, generation: bytes) -> list[int]:
        """Write each user whose version has not moved since it was read, in one round trip:
        per write WRITTEN, CHANGED_MEANWHILE or GENERATION_LOST (a newer generation holds it)."""
        if not writes:
            return []
        mark = f"@{instance}"
        return [
            int(r)
            for r in self._store.run_script(
                _COMPARE_AND_SET,
                [(self._user(w.user), w.version, w.state, w.weights, mark, w.lsn, generation) for w in writes],
                "learning observations",
            )
        ]

    # ---- users beyond the trained ones ---------------------------------------------------
    def add_new_users(self, users: Sequence[str]) -> int:
        """Record users Redis now holds that the version was not trained on; how many were new."""
        return self._store.add_to_set(self._key("new_users"), users)

    def remove(self, user: str) -> bool:
        """Delete a forgotten user's state; whether Redis held one."""
        with self._store.unavailable("deleting a user's state"):
            removed = self._client.delete(self._user(user))
            self._client.srem(self._key("new_users"), user)
        return bool(removed)

    def count_new_users(self) -> int:
        with self._store.unavailable("counting users"):
            return int(self._client.scard(self._key("new_users")))

    # ---- how far each instance's log is learned (per generation) -------------------------
    def hints(self, generation: bytes) -> dict[str, int]:
        """instance -> an LSN such that all of its log up to it is learned (a lower bound)."""
        with self._store.unavailable("reading log positions"):
            raw = cast("dict[bytes, bytes]", self._client.hgetall(self._hints_key(generation)))
        return {k.decode(): int(v) for k, v in raw.items()}

    def raise_hint(self, generation: bytes, instance: str, lsn: int) -> None:
        self._store.run_script(_RAISE_HINT, [(self._hints_key(generation), instance, lsn)], "recording a log position")

    def _hints_key(self, generation: bytes) -> str:
        """Per generation: a position learned into a lost generation says nothing about the new one."""
        return self._key(f"learned:{generation.decode()}")
