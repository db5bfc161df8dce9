"""LMDBUserStore: the embedded, durable default user store.

Chosen over SQLite by measurement (bench/store_choice.py, docs/storage.md): for 10,000 rank-50
states (~22 KB each) an LMDB checkpoint transaction is ~4× faster, point reads ~25× and a full
scan ~20×, and LMDB write transactions are just as atomic and durable (copy-on-write B+tree,
fsync at commit). States live in the `states` database under `<namespace>\\0<user>`; each
namespace's checkpoint in `checkpoints`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import lmdb

from veloxserve.errors import StoreUnavailable
from veloxserve.storage.user_store import Checkpoint, UserStore, check_states

_MAP_SIZE = 1 << 40  # address space only: the file grows with the data


def _key(namespace: str, user: str) -> bytes:
    return f"{namespace}\0{user}".encode()


class LMDBUserStore(UserStore):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._env: lmdb.Environment | None = lmdb.open(
                str(self.path), map_size=_MAP_SIZE, max_dbs=2, sync=True, metasync=True
            )
            self._states = self._env.open_db(b"states")
            self._checkpoints = self._env.open_db(b"checkpoints")
        except (lmdb.Error, OSError) as exc:
            raise StoreUnavailable(f"Cannot open the user store {self.path}: {exc}. Check the path and disk.") from exc

    def _env_or_fail(self) -> lmdb.Environment:
        if self._env is None:
            raise StoreUnavailable(f"The user store {self.path} is closed.")
        return self._env

    def get(self, namespace: str, user: str) -> bytes | None:
        try:
            with self._env_or_fail().begin(db=self._states) as txn:
                value = txn.get(_key(namespace, user))
        except lmdb.Error as exc:
            raise StoreUnavailable(f"User store {self.path} failed: {exc}.") from exc
        return None if value is None else bytes(value)

    def get_many(self, namespace: str, users: list[str]) -> list[bytes | None]:  # type: ignore[override]
        try:
            with self._env_or_fail().begin(db=self._states) as txn:
                return [None if (v := txn.get(_key(namespace, u))) is None else bytes(v) for u in users]
        except lmdb.Error as exc:
            raise StoreUnavailable(f"User store {self.path} failed: {exc}.") from exc

    def write_checkpoint(
        self, namespace: str, states: Mapping[str, bytes], checkpoint: Checkpoint, *, replace_all: bool = False
    ) -> None:
        check_states(states)
        try:
            with self._env_or_fail().begin(write=True) as txn:  # one transaction: all or nothing
                if replace_all:
                    self._delete_prefix(txn, namespace)
                for user, state in states.items():
                    txn.put(_key(namespace, user), bytes(state), db=self._states)
                txn.put(namespace.encode(), f"{checkpoint.version}\n{checkpoint.lsn}".encode(), db=self._checkpoints)
        except lmdb.Error as exc:
            raise StoreUnavailable(f"Checkpoint to {self.path} failed: {exc}.") from exc

    def _delete_prefix(self, txn: lmdb.Transaction, namespace: str) -> int:
        prefix = f"{namespace}\0".encode()
        cursor = txn.cursor(db=self._states)
        removed = 0
        if cursor.set_range(prefix):
            while bytes(cursor.key()).startswith(prefix):
                removed += 1
                if not cursor.delete():
                    break
        return removed

    def checkpoint(self, namespace: str) -> Checkpoint | None:
        try:
            with self._env_or_fail().begin(db=self._checkpoints) as txn:
                value = txn.get(namespace.encode())
        except lmdb.Error as exc:
            raise StoreUnavailable(f"User store {self.path} failed: {exc}.") from exc
        if value is None:
            return None
        version, lsn = bytes(value).decode().split("\n")
        return Checkpoint(version, int(lsn))

    def scan(self, namespace: str) -> Iterator[tuple[str, bytes]]:
        prefix = f"{namespace}\0".encode()
        try:
            with self._env_or_fail().begin(db=self._states) as txn:
                cursor = txn.cursor()
                found = []
                if cursor.set_range(prefix):
                    for key, value in cursor:
                        if not key.startswith(prefix):
                            break
                        found.append((key[len(prefix) :].decode(), bytes(value)))
        except lmdb.Error as exc:
            raise StoreUnavailable(f"User store {self.path} failed: {exc}.") from exc
        yield from found

    def delete(self, namespace: str, user: str) -> bool:
        try:
            with self._env_or_fail().begin(write=True, db=self._states) as txn:
                return txn.delete(_key(namespace, user))
        except lmdb.Error as exc:
            raise StoreUnavailable(f"User store {self.path} failed: {exc}.") from exc

    def count(self, namespace: str) -> int:
        return sum(1 for _ in self.scan(namespace))

    def close(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None
