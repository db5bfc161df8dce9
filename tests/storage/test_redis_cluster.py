"""The Redis stores over a real Redis Cluster (three masters, one replica each): the same contract
as over one Redis (the contract suites run here again, over the cluster), scripts and
transactions whose keys stay in one hash slot, and writes acknowledged by a replica."""

from __future__ import annotations

import pytest
import redis

from tests.storage.test_redis_states import (  # noqa: F401  (collected again here, over the cluster)
    test_a_write_succeeds_only_at_the_version_it_read,
    test_an_older_generation_never_overwrites_a_newer_one,
    test_hints_only_rise_and_belong_to_their_generation,
)
from tests.storage.test_user_store import (  # noqa: F401
    test_a_failing_checkpoint_changes_nothing,
    test_checkpoint_writes_states_and_position_together,
    test_delete_removes_one_user,
    test_get_of_an_unknown_user_is_none,
    test_namespaces_are_isolated,
    test_replace_all_drops_states_not_in_the_checkpoint,
)
from veloxserve.errors import InvalidInput, StoreUnavailable
from veloxserve.storage.redis_claims import RedisKeyClaims
from veloxserve.storage.redis_client import RedisSettings
from veloxserve.storage.redis_states import WRITTEN, UserWrite
from veloxserve.storage.redis_store import RedisUserStore


@pytest.fixture
def store(redis_cluster_url: str):
    s = RedisUserStore(redis_cluster_url + "&replica_wait=1")
    yield s
    s.close()


def test_the_url_chooses_the_cluster_client_and_replica_wait() -> None:
    settings = RedisSettings.from_url("redis://h:7000/0?cluster=1&replica_wait=1&prefix=p")
    assert (settings.cluster, settings.replica_wait, settings.prefix) == (True, 1, "p")
    assert "cluster" not in settings.url and "replica_wait" not in settings.url
    for bad in ("redis://h:7000/0?cluster=yes", "redis://h:7000/3?cluster=1", "redis://h/0?replica_wait=-1"):
        with pytest.raises(InvalidInput):
            RedisSettings.from_url(bad)


def test_the_client_side_cache_is_off_on_a_cluster_and_cannot_be_asked_for() -> None:
    """Its tracking connection hears one node: over a cluster it would miss the other masters' writes."""
    assert RedisSettings.from_url("redis://h:7000/0?cluster=1").cache is False
    assert RedisSettings.from_url("redis://h:7000/0").cache is True
    with pytest.raises(InvalidInput, match="cache"):
        RedisSettings.from_url("redis://h:7000/0?cluster=1&cache=on")


def test_users_spread_over_every_master(store, redis_cluster) -> None:
    users = [f"user{i}" for i in range(60)]
    owners = {redis_cluster.master_of(store.user_key("m/v1", u)).port for u in users}
    assert len(owners) == 3  # a batch of this size touches every shard: the per-node split is exercised
    space = store.state_space("m/v1")
    generation = space.open_generation()
    writes = [UserWrite(u, 0, f"s{u}".encode(), b"w", 7) for u in users]
    assert space.compare_and_set(writes, "a", generation) == [WRITTEN] * len(users)
    assert [s for s, _ in space.states(users)] == [f"s{u}".encode() for u in users]


def test_a_claim_of_many_keys_is_one_script_in_one_slot(store) -> None:
    claims = RedisKeyClaims(store, "m/idempotency", "a")
    keys = [f"key{i}" for i in range(20)]
    assert claims.claim(keys, ["u"] * 20, 1, ttl=60, durable_lsn=0) == [None] * 20
    again = claims.claim(keys[:2], ["u", "u"], 21, ttl=60, durable_lsn=20)
    assert again == [("a", 1, "u"), ("a", 2, "u")]
    slots = {store.client.keyslot(claims._key(k)) for k in keys} | {store.client.keyslot(claims._pending)}
    assert len(slots) == 1
    claims.release(keys[:1])  # one DEL and one ZREM over keys of that slot
    assert claims.claim(keys[:2], ["u", "u"], 21, ttl=60, durable_lsn=20) == [None, ("a", 2, "u")]


def test_a_script_a_promoted_master_does_not_know_is_loaded_there(store) -> None:
    space = store.state_space("m/v1")
    generation = space.open_generation()
    assert space.compare_and_set([UserWrite("x", 0, b"1", b"w", 1)], "a", generation) == [WRITTEN]
    store.client.execute_command("SCRIPT FLUSH", target_nodes=redis.RedisCluster.PRIMARIES)  # as after a failover
    assert space.compare_and_set([UserWrite("x", 1, b"2", b"w", 2)], "a", generation) == [WRITTEN]
    assert space.states(["x"])[0][0] == b"2"


def test_a_write_no_replica_acknowledges_is_refused(redis_cluster_url: str) -> None:
    with RedisUserStore(redis_cluster_url + "&replica_wait=2") as store:  # each master has one replica
        space = store.state_space("m/v1")
        with pytest.raises(StoreUnavailable, match="replica"):
            space.compare_and_set([UserWrite("x", 0, b"1", b"w", 1)], "a", space.open_generation())
