"""The Redis side of shared users' state: compare-and-set, generations, marks and hints."""

from __future__ import annotations

import pytest

from veloxserve.storage.redis_states import CHANGED_MEANWHILE, GENERATION_LOST, WRITTEN, UserWrite
from veloxserve.storage.redis_store import RedisUserStore


@pytest.fixture
def store(redis_url: str):
    s = RedisUserStore(redis_url)
    yield s
    s.close()


def test_a_write_succeeds_only_at_the_version_it_read(store) -> None:
    space = store.state_space("m/v1")
    generation = space.open_generation()
    assert space.open_generation() == generation  # joined, not restarted
    (absent,) = space.for_update(["u"], "a")
    assert (absent.state, absent.version, absent.mark, absent.generation) == (None, 0, 0, None)
    assert space.compare_and_set([UserWrite("u", 0, b"state", b"w", 7)], "a", generation) == [WRITTEN]
    assert space.compare_and_set([UserWrite("u", 0, b"late", b"w", 8)], "a", generation) == [CHANGED_MEANWHILE]
    (stored,) = space.for_update(["u"], "a")
    assert (stored.state, stored.version, stored.mark, stored.generation) == (b"state", 1, 7, generation)
    assert space.weights(["u", "nobody"]) == [(b"w", generation), (None, None)]
    assert space.states(["u"]) == [(b"state", generation)]
    assert space.mark("u", "a") == (7, generation) and space.mark("u", "b") == (None, generation)


def test_an_older_generation_never_overwrites_a_newer_one(store) -> None:
    space = store.state_space("m/v2")
    old = space.open_generation()
    store.client.delete(store.key("m/v2", "generation"))  # Redis lost it; another process starts anew
    new = space.open_generation()
    assert new != old and space.generation() == new
    assert space.compare_and_set([UserWrite("u", 0, b"rebuilt", b"w", 3)], "a", new) == [WRITTEN]
    assert space.compare_and_set([UserWrite("u", 1, b"stale", b"w", 9)], "b", old) == [GENERATION_LOST]
    assert space.states(["u"]) == [(b"rebuilt", new)]


def test_hints_only_rise_and_belong_to_their_generation(store) -> None:
    space = store.state_space("m/v3")
    generation = space.open_generation()
    space.raise_hint(generation, "a", 10)
    space.raise_hint(generation, "a", 4)
    assert space.hints(generation) == {"a": 10}
    assert space.hints(b"another") == {}
    assert space.add_new_users(["x", "y"]) == 2 and space.add_new_users(["x"]) == 0
    assert space.count_new_users() == 2
