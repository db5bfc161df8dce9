"""The client-side cache of users' state over a real Redis: invalidated across clients, flushed on
FLUSHALL and on reconnect, bounded in bytes, and never answering a read with less than every
write acknowledged before it (two caches standing for two server processes)."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import RedisServer, eventually
from tests.serving.test_shared_state import F, _home, _servers, expected_weights
from veloxserve.errors import InvalidInput
from veloxserve.storage.redis_cache import CacheMiss, TrackedCache
from veloxserve.storage.redis_client import RedisSettings


def _cache(url: str, **options: str) -> TrackedCache:
    query = "".join(f"&{k}={v}" for k, v in options.items())
    settings = RedisSettings.from_url(url + ("" if "?" in url else "?prefix=vx") + query)
    cache = TrackedCache(settings, f"{settings.prefix}:")
    assert eventually(lambda: cache.connected, within=30)
    return cache


def _prefix(url: str) -> str:
    return RedisSettings.from_url(url).prefix


def _fenced(cache: TrackedCache) -> bool:
    """Wait for a fence taken now; True if it came back (memory may then answer)."""
    fence = cache.fence()
    if fence is None:
        return False
    done = threading.Event()
    fence.on_done(lambda ok: done.set())
    assert done.wait(30)
    return bool(fence.ok)


def _read(cache: TrackedCache, client: redis.Redis, key: str) -> tuple[bytes | None, bool]:
    """What a prediction reads of `key`, as StoreCalls.read does it: (value, answered from memory)."""

    def fetch(keys: list[str]) -> list[tuple[bytes | None, ...]]:
        return [tuple(client.hmget(k, "f")) for k in keys]

    if not _fenced(cache):
        return cache.read([key], ("f",), fetch)[0][0], False
    try:
        with cache.answering(memory_only=True):
            return cache.read([key], ("f",), fetch)[0][0], True
    except CacheMiss:
        with cache.answering(memory_only=False):
            return cache.read([key], ("f",), fetch)[0][0], False


@pytest.fixture
def client(redis_url: str):
    c = redis.Redis.from_url(redis_url.split("?")[0])
    yield c
    c.close()


def test_a_write_by_another_client_invalidates_what_memory_held(redis_url: str, client) -> None:
    key = f"{_prefix(redis_url)}:ns:u:{{a}}"
    client.hset(key, "f", b"1")
    cache = _cache(redis_url)
    try:
        assert _read(cache, client, key) == (b"1", False)  # read from Redis, now held
        assert _read(cache, client, key) == (b"1", True)
        client.hset(key, "f", b"2")  # acknowledged: the next read must see it
        assert _read(cache, client, key) == (b"2", False)
        assert _read(cache, client, key) == (b"2", True)
        assert cache.stats.invalidations >= 1 and cache.stats.hits == 2 and cache.stats.misses == 2
    finally:
        cache.close()


def test_without_a_fence_memory_never_answers(redis_url: str, client) -> None:
    key = f"{_prefix(redis_url)}:ns:u:{{a}}"
    client.hset(key, "f", b"1")
    cache = _cache(redis_url)
    try:
        _read(cache, client, key)
        calls = []
        cache.read([key], ("f",), lambda keys: calls.append(keys) or [(b"1",)])  # no `answering`: Redis
        assert calls == [[key]]
    finally:
        cache.close()


def test_a_fill_raced_by_a_write_is_not_kept(redis_url: str, client) -> None:
    """Redis answers the read, then a write lands and is acknowledged before the answer is held:
    the late answer must not outlive the write's invalidation."""
    key = f"{_prefix(redis_url)}:ns:u:{{a}}"
    client.hset(key, "f", b"old")
    cache = _cache(redis_url)
    try:

        def racing_fetch(keys: list[str]) -> list[tuple[bytes | None, ...]]:
            rows = [tuple(client.hmget(k, "f")) for k in keys]
            client.hset(key, "f", b"new")
            assert _fenced(cache)  # its invalidation is applied before the old answer is filled
            return rows

        with cache.answering(memory_only=False):
            assert cache.read([key], ("f",), racing_fetch) == [(b"old",)]
        assert _read(cache, client, key) == (b"new", False)
    finally:
        cache.close()


def test_flushall_drops_everything(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()  # our own: FLUSHALL never touches the shared one
    client = redis.Redis.from_url(server.url)
    cache = _cache(server.url)
    try:
        client.hset("vx:ns:u:{a}", "f", b"1")
        _read(cache, client, "vx:ns:u:{a}")
        flushes = cache.stats.flushes
        client.flushall()
        assert _read(cache, client, "vx:ns:u:{a}") == (None, False)
        assert cache.stats.flushes == flushes + 1
    finally:
        cache.close()
        client.close()
        server.stop()


def test_a_new_generation_drops_everything(redis_url: str, client) -> None:
    prefix = _prefix(redis_url)
    cache = _cache(redis_url)
    try:
        client.hset(f"{prefix}:ns:u:{{a}}", "f", b"1")
        _read(cache, client, f"{prefix}:ns:u:{{a}}")
        flushes = cache.stats.flushes
        client.set(f"{prefix}:other:generation", b"g2")
        assert _fenced(cache) and cache.stats.flushes == flushes + 1
        assert _read(cache, client, f"{prefix}:ns:u:{{a}}") == (b"1", False)
    finally:
        cache.close()


def test_a_restarted_redis_is_tracked_again_and_nothing_old_is_served(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis").start()
    client = redis.Redis.from_url(server.url)
    cache = _cache(server.url)
    try:
        client.hset("vx:ns:u:{a}", "f", b"1")
        _read(cache, client, "vx:ns:u:{a}")
        assert _read(cache, client, "vx:ns:u:{a}") == (b"1", True)
        server.stop()
        assert eventually(lambda: not cache.connected, within=30)
        assert cache.fence() is None and cache.held_bytes == 0  # down: nothing held, reads go to Redis
        server.proc = None
        server.start()  # same port, same append-only file
        client.hset("vx:ns:u:{a}", "f", b"2")  # written before the cache is tracking again, maybe
        assert eventually(lambda: cache.connected, within=30)
        assert _read(cache, client, "vx:ns:u:{a}") == (b"2", False)
        client.hset("vx:ns:u:{a}", "f", b"3")  # the new connection's invalidations arrive
        assert _read(cache, client, "vx:ns:u:{a}")[0] == b"3"
    finally:
        cache.close()
        client.close()
        server.stop()


def test_memory_is_bounded_in_bytes(redis_url: str, client) -> None:
    prefix = _prefix(redis_url)
    cache = _cache(redis_url, cache_mb="0.01")  # 10 485 bytes: about eight 1 KB users
    bound = int(0.01 * 2**20)
    try:
        keys = [f"{prefix}:ns:u:{{{i}}}" for i in range(40)]
        for i, key in enumerate(keys):
            client.hset(key, "f", bytes([i]) * 1000)
        for i, key in enumerate(keys):
            assert _read(cache, client, key)[0] == bytes([i]) * 1000
            assert cache.held_bytes <= bound
        assert _read(cache, client, keys[-1]) == (bytes([39]) * 1000, True)  # the most recent is held
        assert _read(cache, client, keys[0]) == (bytes([0]) * 1000, False)  # the oldest was evicted
    finally:
        cache.close()


def test_the_cache_options_of_the_url() -> None:
    default = RedisSettings.from_url("redis://h:1/0?prefix=p")
    assert (default.cache, default.cache_mb, default.url) == (True, 64.0, "redis://h:1/0")
    off = RedisSettings.from_url("redis://h:1/0?cache=off&cache_mb=8&socket_keepalive=true")
    assert (off.cache, off.cache_mb, off.url) == (False, 8.0, "redis://h:1/0?socket_keepalive=true")
    for bad in ("cache=yes", "cache_mb=-1", "cache_mb=lots", "cache_mb=nan"):
        with pytest.raises(InvalidInput, match="cache"):
            RedisSettings.from_url(f"redis://h:1/0?{bad}")


_ops = st.lists(
    st.tuples(st.sampled_from(["write", "read"]), st.integers(0, 1), st.integers(0, 2)), min_size=1, max_size=30
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_every_read_sees_every_write_acknowledged_before_it(ops, redis_url: str) -> None:
    """Two caches (two server processes), each with its own connection writing, interleaved at
    random: a read after an acknowledged write, from either side, returns that write."""
    prefix = _prefix(redis_url)
    clients = [redis.Redis.from_url(redis_url.split("?")[0]) for _ in range(2)]
    caches = [_cache(redis_url) for _ in range(2)]
    run = threading.get_ident()
    keys = [f"{prefix}:hyp{run}:u:{{{k}}}" for k in range(3)]
    clients[0].delete(*keys)
    latest: dict[str, bytes | None] = dict.fromkeys(keys)
    try:
        for n, (op, side, k) in enumerate(ops):
            if op == "write":
                clients[side].hset(keys[k], "f", str(n).encode())
                latest[keys[k]] = str(n).encode()
            else:
                assert _read(caches[side], clients[side], keys[k])[0] == latest[keys[k]]
    finally:
        for cache in caches:
            cache.close()
        for c in clients:
            c.delete(*keys)
            c.close()


def test_an_observation_acknowledged_by_one_server_is_in_the_next_prediction_of_another(
    tmp_path: Path, redis_url: str
) -> None:
    home = _home(tmp_path)
    a, b = _servers(home, redis_url, ["a", "b"])
    try:
        with httpx.Client(base_url=a.url, timeout=30) as at_a, httpx.Client(base_url=b.url, timeout=30) as at_b:
            observations: list[tuple[str, int, float]] = []
            for n in range(12):
                user, item = ("0", "fresh-z")[n % 2], 100 + (7 * n) % 50
                at_b.get("/models/songs/predict", params={"user": user, "item": 117})  # B holds the user now
                assert (
                    at_a.post("/models/songs/observe", json={"user": user, "item": item, "score": 4.0}).status_code
                    == 200
                )
                observations.append((user, item, 4.0))
                got = at_b.get("/models/songs/predict", params={"user": user, "item": 117}).json()["score"]
                assert got == pytest.approx(F[17] @ expected_weights(user, observations), rel=1e-9, abs=1e-9)
            metrics = at_b.get("/metrics").text
        hits = [
            line
            for line in metrics.splitlines()
            if line.startswith('veloxserve_redis_cache_reads_total{outcome="hit"}')
        ]
        assert hits and float(hits[0].split()[-1]) > 0  # B answered some predictions from memory
    finally:
        for server in (a, b):
            server.stop()
