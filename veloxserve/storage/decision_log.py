"""The decision log: every served top-k list with its policy and each item's propensity.

Off-policy evaluation needs to know not only what users did but what they were shown and with
which probability. Decisions are context, not acknowledged data, so this is storage/durable_log.py's
log without an fsync per request: appends are buffered and written by the log's writer every
`flush_seconds` (and on close, fsynced), so logging them costs a top-k request microseconds; a
crash can lose the last fraction of a second of decisions, never an observation. A write the disk
refuses is kept (bounded) and retried, never refused to the request. Files hold one frame of
storage/frames.py per decision, one file per UTC day: a damaged line loses that decision only,
and is reported.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from veloxserve.storage import log_files
from veloxserve.storage.durable_log import DurableLog, OnFailure
from veloxserve.storage.log_files import FilesByDay


def new_decision_id() -> str:
    return secrets.token_hex(8)


def _layout(directory: Path) -> FilesByDay:
    return FilesByDay(Path(directory), "decisions-")


class DecisionLog(DurableLog):
    def __init__(self, directory: Path, *, flush_seconds: float = 0.2) -> None:
        self.directory = Path(directory)
        super().__init__(
            _layout(self.directory),
            f"decision log in {self.directory}",
            fsync=False,
            commit_delay=flush_seconds,
            linger_always=True,
            on_failure=OnFailure.RETRY,
            resumes="decisions are written again",
            thread_name="decision-log",
        )

    def append(self, record: dict[str, Any]) -> int:
        """Log one decision; returns its LSN. Never waits for the disk."""
        return self.append_records([orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)])

    def close(self) -> None:
        """Write what is buffered, then fsync the day's file: a clean shutdown loses no decision."""
        super().close()
        paths = self.layout.segments()
        if paths:
            with open(paths[-1][1], "rb+") as fh:
                os.fsync(fh.fileno())


def read_decisions(directory: Path) -> Iterator[dict[str, Any]]:
    """Every logged decision, oldest file first; a damaged record is skipped and reported, a torn
    last line (a crash mid-flush) skipped."""
    for entry in log_files.read(_layout(directory), report="decision log"):
        yield entry.record
