"""RedisUserStore: user states in Redis, shared by every server process that points at it.

Keys (prefix `p`, namespace `ns`):

    p:ns:u:{<user>}     a hash: `s` the user's state bytes, plus what the shared learner keeps there
    p:ns:users          a set of the users with a state (scan and count)
    p:ns:checkpoint     "<version>\\n<lsn>"

The user id is the hash tag (`{...}`), so Redis Cluster places each user's keys by user and a
script over one user's keys (the shared learner's compare-and-set) stays on one shard; keys a
script touches together that are not one user's are tagged by their namespace (`tagged_key`).
A checkpoint is one MULTI/EXEC transaction, all or nothing on a single Redis node; on Redis
Cluster its keys span shards, so it is written in order (states, index, the checkpoint last) but
not atomically, nor is a delete (the server processes sharing Redis do not checkpoint: they
update users in place, see storage/redis_states.py and learning/shared_table.py). Every driver error becomes
StoreUnavailable (503) here; nothing redis-py raises leaves this package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, cast

from veloxserve.storage.redis_cache import TrackedCache
from veloxserve.storage.redis_client import RedisSettings, unavailable_as_503
from veloxserve.storage.redis_cluster import execute, sha
from veloxserve.storage.redis_states import STATE, RedisStateSpace
from veloxserve.storage.user_store import Checkpoint, UserStore, check_states

_SCAN_CHUNK = 500


class RedisUserStore(UserStore):
    def __init__(self, settings: RedisSettings | str) -> None:
        self.settings = RedisSettings.from_url(settings) if isinstance(settings, str) else settings
        self.client = self.settings.connect()
        self._cache: TrackedCache | None = None

    def state_space(self, namespace: str) -> RedisStateSpace:
        """The users' state of `namespace` as several processes share it (learning/shared_table.py)."""
        return RedisStateSpace(self, namespace, self.tracked_cache())

    def tracked_cache(self) -> TrackedCache | None:
        """This process's copy of hot users' state (None with `cache=off`), started on first use:
        only servers sharing state read through it."""
        if self._cache is None and self.settings.cache and self.settings.cache_mb > 0:
            self._cache = TrackedCache(self.settings, f"{self.settings.prefix}:")
        return self._cache

    # ---- keys (public: the shared state uses the same layout) -------------------------------
    def user_key(self, namespace: str, user: str) -> str:
        return f"{self.settings.prefix}:{namespace}:u:{{{user}}}"

    def key(self, namespace: str, name: str) -> str:
        return f"{self.settings.prefix}:{namespace}:{name}"

    def tagged_key(self, namespace: str, name: str) -> str:
        """A key hash-tagged by its namespace: all of a namespace's tagged keys are in one hash slot,
        so one script or transaction may touch several of them on Redis Cluster."""
        return f"{self.settings.prefix}:{{{namespace}}}:{name}"

    def unavailable(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return unavailable_as_503(self.settings, doing)

    def run_script(self, source: str, calls: Sequence[tuple[Any, ...]], doing: str, *, keys: int = 1) -> list[Any]:
        """Run a Lua script once per call `(*keys, *args)` (its first `keys` items are Redis keys, of
        one hash slot), in order, one round trip per Redis node, each write acknowledged by
        `replica_wait` replicas (storage/redis_cluster.py). A script a node does not know (it
        restarted, or a replica took over) is loaded there and that node's calls run again, so
        scripts run this way must be idempotent."""
        digest = sha(source)
        commands = [(call[0], ("EVALSHA", digest, keys, *call)) for call in calls]
        with self.unavailable(doing):
            results = execute(self.client, self.settings, commands, script=source)
            errors = [r for r in results if isinstance(r, Exception)]
            if errors:
                raise errors[0]
            return results

    def add_to_set(self, key: str, members: Sequence[str]) -> int:
        """SADD; how many members were new."""
        with self.unavailable("indexing users"):
            return int(self.client.sadd(key, *members))

    # ---- the UserStore contract --------------------------------------------------------------
    def get(self, namespace: str, user: str) -> bytes | None:
        with self.unavailable("reading a user's state"):
            return cast("bytes | None", self.client.hget(self.user_key(namespace, user), STATE))

    def get_many(self, namespace: str, users: Sequence[str]) -> list[bytes | None]:
        with self.unavailable("reading users' states"):
            pipe = self.client.pipeline(transaction=False)
            for user in users:
                pipe.hget(self.user_key(namespace, user), STATE)
            return pipe.execute()

    def write_checkpoint(
        self, namespace: str, states: Mapping[str, bytes], checkpoint: Checkpoint, *, replace_all: bool = False
    ) -> None:
        check_states(states)
        index = self.key(namespace, "users")
        with self.unavailable("writing a checkpoint"):
            members = cast("set[bytes]", self.client.smembers(index)) if replace_all else set()
            dropped = [m.decode() for m in members]
            pipe = self.client.pipeline(transaction=not self.settings.cluster)  # MULTI/EXEC: all or nothing
            if replace_all:
                for user in dropped:
                    pipe.delete(self.user_key(namespace, user))
                pipe.delete(index)
            for user, state in states.items():
                pipe.hset(self.user_key(namespace, user), STATE, bytes(state))
            if states:
                pipe.sadd(index, *states)
            pipe.set(self.key(namespace, "checkpoint"), f"{checkpoint.version}\n{checkpoint.lsn}")
            pipe.execute()

    def checkpoint(self, namespace: str) -> Checkpoint | None:
        with self.unavailable("reading the checkpoint"):
            value = cast("bytes | None", self.client.get(self.key(namespace, "checkpoint")))
        if value is None:
            return None
        version, lsn = value.decode().split("\n")
        return Checkpoint(version, int(lsn))

    def scan(self, namespace: str) -> Iterator[tuple[str, bytes]]:
        with self.unavailable("scanning user states"):
            users = sorted(m.decode() for m in self.client.sscan_iter(self.key(namespace, "users"), count=_SCAN_CHUNK))
        for start in range(0, len(users), _SCAN_CHUNK):
            chunk = users[start : start + _SCAN_CHUNK]
            for user, state in zip(chunk, self.get_many(namespace, chunk)):
                if state is not None:
                    yield user, state

    def delete(self, namespace: str, user: str) -> bool:
        with self.unavailable("deleting a user's state"):
            pipe = self.client.pipeline(transaction=not self.settings.cluster)  # two slots on a cluster
            pipe.delete(self.user_key(namespace, user))
            pipe.srem(self.key(namespace, "users"), user)
            removed, _ = pipe.execute()
        return bool(removed)

    def count(self, namespace: str) -> int:
        with self.unavailable("counting users"):
            return int(self.client.scard(self.key(namespace, "users")))

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
        self.client.close()
