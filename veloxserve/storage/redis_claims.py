"""RedisKeyClaims: idempotency keys claimed in Redis by several server processes (one model).

What a key means and when it is claimed is serving/idempotency.py's; this module keeps them in
Redis, all under the namespace's hash tag (`prefix:{model/idempotency}:...`: one slot, so one
script on Redis Cluster). One string per key, `SET` with a TTL (its value: "<instance> <lsn> <user>" of the original),
claimed for a whole batch by one Lua script, so two processes racing with the same key cannot both
claim it; and per instance a sorted set of its claims not yet durable, by LSN, so they can be
released when their records never reach the log. Driver errors become StoreUnavailable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from veloxserve.storage.redis_store import RedisUserStore

_CLAIM = """
local lsn = tonumber(ARGV[1]) - 1
local instance, ttl, pending = ARGV[2], tonumber(ARGV[3]), KEYS[1]
redis.call('ZREMRANGEBYSCORE', pending, '-inf', ARGV[4])  -- durable: in the log for good
for _, stale in ipairs(redis.call('ZRANGEBYSCORE', pending, ARGV[1], '+inf')) do
  redis.call('DEL', stale)  -- claimed by a call whose append never happened (LSNs not used yet)
end
redis.call('ZREMRANGEBYSCORE', pending, ARGV[1], '+inf')
local out, k = {}, 2
for i = 5, #ARGV, 2 do
  local answer = ''
  if ARGV[i] == '1' then
    local key = KEYS[k]
    k = k + 1
    local known = redis.call('GET', key)
    if known then
      answer = known
    else
      lsn = lsn + 1
      redis.call('SET', key, instance .. ' ' .. lsn .. ' ' .. ARGV[i + 1], 'EX', ttl)
      redis.call('ZADD', pending, lsn, key)
    end
  else
    lsn = lsn + 1
  end
  out[#out + 1] = answer
end
return out
"""


class RedisKeyClaims:
    """The idempotency keys of one namespace, claimed by instance `instance`."""

    def __init__(self, store: RedisUserStore, namespace: str, instance: str) -> None:
        self._store = store
        self._namespace = namespace
        self.instance = instance
        self._pending = store.tagged_key(namespace, f"pending:{instance}")

    def _key(self, key: str) -> str:
        return self._store.tagged_key(self._namespace, f"k:{key}")  # one slot with the pending set: one script

    def claim(
        self, keys: Sequence[str | None], users: Sequence[str], next_lsn: int, *, ttl: int, durable_lsn: int
    ) -> list[tuple[str, int, str] | None]:
        """Claim a batch's keys in order, as if its rows were logged from `next_lsn` on; per row
        None (to be logged) or the (instance, LSN, user) of the original the key names. Claims up
        to `durable_lsn` are in the log for good; later ones at or after `next_lsn` were never
        used and are released first."""
        args: list[str | int] = [next_lsn, self.instance, ttl, durable_lsn]
        for key, user in zip(keys, users):
            args += ("1" if key is not None else "0", user)
        redis_keys = [self._pending] + [self._key(k) for k in keys if k is not None]
        (found,) = self._store.run_script(
            _CLAIM, [(*redis_keys, *args)], "claiming idempotency keys", keys=len(redis_keys)
        )
        out: list[tuple[str, int, str] | None] = []
        for raw in cast("list[bytes]", found):
            if not raw:
                out.append(None)
                continue
            instance, lsn, user = raw.decode().split(" ", 2)
            out.append((instance, int(lsn), user))
        return out

    def release(self, keys: Sequence[str]) -> None:
        """Forget claimed keys (their records were not logged)."""
        names = [self._key(k) for k in keys]
        if not names:
            return
        with self._store.unavailable("releasing idempotency keys"):
            pipe = self._store.client.pipeline(transaction=False)
            pipe.delete(*names)
            pipe.zrem(self._pending, *names)
            pipe.execute()

    def release_range(self, first: int, last: int | None = None) -> None:
        """Release this instance's claims for LSNs in [first, last] (open-ended without `last`)."""
        low, high = str(first), "+inf" if last is None else str(last)
        with self._store.unavailable("releasing idempotency keys"):
            client = self._store.client
            names = cast("list[bytes]", client.zrangebyscore(self._pending, low, high))
            pipe = client.pipeline(transaction=True)
            if names:
                pipe.delete(*names)
            pipe.zremrangebyscore(self._pending, low, high)
            pipe.execute()
