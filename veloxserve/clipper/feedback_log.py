"""An application's feedback, durable before it is acknowledged, replayed on start.

Each record holds what the policy learned from (user, the models evaluated, their outputs, the
target), so replaying it rebuilds Exp3/Exp4 weights and every user's ridge state exactly, with no
model evaluated again. Appends are group-committed: concurrent observations share one write and
one fsync, done off the event loop. A torn last line (a crash mid-write, never acknowledged) is cut
off on open.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from veloxserve.errors import StoreUnavailable


class FeedbackLog:
    """Append-only JSON lines under one path."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._records = self._read_and_repair()
        self._file = open(self.path, "ab")
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    def _read_and_repair(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        records, good = [], 0
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                break
            good += len(line)
        if good != len(data):
            with open(self.path, "r+b") as fh:
                fh.truncate(good)
                os.fsync(fh.fileno())
        return records

    def replay(self) -> Iterator[dict[str, Any]]:
        """The records found on open, oldest first (once)."""
        records, self._records = self._records, []
        return iter(records)

    async def append(self, record: dict[str, Any]) -> None:
        """Return once `record` is on disk (fsynced)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n", future))
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write())
        await future

    async def _write(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await loop.run_in_executor(None, self._write_synced, b"".join(line for line, _ in batch))
            except OSError as exc:
                error = StoreUnavailable(f"Cannot write the feedback log {self.path}: {exc}.")
                for _, future in batch:
                    future.set_exception(error)
                continue
            for _, future in batch:
                future.set_result(None)

    def _write_synced(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()
