"""An application's feedback, durable before it is acknowledged, replayed on start.

Each record holds what the policy learned from (user, the models evaluated, their outputs, the
target), so replaying it rebuilds Exp3/Exp4 weights and every user's ridge state exactly, with no
model evaluated again. Appends are group-committed: concurrent observations share one write and
one fsync, done off the event loop. Records are frames of storage/frames.py, the framing of every
log: a torn last line (a crash mid-write, never acknowledged) is cut off on open, a damaged record
is skipped and reported and every other record kept. The file is read once, as a stream, at open.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from veloxserve.errors import StoreUnavailable
from veloxserve.storage import frames


class FeedbackLog:
    """Append-only JSON lines under one path."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.damage: list[frames.Damage] = []
        self._records = self._read_and_repair()
        self._file = open(self.path, "ab", buffering=0)
        self._pending: list[tuple[bytes, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None

    def _read_and_repair(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        records: list[dict[str, Any]] = []
        with open(self.path, "rb") as fh:
            for entry in frames.scan(fh, self.path):
                if isinstance(entry, frames.Frame):
                    records.append(orjson.loads(entry.body))
                elif isinstance(entry, frames.Damage):
                    frames.report(entry, "Clipper feedback log")
                    self.damage.append(entry)
                else:  # torn: never acknowledged
                    with open(self.path, "r+b") as out:
                        out.truncate(entry.offset)
                        os.fsync(out.fileno())
        return records

    def replay(self) -> Iterator[dict[str, Any]]:
        """The records found on open, oldest first (once)."""
        records, self._records = self._records, []
        return iter(records)

    async def append(self, record: dict[str, Any]) -> None:
        """Return once `record` is on disk (fsynced)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((frames.encode(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)), future))
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
        size = os.fstat(self._file.fileno()).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[self._file.write(view):]
            os.fsync(self._file.fileno())
        except OSError:
            os.ftruncate(self._file.fileno(), size)  # a refused batch leaves nothing to replay
            raise

    def close(self) -> None:
        self._file.close()
