"""The durable observation log: append-only segments, group commit, replay.

Every observation is appended here and acknowledged only once fsynced. One writer thread drains
all queued records with one write() and one fsync() per batch, so while one fsync runs the next
batch accumulates: the cost of durability is amortised over concurrent requests (group commit)
instead of one fsync per request.

A record is one line, `<crc32 hex> <json>\n`, so a torn tail after a crash is detected and cut
off on open, and pandas, DuckDB or `jq` can still read the JSON part. Segments are named by their
first LSN, so replay from a position skips whole files.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from veloxserve.errors import StoreUnavailable
from veloxserve.storage.atomic import fsync_dir, replace_atomically

_PREFIX = "segment-"
_SUFFIX = ".log"


@dataclass(frozen=True, slots=True)
class ObservationRecord:
    lsn: int
    timestamp: float
    user: str
    item: str
    score: float
    version: str
    erased: bool = False
    decision: str | None = None  # the served list (decision log) this observation answers, if any  # a forgotten user's record: only its LSN is kept, so positions stay valid


def _encode(lsn: int, ts: float, user: str, item: str, score: float, version: str, decision: str | None = None) -> bytes:
    record = {"lsn": lsn, "ts": ts, "user": user, "item": item, "score": score, "version": version}
    if decision is not None:
        record["decision"] = decision
    body = orjson.dumps(record)
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _encode_erased(lsn: int) -> bytes:
    body = orjson.dumps({"lsn": lsn, "erased": True})
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _decode(line: bytes) -> ObservationRecord | None:
    """The record of one line, or None if the line is torn or corrupt."""
    if len(line) < 11 or not line.endswith(b"\n") or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        d = orjson.loads(body)
        if d.get("erased"):
            return ObservationRecord(d["lsn"], 0.0, "", "", 0.0, "", True)
        return ObservationRecord(d["lsn"], d["ts"], d["user"], d["item"], d["score"], d["version"], False, d.get("decision"))
    except (ValueError, KeyError, TypeError):
        return None


def _segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.iterdir():
        name = path.name
        if name.startswith(_PREFIX) and name.endswith(_SUFFIX):
            found.append((int(name[len(_PREFIX) : -len(_SUFFIX)]), path))
    return sorted(found)


def read_log(directory: Path, after_lsn: int = 0, upto_lsn: int | None = None) -> Iterator[ObservationRecord]:
    """Records with after_lsn < lsn <= upto_lsn, in order, read-only: safe while a server appends
    to the log. Erased records (forgotten users) are skipped."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    segments = _segments(directory)
    for index, (_, path) in enumerate(segments):
        following = segments[index + 1][0] if index + 1 < len(segments) else None
        if following is not None and following <= after_lsn + 1:
            continue  # the whole segment is at or before after_lsn
        with open(path, "rb") as fh:
            for line in fh:
                record = _decode(line)
                if record is None:  # a write in progress, or a tail cut on the next open
                    return
                if upto_lsn is not None and record.lsn > upto_lsn:
                    return
                if record.lsn > after_lsn and not record.erased:
                    yield record


MAIN_INSTANCE = "main"  # the log of a home served by one process: models/<name>/log/ itself
INSTANCES_DIR = "instances"  # several processes over a shared store: models/<name>/log/instances/<id>/


def instance_logs(log_dir: Path) -> list[tuple[str, Path]]:
    """Every server instance's log of one model: (instance id, directory), the main log first."""
    log_dir = Path(log_dir)
    found = [(MAIN_INSTANCE, log_dir)]
    others = log_dir / INSTANCES_DIR
    if others.is_dir():
        found += sorted((p.name, p) for p in others.iterdir() if p.is_dir())
    return found


def read_merged(log_dir: Path, upto: Mapping[str, int] | None = None) -> Iterator[tuple[str, ObservationRecord]]:
    """(instance, record) from every instance's log of a model, merged by time (then instance and
    LSN): the training data of several server processes. `upto` bounds an instance's LSNs."""
    upto = upto or {}

    def stream(instance: str, directory: Path) -> Iterator[tuple[float, str, int, ObservationRecord]]:
        for record in read_log(directory, 0, upto.get(instance)):
            yield record.timestamp, instance, record.lsn, record

    streams = [stream(instance, directory) for instance, directory in instance_logs(log_dir)]
    for _, instance, _, record in heapq.merge(*streams, key=lambda entry: entry[:3]):
        yield instance, record


def _rewrite_without(path: Path, users: set[str]) -> int:
    with open(path, "rb") as fh:
        lines = fh.readlines()
    out, erased = [], 0
    for line in lines:
        record = _decode(line)
        if record is not None and not record.erased and record.user in users:
            out.append(_encode_erased(record.lsn))
            erased += 1
        else:
            out.append(line)
    if erased:
        replace_atomically(path, lambda fh: fh.writelines(out))
    return erased


class ObservationLog:
    """Append-only, crash-safe log of one model's observations."""

    def __init__(
        self, directory: Path, *, fsync: bool = True, segment_bytes: int = 64 << 20, commit_delay: float = 0.0
    ) -> None:
        self.directory = Path(directory)
        self._commit_delay = commit_delay
        self._concurrent = False  # were appends arriving concurrently with the last batch?
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()  # held while the writer touches the file; erase_users takes it too
        self._wake = threading.Condition(self._lock)
        self._durable = threading.Condition(threading.Lock())
        self._listeners: list[Callable[[int], None]] = []
        self._pending: list[tuple[bytes, int]] = []
        self._closed = False
        self._failure: StoreUnavailable | None = None
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._last_lsn = self._recover_tail()
        except OSError as exc:
            raise StoreUnavailable(f"Cannot open the observation log in {self.directory}: {exc}.") from exc
        self._durable_lsn = self._last_lsn
        self._file = None
        self._file_size = 0
        self._writer = threading.Thread(target=self._write_loop, name=f"log-{self.directory.parent.name}", daemon=True)
        self._writer.start()

    # ---- opening -------------------------------------------------------------------------
    def _segments(self) -> list[tuple[int, Path]]:
        return _segments(self.directory)

    def _recover_tail(self) -> int:
        """Find the last valid LSN and cut a torn or corrupt tail off the last segment."""
        segments = self._segments()
        while segments:
            first, path = segments[-1]
            last, valid_bytes = first - 1, 0
            with open(path, "rb") as fh:
                for line in fh:
                    record = _decode(line)
                    if record is None or record.lsn != last + 1:  # erased records keep their LSN
                        break
                    last, valid_bytes = record.lsn, valid_bytes + len(line)
            if valid_bytes < path.stat().st_size:
                with open(path, "rb+") as fh:
                    fh.truncate(valid_bytes)
                    fh.flush()
                    os.fsync(fh.fileno())
            if valid_bytes == 0 and len(segments) > 1:  # an empty last segment: drop it
                path.unlink()
                segments.pop()
                continue
            return last
        return 0

    # ---- appending -----------------------------------------------------------------------
    @property
    def last_lsn(self) -> int:
        return self._last_lsn

    @property
    def durable_lsn(self) -> int:
        return self._durable_lsn

    def append(self, rows: Sequence[tuple]) -> int:
        """Queue (user, item, score, version[, decision]) rows and return their last LSN at once.

        The rows are durable once `durable_lsn` reaches that LSN: wait with `wait_durable`, or
        `subscribe` to be told after every group commit.
        """
        ts = time.time()
        with self._lock:
            if self._failure is not None:
                raise self._failure
            if self._closed:
                raise StoreUnavailable(f"The observation log in {self.directory} is closed.")
            lsn = self._last_lsn
            chunks = []
            for user, item, score, version, *decision in rows:
                lsn += 1
                chunks.append(_encode(lsn, ts, user, item, score, version, decision[0] if decision else None))
            self._last_lsn = lsn
            self._pending.append((b"".join(chunks), lsn))
            self._wake.notify()
        return lsn

    def append_and_wait(self, rows: Sequence[tuple], timeout: float | None = None) -> int:
        lsn = self.append(rows)
        self.wait_durable(lsn, timeout)
        return lsn

    def wait_durable(self, lsn: int, timeout: float | None = None) -> int:
        """Block until every record up to `lsn` is fsynced; StoreUnavailable if the log failed."""
        with self._durable:
            if not self._durable.wait_for(lambda: self._durable_lsn >= lsn or self._failure is not None, timeout):
                raise StoreUnavailable(f"The observation log in {self.directory} did not make LSN {lsn} durable "
                                       f"within {timeout} s; the disk may be stalled.")
        if self._durable_lsn < lsn:
            raise self._failure  # type: ignore[misc]
        return self._durable_lsn

    def sync(self, timeout: float | None = None) -> int:
        """Wait until everything appended so far is durable; returns that LSN."""
        return self.wait_durable(self._last_lsn, timeout)

    def subscribe(self, listener: Callable[[int], None]) -> None:
        """Call `listener(durable_lsn)` from the writer thread after every group commit (and with
        -1 if the log fails). One call per batch, however many records it held."""
        self._listeners.append(listener)

    @property
    def failure(self) -> StoreUnavailable | None:
        return self._failure

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wake.wait()
                linger = self._commit_delay and self._concurrent and not self._closed and len(self._pending) < 64
            if linger:
                # Like PostgreSQL's commit_delay (with commit_siblings): when appends are arriving
                # concurrently, let them join this fsync, so a busy server pays one thread hand-off
                # and one fsync per batch, not per request. A lone client never waits.
                time.sleep(self._commit_delay)
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch and self._closed:
                    return
            try:
                with self._io_lock:
                    self._write(b"".join(data for data, _ in batch))
            except OSError as exc:
                with self._lock:
                    self._failure = StoreUnavailable(f"Writing the observation log in {self.directory} failed: {exc}.")
                    self._pending = []
                self._publish(-1)
                return
            self._concurrent = len(batch) > 1 or bool(self._pending)  # others arrived during the fsync
            self._publish(batch[-1][1])

    def _publish(self, lsn: int) -> None:
        with self._durable:
            if lsn >= 0:
                self._durable_lsn = lsn
            self._durable.notify_all()
        for listener in self._listeners:
            listener(lsn)

    def _write(self, data: bytes) -> None:
        if not data:
            return
        if self._file is None or self._file_size >= self._segment_bytes:  # roll at batch boundaries
            self._open_segment(data)
        self._file.write(data)
        self._file.flush()
        if self._fsync:
            os.fdatasync(self._file.fileno())
        self._file_size += len(data)

    def _open_segment(self, data: bytes) -> None:
        first_lsn = orjson.loads(data[9 : data.index(b"\n")])["lsn"]
        segments = self._segments()
        if self._file is None and segments and segments[-1][1].stat().st_size < self._segment_bytes:
            path = segments[-1][1]  # continue the last segment after a restart
        else:
            if self._file is not None:
                self._file.close()
            path = self.directory / f"{_PREFIX}{first_lsn:020d}{_SUFFIX}"
        self._file = open(path, "ab")
        self._file_size = self._file.tell()
        fsync_dir(self.directory)

    # ---- reading -------------------------------------------------------------------------
    def replay(self, after_lsn: int = 0, upto_lsn: int | None = None) -> Iterator[ObservationRecord]:
        """Records with after_lsn < lsn <= upto_lsn, in order."""
        return read_log(self.directory, after_lsn, upto_lsn)

    # ---- forgetting ----------------------------------------------------------------------
    def erase_users(self, users: set[str]) -> int:
        """Replace every record of `users` by an erased marker (same LSN, no data); returns how many.

        Segments holding such records are rewritten to a temporary file, fsynced and renamed over
        the old one, so a crash leaves the old or the new segment, never a mix. Appends wait meanwhile.
        """
        self.sync()
        with self._lock, self._io_lock:
            if self._pending:  # appended between sync() and taking the locks
                batch, self._pending = self._pending, []
                self._write(b"".join(data for data, _ in batch))
                self._publish(batch[-1][1])
            if self._file is not None:
                self._file.close()
                self._file = None  # reopened (appending to the last segment) by the next write
            return sum(_rewrite_without(path, users) for _, path in self._segments())

    def close(self) -> None:
        """Write what is queued, stop the writer, close the file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
        self._writer.join()
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ObservationLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
