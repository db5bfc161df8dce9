"""The files of a durable log (storage/durable_log.py): where its records go, and reading them back.

A record is a JSON object with its LSN written first (`{"lsn": n, …}`), in one frame of
storage/frames.py. Each log has one layout, and the layout is all that differs between logs on disk:

    SegmentsBySequence   segment-<first LSN, 20 digits>.log, rolled at a size (observations):
                         replay from a position skips whole files
    SingleFile           one file (a Clipper application's feedback)
    FilesByDay           <prefix>-YYYY-MM-DD.jsonl, one per UTC day (decisions)
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from veloxserve.storage import frames


class Layout(Protocol):
    """The files of one log. `directory` is created on open and fsynced when a file appears."""

    directory: Path

    def segments(self) -> list[tuple[int, Path]]:
        """Every file of the log in order, each with the first LSN its name says (0: not named)."""
        ...

    def target(self, first_lsn: int, current: Path | None, current_size: int) -> Path:
        """The file the batch starting at `first_lsn` is appended to (`current` is the open one)."""
        ...


class SegmentsBySequence:
    """Segments named by their first LSN, a new one started at a batch boundary past `segment_bytes`."""

    def __init__(
        self, directory: Path, segment_bytes: int = 64 << 20, prefix: str = "segment-", suffix: str = ".log"
    ) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.prefix, self.suffix = prefix, suffix

    def segments(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.directory.iterdir():
            name = path.name
            number = name[len(self.prefix) : -len(self.suffix)]
            if name.startswith(self.prefix) and name.endswith(self.suffix) and number.isdigit():
                found.append((int(number), path))
        return sorted(found)

    def target(self, first_lsn: int, current: Path | None, current_size: int) -> Path:
        if current is not None and current_size < self.segment_bytes:
            return current
        if current is None:  # after a restart: continue the last segment while it has room
            segments = self.segments()
            if segments and segments[-1][1].stat().st_size < self.segment_bytes:
                return segments[-1][1]
        return self.directory / f"{self.prefix}{first_lsn:020d}{self.suffix}"


class SingleFile:
    """The whole log in one file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.directory = self.path.parent

    def segments(self) -> list[tuple[int, Path]]:
        return [(0, self.path)] if self.path.exists() else []

    def target(self, first_lsn: int, current: Path | None, current_size: int) -> Path:
        return self.path


class FilesByDay:
    """One file per UTC day, named so that sorting the names sorts the days."""

    def __init__(self, directory: Path, prefix: str, suffix: str = ".jsonl") -> None:
        self.directory = Path(directory)
        self.prefix, self.suffix = prefix, suffix

    def segments(self) -> list[tuple[int, Path]]:
        return [(0, path) for path in sorted(self.directory.glob(f"{self.prefix}*{self.suffix}"))]

    def target(self, first_lsn: int, current: Path | None, current_size: int) -> Path:
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        return self.directory / f"{self.prefix}{day}{self.suffix}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One valid record: its LSN, its JSON object, and where its frame starts."""

    lsn: int
    record: dict[str, Any]
    offset: int


def number(lsn: int, body: bytes) -> bytes:
    """The frame of one JSON object with `lsn` written first into it."""
    numbered = b'{"lsn":%d,' % lsn + body[1:] if len(body) > 2 else b'{"lsn":%d}' % lsn
    return frames.encode(numbered)


def parse(body: bytes) -> dict[str, Any] | None:
    try:
        record = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def lsn_of(record: dict[str, Any], previous: int) -> int | None:
    """A record's LSN; a record written before logs numbered theirs is numbered by its position."""
    lsn = record.get("lsn", previous + 1)
    return lsn if isinstance(lsn, int) and not isinstance(lsn, bool) else None


def scan(path: Path, last_file: bool, previous: int = 0) -> Iterator[Entry | frames.Damage | frames.Torn]:
    """One file's records in order, its damaged runs, and (last file only) a torn tail. A record
    whose LSN does not exceed the one before it (damage whose CRC still matched, vanishingly
    rare) is damage too: LSNs only grow."""
    with open(path, "rb") as fh:
        for found in frames.scan(fh, path):
            if isinstance(found, frames.Torn):
                if not last_file:
                    found = frames.Damage(path, found.offset, path.stat().st_size - found.offset)
                yield found
                return
            if isinstance(found, frames.Damage):
                yield found
                continue
            record = parse(found.body)
            lsn = None if record is None else lsn_of(record, previous)
            if record is None or lsn is None or lsn <= previous:
                yield frames.Damage(path, found.offset, len(found.body) + 10)
                continue
            previous = lsn
            yield Entry(lsn, record, found.offset)


def read(
    layout: Layout, after_lsn: int = 0, upto_lsn: int | None = None, *, report: str | None = None
) -> Iterator[Entry]:
    """Records with after_lsn < lsn <= upto_lsn, in order, read-only: safe while a writer
    appends. Damage is skipped (reported when the log was opened, or here as `report` says, for
    readers of a log no process opens); a torn tail ends it."""
    if not layout.directory.is_dir():
        return
    segments = layout.segments()
    previous = 0
    for index, (first, path) in enumerate(segments):
        following = segments[index + 1][0] if index + 1 < len(segments) else 0
        if following and following <= after_lsn + 1:
            continue  # the whole file is at or before after_lsn
        previous = max(previous, first - 1)
        for entry in scan(path, last_file=index == len(segments) - 1, previous=previous):
            if isinstance(entry, frames.Torn):  # a write in progress, or a tail cut on the next open
                return
            if isinstance(entry, frames.Damage):
                if report is not None:
                    frames.report(entry, report)
                continue
            previous = entry.lsn
            if upto_lsn is not None and entry.lsn > upto_lsn:
                return
            if entry.lsn > after_lsn:
                yield entry
