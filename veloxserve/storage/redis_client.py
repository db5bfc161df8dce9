"""Connecting to Redis: settings, one shared retry/backoff policy, and driver errors as StoreUnavailable.

Requests must fail fast when Redis is gone, never hang: every socket operation has a short
timeout, a failed command is retried a couple of times with exponential backoff (redis-py's
`Retry` over veloxserve.backoff.RetryPolicy, the one policy shared by every connection), and what still
fails becomes `StoreUnavailable` (503) with a message that says what to do. The connection pool
reconnects by itself on the next command once Redis is back. Background loops (the applier) wait
between attempts with the same policy's backoff, so there is one place to tune retries.

`?cluster=1` connects to a Redis Cluster from one seed node (redis-py's RedisCluster, same timeouts
and policy); `?replica_wait=N` makes every acknowledged write wait for N replicas (WAIT, see
storage/redis_cluster.py), so that it survives the failover of its master.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import AbstractBackoff, NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from veloxserve.backoff import RetryPolicy  # re-exported: its home was here
from veloxserve.errors import InvalidInput, StoreUnavailable


class _PolicyBackoff(AbstractBackoff):
    """redis-py's backoff interface over the project's one RetryPolicy (veloxserve/backoff.py)."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy

    def compute(self, failures: int) -> float:
        return self._policy.delay(failures)


def _retry(policy: RetryPolicy) -> Retry:
    return Retry(_PolicyBackoff(policy), policy.retries)


@dataclass(frozen=True)
class RedisSettings:
    """Where Redis is and how long to wait for it. `prefix` starts every key, so several
    deployments (or tests) share one Redis without seeing each other's users."""

    url: str = "redis://127.0.0.1:6379/0"
    prefix: str = "vx"
    socket_timeout: float = 0.5
    connect_timeout: float = 0.5
    policy: RetryPolicy = RetryPolicy()
    # The bound on the Redis work of one request (docs/deployment.md): past it, 503 + Retry-After.
    # Above one command's worst case, (retries + 1) socket timeouts plus backoffs, ~1.5 s.
    deadline: float = 2.0
    cluster: bool = False  # a Redis Cluster reached from the URL's node (`?cluster=1`)
    replica_wait: int = 0  # replicas that must hold a write before it is acknowledged (`?replica_wait=N`)
    replica_timeout: float = 0.25  # how long WAIT waits for them (seconds) before the request fails (503)
    cache: bool = True  # hot users' state held in each process (storage/redis_cache.py); off on a cluster
    cache_mb: float = 64.0

    @classmethod
    def from_url(cls, url: str) -> RedisSettings:
        """`redis://host:port/db[?prefix=name&cluster=1&replica_wait=N&cache=on|off&cache_mb=64]`: those
        are ours, the rest is redis-py's."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "unix"):
            raise InvalidInput(
                f"The 'store' parameter of serve must be a redis:// URL or 'lmdb'. Got {url!r} instead.", field="store"
            )
        query = dict(parse_qsl(parts.query))
        prefix = query.pop("prefix", "vx")
        if not prefix or any(c in prefix for c in "{}: "):
            raise InvalidInput(
                f"The 'prefix' of the Redis URL must be a non-empty name without braces, colons or "
                f"spaces. Got {prefix!r} instead.",
                field="store",
            )
        cluster = _flag(query.pop("cluster", "0"))
        replica_wait = _count(query.pop("replica_wait", "0"))
        if cluster and parts.path.strip("/") not in ("", "0"):
            raise InvalidInput(
                f"A Redis Cluster has only database 0: drop {parts.path!r} from the store URL {url!r}.", field="store"
            )
        # The tracking connection hears one node's invalidations: over a cluster it would miss the
        # other masters' writes, so the cache is off there (and asking for it is an error, not a surprise).
        cache, cache_mb = _cache_options(query.pop("cache", "off" if cluster else "on"), query.pop("cache_mb", "64"))
        if cluster and cache:
            raise InvalidInput(
                "The 'cache' option of the Redis URL is not supported with cluster=1 yet (its invalidations come "
                "from one node): drop cache=on.",
                field="store",
            )
        url = urlunsplit(parts._replace(query=urlencode(query)))
        return cls(url=url, prefix=prefix, cluster=cluster, replica_wait=replica_wait, cache=cache, cache_mb=cache_mb)

    def connect(self) -> redis.Redis:
        """A client of the Redis (or, with `cluster`, of the Redis Cluster) the URL names. The
        cluster client routes each command by its key's hash slot and follows MOVED after a failover."""
        return self._client(_retry(self.policy))

    def _client(self, retry: Retry) -> redis.Redis:
        options = {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.connect_timeout,
            "retry": retry,
        }
        if self.cluster:
            # Typed as redis.Redis: RedisCluster answers the same commands (routed by slot), and the
            # few places that need the difference (storage/redis_cluster.py) check for it.
            return cast("redis.Redis", RedisCluster.from_url(self.url, **options))
        return redis.Redis.from_url(self.url, health_check_interval=30, **options)

    @property
    def where(self) -> str:
        parts = urlsplit(self.url)
        return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2], query=""))  # no password


def _flag(value: str) -> bool:
    if value not in ("0", "1"):
        raise InvalidInput(
            f"The 'cluster' option of the Redis URL must be 0 or 1. Got {value!r} instead.", field="store"
        )
    return value == "1"


def _count(value: str) -> int:
    if not value.isdigit() or int(value) > 16:
        raise InvalidInput(
            f"The 'replica_wait' option of the Redis URL must be an int in [0, 16] (replicas per write). "
            f"Got {value!r} instead.",
            field="store",
        )
    return int(value)


def _cache_options(cache: str, cache_mb: str) -> tuple[bool, float]:
    if cache not in ("on", "off"):
        raise InvalidInput(f"The 'cache' of the Redis URL must be 'on' or 'off'. Got {cache!r} instead.", field="store")
    try:
        size = float(cache_mb)
    except ValueError:
        size = -1.0
    if not 0 <= size <= 1_000_000:
        raise InvalidInput(
            f"The 'cache_mb' of the Redis URL must be a number of megabytes in [0, 1000000]. Got {cache_mb!r} instead.",
            field="store",
        )
    return cache == "on", size


@contextlib.contextmanager
def unavailable_as_503(settings: RedisSettings, doing: str) -> Iterator[None]:
    """Turn any redis-py error raised inside into StoreUnavailable naming Redis and the operation."""
    try:
        yield
    except redis.RedisError as exc:
        raise StoreUnavailable(
            f"Redis at {settings.where} is unavailable while {doing} ({type(exc).__name__}: {exc}). Requests that "
            f"need user state fail with 503 until it is back; the server reconnects by itself."
        ) from exc


class RedisProbe:
    """Is Redis answering? One attempt per ping, no retry: for a watch that is itself the retry."""

    def __init__(self, settings: RedisSettings) -> None:
        self._client = settings._client(Retry(NoBackoff(), 0))

    def ping(self) -> str | None:
        """None if Redis answered, else why not ("<error type>: <message>")."""
        try:
            self._client.ping()
        except redis.RedisError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def close(self) -> None:
        self._client.close()
