"""The contract every user store passes. Adding a store is one entry in STORES."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from veloxserve.errors import StoreUnavailable
from veloxserve.storage.lmdb_store import LMDBUserStore
from veloxserve.storage.redis_store import RedisUserStore
from veloxserve.storage.sqlite_store import SQLiteUserStore
from veloxserve.storage.user_store import Checkpoint, MemoryUserStore, UserStore

STORES = {
    "memory": lambda tmp: MemoryUserStore(),
    "sqlite": lambda tmp: SQLiteUserStore(tmp / "state.sqlite"),
    "lmdb": lambda tmp: LMDBUserStore(tmp / "state.lmdb"),
    "redis": lambda tmp: RedisUserStore(tmp),  # tmp: the test's own Redis URL (prefix) here
}


@pytest.fixture(params=sorted(STORES))
def store(request, tmp_path: Path) -> Iterator[UserStore]:
    where = request.getfixturevalue("redis_url") if request.param == "redis" else tmp_path
    s = STORES[request.param](where)
    yield s
    s.close()


def test_get_of_an_unknown_user_is_none(store) -> None:
    assert store.get("m", "nobody") is None
    assert store.checkpoint("m") is None
    assert store.count("m") == 0


def test_checkpoint_writes_states_and_position_together(store) -> None:
    store.write_checkpoint("m", {"a": b"1", "b": b"2"}, Checkpoint("v1", 10))
    assert store.get("m", "a") == b"1" and store.get_many("m", ["b", "zz"]) == [b"2", None]
    assert store.checkpoint("m") == Checkpoint("v1", 10)
    store.write_checkpoint("m", {"a": b"3"}, Checkpoint("v1", 12))
    assert dict(store.scan("m")) == {"a": b"3", "b": b"2"}
    assert store.checkpoint("m") == Checkpoint("v1", 12)


def test_replace_all_drops_states_not_in_the_checkpoint(store) -> None:
    store.write_checkpoint("m", {"a": b"1", "b": b"2"}, Checkpoint("v1", 10))
    store.write_checkpoint("m", {"c": b"3"}, Checkpoint("v2", 11), replace_all=True)
    assert dict(store.scan("m")) == {"c": b"3"} and store.count("m") == 1


def test_namespaces_are_isolated(store) -> None:
    store.write_checkpoint("m", {"a": b"1"}, Checkpoint("v1", 1))
    store.write_checkpoint("n", {"a": b"2"}, Checkpoint("v7", 5), replace_all=True)
    assert store.get("m", "a") == b"1" and store.get("n", "a") == b"2"
    assert store.checkpoint("m") == Checkpoint("v1", 1)


def test_delete_removes_one_user(store) -> None:
    store.write_checkpoint("m", {"a": b"1", "b": b"2"}, Checkpoint("v1", 1))
    assert store.delete("m", "a") is True
    assert store.delete("m", "a") is False
    assert store.get("m", "a") is None and store.count("m") == 1


def test_a_failing_checkpoint_changes_nothing(store) -> None:
    store.write_checkpoint("m", {"a": b"1"}, Checkpoint("v1", 1))
    with pytest.raises(TypeError):
        store.write_checkpoint("m", {"a": b"9", "b": "not bytes"}, Checkpoint("v1", 2))  # type: ignore[dict-item]
    assert store.get("m", "a") == b"1" and store.get("m", "b") is None
    assert store.checkpoint("m") == Checkpoint("v1", 1)


@pytest.mark.parametrize("durable", ["sqlite", "lmdb"])
def test_embedded_stores_persist_across_reopen(tmp_path: Path, durable: str) -> None:
    with STORES[durable](tmp_path) as first:
        first.write_checkpoint("m", {"a": b"\x00\xff" * 1000}, Checkpoint("v3", 99))
    with STORES[durable](tmp_path) as second:
        assert second.get("m", "a") == b"\x00\xff" * 1000
        assert second.checkpoint("m") == Checkpoint("v3", 99)


def test_sqlite_errors_become_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "dir.sqlite").mkdir()
    with pytest.raises(StoreUnavailable, match="dir.sqlite"):
        SQLiteUserStore(tmp_path / "dir.sqlite")
    store = SQLiteUserStore(tmp_path / "ok.sqlite")
    store.close()
    with pytest.raises(StoreUnavailable, match="closed"):
        store.get("m", "a")
