"""The decision log: every served top-k list with its policy and each item's propensity.

Off-policy evaluation needs to know not only what users did but what they were shown and with
which probability. Decisions are context, not acknowledged data: they are buffered and written
by a background thread every `flush_seconds` (and on close), without an fsync per request, so
logging them costs a top-k request microseconds; a crash can lose the last fraction of a second
of decisions, never an observation. Files are JSON lines, one per day, readable by any tool.
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


def new_decision_id() -> str:
    return secrets.token_hex(8)


class DecisionLog:
    def __init__(self, directory: Path, *, flush_seconds: float = 0.2) -> None:
        self.directory = Path(directory)
        self._buffer: list[bytes] = []
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._flush_seconds = flush_seconds
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"Cannot create the decision log in {self.directory}: {exc}.") from exc
        self._thread = threading.Thread(target=self._loop, name="decision-log", daemon=True)
        self._thread.start()

    def append(self, record: dict[str, Any]) -> None:
        line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
        with self._lock:
            self._buffer.append(line)

    def flush(self, *, sync: bool = False) -> None:
        with self._lock:
            lines, self._buffer = self._buffer, []
        if not lines:
            return
        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        with open(self.directory / f"decisions-{day}.jsonl", "ab") as fh:
            fh.write(b"".join(lines))
            if sync:
                fh.flush()
                os.fsync(fh.fileno())

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
    """Every logged decision, oldest file first (a torn last line after a crash is skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("decisions-*.jsonl")):
        with open(path, "rb") as fh:
            for line in fh:
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
