"""What the Redis store adds to the contract: keys sharded by user, fast and clear failures."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from tests.helpers import free_port
from veloxserve.errors import InvalidInput, StoreUnavailable
from veloxserve.storage.redis_client import RedisSettings
from veloxserve.storage.redis_store import RedisUserStore
from veloxserve.storage.user_store import Checkpoint


def test_a_users_keys_hash_to_the_users_cluster_slot(redis_url: str) -> None:
    with RedisUserStore(redis_url) as store:
        for user in ("42", "alice", "user:7"):
            assert key_slot(store.user_key("songs/v1", user).encode()) == key_slot(user.encode())
        store.write_checkpoint("songs", {"alice": b"x"}, Checkpoint("v1", 3))
        assert store.client.hget(store.user_key("songs", "alice"), "s") == b"x"


def test_unreachable_redis_fails_fast_with_store_unavailable_naming_it() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    store = RedisUserStore(url)
    with pytest.raises(StoreUnavailable, match=f"Redis at {url} is unavailable while reading a user's state"):
        store.get("songs", "alice")  # raises rather than hangs
    with pytest.raises(StoreUnavailable):
        store.write_checkpoint("songs", {"a": b"1"}, Checkpoint("v1", 1))


def test_the_prefix_comes_from_the_url_and_is_checked() -> None:
    settings = RedisSettings.from_url("redis://127.0.0.1:6379/2?prefix=blue")
    assert settings.prefix == "blue" and settings.url == "redis://127.0.0.1:6379/2"
    with pytest.raises(InvalidInput, match="prefix"):
        RedisSettings.from_url("redis://127.0.0.1:6379/0?prefix=a{b}")
    with pytest.raises(InvalidInput, match="'store'"):
        RedisSettings.from_url("http://127.0.0.1:6379")
