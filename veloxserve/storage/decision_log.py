"""The decision log: every served top-k list with its policy and each item's propensity.

Off-policy evaluation needs to know not only what users did but what they were shown and with
which probability. Decisions are context, not acknowledged data: they are buffered and written
by a background thread every `flush_seconds` (and on close), without an fsync per request, so
logging them costs a top-k request microseconds; a crash can lose the last fraction of a second
of decisions, never an observation. Files hold one frame of storage/frames.py per decision (a CRC
and a JSON line), one file per day: a damaged line loses that decision only, and is reported.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from veloxserve.errors import StoreUnavailable
from veloxserve.storage import frames


def new_decision_id() -> str:
    return secrets.token_hex(8)


class DecisionLog:
    def __init__(self, directory: Path, *, flush_seconds: float = 0.2) -> None:
        self.directory = Path(directory)
        self._buffer: list[bytes] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._flush_seconds = flush_seconds
        self._failure: OSError | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"Cannot create the decision log in {self.directory}: {exc}.") from exc
        self._thread = threading.Thread(target=self._loop, name="decision-log", daemon=True)
        self._thread.start()

    def append(self, record: dict[str, Any]) -> None:
        line = frames.encode(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY))
        with self._lock:
            self._buffer.append(line)

    def flush(self, *, sync: bool = False) -> None:
        with self._lock:
            lines, self._buffer = self._buffer, []
        if not lines:
            return
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        path = self.directory / f"decisions-{day}.jsonl"
        with open(path, "ab", buffering=0) as fh:
            size = fh.tell()
            try:
                view = memoryview(b"".join(lines))
                while view:
                    view = view[fh.write(view):]
                if sync:
                    os.fsync(fh.fileno())
            except OSError as exc:
                os.ftruncate(fh.fileno(), size)  # no half decision left behind
                with self._lock:
                    self._buffer[:0] = lines[-100_000:]  # retried with the next flush (bounded)
                self._failure = exc
                raise
        self._failure = None

    def health(self) -> list[str]:
        if self._failure is None:
            return []
        return [f"the decision log in {self.directory} cannot be written ({self._failure.strerror}); "
                "decisions are buffered and retried"]

    def _loop(self) -> None:
        while not self._closed.wait(self._flush_seconds):
            try:
                self.flush()
            except OSError:  # keep serving; the next flush retries with what is buffered then
                time.sleep(self._flush_seconds)

    def close(self) -> None:
        self._closed.set()
        self._thread.join()
        self.flush(sync=True)


def read_decisions(directory: Path) -> Iterator[dict[str, Any]]:
    """Every logged decision, oldest file first; a damaged record is skipped and reported, a torn
    last line (a crash mid-flush) skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("decisions-*.jsonl")):
        with open(path, "rb") as fh:
            for entry in frames.scan(fh, path):
                if isinstance(entry, frames.Frame):
                    yield orjson.loads(entry.body)
                elif isinstance(entry, frames.Damage):
                    frames.report(entry, "decision log")
