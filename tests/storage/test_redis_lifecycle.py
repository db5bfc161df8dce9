"""The Redis side of a model's lifecycle across processes: lease and fencing, announcements, acks."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veloxserve.errors import Conflict
from veloxserve.storage.redis_lifecycle import FORGET, SWITCH, FencedOut, Lease, RedisLifecycle
from veloxserve.storage.redis_store import RedisUserStore


@pytest.fixture
def store(redis_url: str):
    s = RedisUserStore(redis_url)
    yield s
    s.close()


def _wait_until(check, seconds: float = 10.0) -> None:  # a bound on waiting, not an assertion on speed
    end = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < end, "condition never held"
        time.sleep(0.02)


def test_every_key_of_a_model_carries_its_hash_tag(store) -> None:
    life = RedisLifecycle(store, "m1")
    lease = life.acquire("a", 5)
    life.announce(SWITCH, "v2", lease)
    life.announce(FORGET, "u")
    life.heartbeat("a", 5)
    life.acknowledge("a", 2)
    keys = [k.decode() for k in store.client.scan_iter(match=f"{store.settings.prefix}:*")]
    assert len(keys) == 8 and all(k.startswith(f"{store.settings.prefix}:{{m1}}:") for k in keys)


def test_one_holder_at_a_time_and_the_lease_expires(store) -> None:
    life = RedisLifecycle(store, "m")
    first = life.acquire("a", 0.3)
    with pytest.raises(Conflict, match="already running on instance 'a'"):
        life.acquire("b", 5)
    assert life.holder() == first
    _wait_until(lambda: life.holder() is None)  # nobody renewed it
    second = life.acquire("b", 5)
    assert second.holder == "b" and second.token > first.token


def test_a_stale_holder_cannot_promote(store) -> None:
    life = RedisLifecycle(store, "m")
    stale = life.acquire("a", 0.2)
    _wait_until(lambda: life.holder() is None)
    fresh = life.acquire("b", 5)
    with pytest.raises(FencedOut, match="'a'"):
        life.announce(SWITCH, "v-stale", stale)
    assert life.active() == (None, 0) and life.read() == [] and life.last_seq() == 0  # nothing changed
    assert not life.renew(stale, 5)
    life.release(stale)  # not its lease any more: left alone
    assert life.holder() == fresh
    seq = life.announce(SWITCH, "v-fresh", fresh)
    assert life.active() == ("v-fresh", seq)


def test_the_same_holder_renews_with_a_new_token_and_the_old_one_is_fenced(store) -> None:
    life = RedisLifecycle(store, "m")
    old = life.acquire("a", 5)
    new = life.acquire("a", 5)
    assert new.token > old.token
    with pytest.raises(FencedOut):
        life.announce(SWITCH, "v", old)
    assert life.renew(new, 5)
    life.release(new)
    assert life.holder() is None


def test_announcements_are_read_in_order_and_resumed_after_an_entry(store) -> None:
    life = RedisLifecycle(store, "m")
    seqs = [life.announce(SWITCH, "v1"), life.announce(FORGET, "u1"), life.announce(SWITCH, "v2")]
    assert seqs == [1, 2, 3]
    read = life.read()
    assert [(a.seq, a.kind, a.what) for a in read] == [(1, SWITCH, "v1"), (2, FORGET, "u1"), (3, SWITCH, "v2")]
    assert [a.seq for a in life.read(after=read[0].entry)] == [2, 3]
    assert life.read(after=read[-1].entry) == []
    assert life.active() == ("v2", 3)
    assert life.forgotten(["u1", "u2"]) == [True, False]
    with pytest.raises(ValueError, match="kind"):
        life.announce("delete", "x")


def test_pending_names_the_live_instances_that_did_not_acknowledge(store) -> None:
    life = RedisLifecycle(store, "m")
    for instance in ("a", "b", "c"):
        life.heartbeat(instance, 5)
    seq = life.announce(SWITCH, "v1")
    assert life.pending(seq) == ["a", "b", "c"]
    life.acknowledge("a", seq)
    life.acknowledge("b", seq)
    assert life.pending(seq) == ["c"]
    life.leave("c")  # stopped cleanly: nobody waits for it
    assert life.pending(seq) == [] and life.live() == ["a", "b"]
    life.heartbeat("d", 0.2)
    assert life.pending(seq) == ["d"]
    _wait_until(lambda: life.pending(seq) == [])  # d's heartbeat expired: it is not waited for


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(acks=st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 50)), max_size=30))
def test_an_acknowledgement_never_moves_back(store, acks) -> None:
    life = RedisLifecycle(store, f"m{time.monotonic_ns()}")
    highest: dict[str, int] = {}
    for instance, seq in acks:
        life.acknowledge(instance, seq)
        highest[instance] = max(highest.get(instance, 0), seq)
    assert {i: life.acknowledged(i) for i in "abc"} == {i: highest.get(i, 0) for i in "abc"}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("take"), st.sampled_from("ab")),
            st.tuples(st.just("steal"), st.sampled_from("ab")),  # the holder's lease expired: another takes it
            st.tuples(st.just("promote"), st.integers(0, 5)),
        ),
        max_size=20,
    )
)
def test_only_the_newest_lease_ever_promotes(store, ops) -> None:
    """Against a model of the lease: a promotion is applied iff its lease is the newest one handed out."""
    life = RedisLifecycle(store, f"m{time.monotonic_ns()}")
    leases: list[Lease] = []
    active: str | None = None
    for op, arg in ops:
        if op == "promote":
            if not leases:
                continue
            lease = leases[min(arg, len(leases) - 1)]
            version = f"v{len(leases)}-{arg}"
            if lease == leases[-1]:
                life.announce(SWITCH, version, lease)
                active = version
            else:
                with pytest.raises(FencedOut):
                    life.announce(SWITCH, version, lease)
        else:
            held = life.holder()
            if op == "steal" and held is not None:
                store.client.delete(life.key("lease"))  # as if it expired
                held = None
            if held is not None and held.holder != arg:
                with pytest.raises(Conflict):
                    life.acquire(str(arg), 5)
            else:
                leases.append(life.acquire(str(arg), 5))
        assert life.active()[0] == active
    tokens = [lease.token for lease in leases]
    assert tokens == sorted(set(tokens))  # every lease got a larger token


def test_a_blocking_read_returns_what_is_announced_meanwhile(store) -> None:
    life = RedisLifecycle(store, "m")
    assert life.read(block=0.05) == []  # nothing announced: waits, then answers empty
    first = life.announce(SWITCH, "v1")
    (entry,) = life.read(block=0.2)
    assert entry.seq == first
    threading.Timer(0.05, life.announce, (FORGET, "u")).start()
    assert [(a.kind, a.what) for a in life.read(entry.entry, block=0.4)] in ([(FORGET, "u")], [])
    _wait_until(lambda: [a.what for a in life.read(entry.entry, block=0.1)] == ["u"])
