"""An application's feedback, durable before it is acknowledged, replayed on start.

Each record holds what the policy learned from (user, the models evaluated, their outputs, the
target), so replaying it rebuilds Exp3/Exp4 weights and every user's ridge state exactly, with no
model evaluated again. It is storage/durable_log.py's log in one file: concurrent observations
share one write and one fsync on the log's writer thread (group commit), off the event loop; a
torn last line (a crash mid-write, never acknowledged) is cut off on open, a damaged record is
skipped and reported and every other record kept. The file is read once, as a stream, at open.

With several frontends over one home (frontends.py) each writes its own file and tails the
others' (FeedbackTail), so every frontend's policy learns from all the feedback acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from veloxserve.storage import frames
from veloxserve.storage.durable_log import DurableLog
from veloxserve.storage.log_files import Entry, SingleFile, parse


class FeedbackLog:
    """Append-only records under one path; `append` returns once its record is fsynced."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._records: list[dict[str, Any]] = []
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[int]]] = {}
        self._lock = threading.Lock()  # _waiting: filled by appends, settled by the log's writer
        self._log = DurableLog(
            SingleFile(self.path),
            f"Clipper feedback log {self.path}",
            refusal="nothing was acknowledged or learned",
            resumes="feedback is accepted again",
            on_recovered=self._recovered,
            thread_name=f"feedback-{self.path.stem}",
        )
        self._log.add_commit_hook(self._durable, self._refused)

    def _recovered(self, entry: Entry) -> None:
        entry.record.pop("lsn", None)
        self._records.append(entry.record)

    @property
    def damage(self) -> list[frames.Damage]:
        return self._log.damage

    def health(self) -> list[str]:
        return self._log.health()

    def replay(self) -> Iterator[dict[str, Any]]:
        """The records found on open, oldest first (once)."""
        records, self._records = self._records, []
        return iter(records)

    async def append(self, record: dict[str, Any]) -> int:
        """Return `record`'s LSN once it is on disk (fsynced); StoreUnavailable if the disk refused it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        body = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
        with self._lock:
            lsn = self._log.append_records([body])
            self._waiting[lsn] = (loop, future)
        return await future

    def _durable(self, durable: int) -> None:  # the writer thread
        with self._lock:
            done = [lsn for lsn in self._waiting if lsn <= durable]
            settled = [(lsn, *self._waiting.pop(lsn)) for lsn in done]
        for lsn, loop, future in settled:
            _tell(loop, future, lsn, None)

    def _refused(self, first: int, last: int) -> None:  # the writer thread
        with self._lock:
            done = [lsn for lsn in self._waiting if first <= lsn <= last]
            settled = [(lsn, *self._waiting.pop(lsn)) for lsn in done]
        for lsn, loop, future in settled:
            _tell(loop, future, lsn, self._log.refused(lsn))

    def close(self) -> None:
        self._log.close()


class FeedbackTail:
    """Another frontend's feedback file, read as it grows: `read` returns the whole records added
    since the last call (a record being written, not yet whole, waits for the next call; a damaged
    one is skipped). Read-only, so it is safe while the other frontend appends."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._offset = 0

    def read(self) -> list[dict[str, Any]]:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return []
        records: list[dict[str, Any]] = []
        with fh:
            if _size(fh) < self._offset:  # removed and written again (an application of that name)
                self._offset = 0
            fh.seek(self._offset)
            for found in frames.scan(fh, self.path, self._offset):
                if isinstance(found, frames.Torn):
                    return records
                self._offset = fh.tell()  # past the line scanned (a salvaged line yields all its frames first)
                record = parse(found.body) if isinstance(found, frames.Frame) else None
                if record is not None:
                    record.pop("lsn", None)
                    records.append(record)
        return records


def _size(fh: Any) -> int:
    return os.fstat(fh.fileno()).st_size


def _tell(loop: asyncio.AbstractEventLoop, future: asyncio.Future[int], lsn: int, error: BaseException | None) -> None:
    """Settle an appender's future on its own loop; a loop already closed has nobody left to tell."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, future, lsn, error)


def _settle(future: asyncio.Future[int], lsn: int, error: BaseException | None) -> None:
    if future.done():  # the caller went away (cancelled)
        return
    if error is None:
        future.set_result(lsn)
    else:
        future.set_exception(error)
