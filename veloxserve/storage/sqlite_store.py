"""SQLiteUserStore: the embedded, durable default (docs/storage.md says why SQLite).

WAL mode with synchronous=NORMAL: a checkpoint is one transaction, atomic and consistent; its
durability on power loss is not needed because the observation log (fsynced by group commit)
can always replay what a lost checkpoint held.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from veloxserve.errors import StoreUnavailable
from veloxserve.storage.user_store import Checkpoint, UserStore, check_states

_SCHEMA = """
CREATE TABLE IF NOT EXISTS user_state (
    namespace TEXT NOT NULL, user TEXT NOT NULL, state BLOB NOT NULL, PRIMARY KEY (namespace, user)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoint (namespace TEXT PRIMARY KEY, version TEXT NOT NULL, lsn INTEGER NOT NULL);
"""


class SQLiteUserStore(UserStore):
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db: sqlite3.Connection | None = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"Cannot open the user store {self.path}: {exc}. Check the path and disk.") from exc

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreUnavailable(f"The user store {self.path} is closed.")
        return self._db

    def _run(self, sql: str, args: tuple = ()) -> list[tuple]:
        with self._lock:
            try:
                return self._conn().execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"User store {self.path} failed: {exc}.") from exc

    def get(self, namespace: str, user: str) -> bytes | None:
        rows = self._run("SELECT state FROM user_state WHERE namespace = ? AND user = ?", (namespace, user))
        return bytes(rows[0][0]) if rows else None

    def write_checkpoint(
        self, namespace: str, states: Mapping[str, bytes], checkpoint: Checkpoint, *, replace_all: bool = False
    ) -> None:
        check_states(states)
        with self._lock:
            db = self._conn()
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    if replace_all:
                        db.execute("DELETE FROM user_state WHERE namespace = ?", (namespace,))
                    db.executemany(
                        "INSERT OR REPLACE INTO user_state (namespace, user, state) VALUES (?, ?, ?)",
                        ((namespace, user, bytes(state)) for user, state in states.items()),
                    )
                    db.execute(
                        "INSERT OR REPLACE INTO checkpoint (namespace, version, lsn) VALUES (?, ?, ?)",
                        (namespace, checkpoint.version, checkpoint.lsn),
                    )
                    db.execute("COMMIT")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"Checkpoint to {self.path} failed: {exc}.") from exc

    def checkpoint(self, namespace: str) -> Checkpoint | None:
        rows = self._run("SELECT version, lsn FROM checkpoint WHERE namespace = ?", (namespace,))
        return Checkpoint(rows[0][0], int(rows[0][1])) if rows else None

    def scan(self, namespace: str) -> Iterator[tuple[str, bytes]]:
        rows = self._run("SELECT user, state FROM user_state WHERE namespace = ?", (namespace,))
        for user, state in rows:
            yield user, bytes(state)

    def delete(self, namespace: str, user: str) -> bool:
        with self._lock:
            try:
                cur = self._conn().execute("DELETE FROM user_state WHERE namespace = ? AND user = ?", (namespace, user))
                return cur.rowcount > 0
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"User store {self.path} failed: {exc}.") from exc

    def count(self, namespace: str) -> int:
        return int(self._run("SELECT COUNT(*) FROM user_state WHERE namespace = ?", (namespace,))[0][0])

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
