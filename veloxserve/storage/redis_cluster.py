"""Writes that are acknowledged: each node's share of a batch in one pipeline, then WAIT there.

Two things make a batch of writes need more than the client's own pipeline:

- **Redis Cluster.** A batch's keys hash to slots owned by different masters. The batch is split
  by owner (the cluster client's slot map), each share sent as one pipeline on that master's own
  connection. A script unknown to a master (it was just promoted from a replica: Redis does not
  replicate its script cache) answers NOSCRIPT; it is loaded on that master and its share run
  again, so scripts run this way must be idempotent. A share that meets MOVED, ASK, CLUSTERDOWN or
  a dead connection (a master failing over) refreshes the slot map and fails (StoreUnavailable,
  503, where the caller translates it): the caller's retry finds the promoted master.
- **Failover durability.** Replication is asynchronous: a write acknowledged by a master that dies
  at once may never reach the replica promoted in its place. With `replica_wait=N` each share ends
  with `WAIT N timeout` *on the connection that wrote it* (WAIT counts the replicas holding that
  connection's writes, so it cannot be sent on another one), and a share that fewer replicas
  acknowledged within the timeout fails: the observation is not acknowledged (503), and its
  retry is idempotent (the log marks kept with each user's state, storage/redis_states.py).
  The cost: one replication round trip per master touched, on every write.

A single Redis is one "node": the same code, one share.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, ClusterDownError, MovedError, NoScriptError, TryAgainError

from veloxserve.storage.redis_client import RedisSettings

Command = tuple[str, tuple[Any, ...]]  # (the key that routes it, the whole command: name and arguments)
_TOPOLOGY = (MovedError, AskError, ClusterDownError, TryAgainError, redis.ConnectionError, redis.TimeoutError)


class ReplicasBehind(redis.RedisError):
    """Fewer replicas than `replica_wait` acknowledged a write in time (translated to a 503 by the caller)."""


def sha(source: str) -> str:
    """The SHA1 by which Redis knows a script (EVALSHA): the same on every node."""
    return hashlib.sha1(source.encode()).hexdigest()


def execute(
    client: redis.Redis, settings: RedisSettings, commands: Sequence[Command], *, script: str = ""
) -> list[Any]:
    """Run `commands` (write commands, or EVALSHA of `script`), each on the master owning its key,
    one pipeline per master; the replies in order (an error reply is returned, not raised). Raises
    ReplicasBehind or a redis-py error when a share could not be made durable."""
    replies: list[Any] = [None] * len(commands)
    for node, indexes in _shares(client, commands).items():
        conn = client if node is None else client.get_redis_connection(node)  # type: ignore[attr-defined]
        try:
            out = _run(conn, settings, [commands[i][1] for i in indexes])
            if script and any(isinstance(r, NoScriptError) for r in out):
                conn.script_load(script)
                out = _run(conn, settings, [commands[i][1] for i in indexes])
            if node is not None and any(isinstance(r, _TOPOLOGY) for r in out):
                raise next(r for r in out if isinstance(r, _TOPOLOGY))
        except _TOPOLOGY:
            if isinstance(client, RedisCluster):
                client.nodes_manager.initialize()  # where the slots are now: the caller's retry goes there
            raise
        for i, reply in zip(indexes, out):
            replies[i] = reply
    return replies


def _shares(client: redis.Redis, commands: Sequence[Command]) -> dict[ClusterNode | None, list[int]]:
    if not isinstance(client, RedisCluster):
        return {None: list(range(len(commands)))}
    shares: dict[ClusterNode | None, list[int]] = {}
    for i, (key, _) in enumerate(commands):
        shares.setdefault(client.get_node_from_key(key), []).append(i)
    return shares


def _run(conn: redis.Redis, settings: RedisSettings, commands: list[tuple[Any, ...]]) -> list[Any]:
    """One pipeline on one connection (a pipeline holds one connection for its whole execution)."""
    pipe = conn.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    if settings.replica_wait:
        pipe.execute_command("WAIT", settings.replica_wait, max(1, int(settings.replica_timeout * 1000)))
    out = pipe.execute(raise_on_error=False)
    if settings.replica_wait:
        acked = out.pop()
        if isinstance(acked, Exception):
            raise acked
        if int(acked) < settings.replica_wait and not any(isinstance(r, Exception) for r in out):
            raise ReplicasBehind(
                f"{acked} of the {settings.replica_wait} replicas required (replica_wait) acknowledged the write "
                f"within {settings.replica_timeout} s: is a replica down or lagging?"
            )
    return out
