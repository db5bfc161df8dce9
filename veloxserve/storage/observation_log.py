"""The durable observation log: append-only segments, group commit, replay.

Every observation is appended here and acknowledged only once fsynced. One writer thread drains
all queued records with one write() and one fsync() per batch, so while one fsync runs the next
batch accumulates: the cost of durability is amortised over concurrent requests (group commit)
instead of one fsync per request.

A record is one frame of storage/frames.py (`<crc32 hex> <json>\n`): a torn tail after a crash
is cut off on open, a damaged record is skipped (and reported) without losing its neighbours, and
pandas, DuckDB or `jq` can still read the JSON part. Segments are named by their first LSN, so
replay from a position skips whole files. LSNs only grow: after damage or a refused batch they may
skip numbers, never repeat one.

A batch the disk refuses (ENOSPC, EIO) is cut back off the segment and refused to exactly its
waiters; the writer carries on, so appends succeed again as soon as the disk does. Hooks added with
`add_commit_hook` run after each fsync and before anyone is told it is durable: the model server
learns there, so nothing is learned that was not made durable, and an acknowledgement already
reflects the learning.
"""

from __future__ import annotations

import bisect
import errno
import heapq
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from veloxserve.errors import InsufficientStorage, StoreUnavailable
from veloxserve.storage import frames
from veloxserve.storage.atomic import fsync_dir, replace_atomically

log = logging.getLogger(__name__)

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
    erased: bool = False  # a forgotten user's record: only its LSN is kept, so positions stay valid
    decision: str | None = None  # the served list (decision log) this observation answers, if any
    id: str | None = None  # the client's idempotency key: rebuilds serving/idempotency's window at start


def _encode(lsn: int, ts: float, user: str, item: str, score: float, version: str, decision: str | None = None,
            key: str | None = None) -> bytes:
    record = {"lsn": lsn, "ts": ts, "user": user, "item": item, "score": score, "version": version}
    if decision is not None:
        record["decision"] = decision
    if key is not None:
        record["id"] = key
    return frames.encode(orjson.dumps(record))


def _encode_erased(lsn: int) -> bytes:
    return frames.encode(orjson.dumps({"lsn": lsn, "erased": True}))


def _record(body: bytes) -> ObservationRecord | None:
    """The record of a frame's body, or None if it is not an observation record."""
    try:
        d = orjson.loads(body)
        if d.get("erased"):
            return ObservationRecord(int(d["lsn"]), 0.0, "", "", 0.0, "", True)
        return ObservationRecord(int(d["lsn"]), d["ts"], d["user"], d["item"], d["score"], d["version"], False,
                                 d.get("decision"), d.get("id"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _decode(line: bytes) -> ObservationRecord | None:
    """The record of one line, or None if the line is torn or corrupt."""
    if not line.endswith(b"\n"):
        return None
    body = frames.decode(line)
    return None if body is None else _record(body)


def _scan_records(path: Path, last_segment: bool) -> Iterator[ObservationRecord | frames.Damage | frames.Torn]:
    """A segment's records in order, its damaged runs, and (last segment only) a torn tail.

    A record whose LSN does not exceed the one before it (a damaged frame whose CRC still
    matched, vanishingly rare) is damage too: LSNs only grow."""
    previous = -1
    with open(path, "rb") as fh:
        for entry in frames.scan(fh, path):
            if isinstance(entry, frames.Torn):
                if last_segment:
                    yield entry
                    return
                yield frames.Damage(path, entry.offset, path.stat().st_size - entry.offset)
                return
            if isinstance(entry, frames.Damage):
                yield entry
                continue
            record = _record(entry.body)
            if record is None or record.lsn <= previous:
                yield frames.Damage(path, entry.offset, len(entry.body) + 10)
                continue
            previous = record.lsn
            yield record


def _segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.iterdir():
        name = path.name
        number = name[len(_PREFIX) : -len(_SUFFIX)]
        if name.startswith(_PREFIX) and name.endswith(_SUFFIX) and number.isdigit():
            found.append((int(number), path))
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
        for record in _scan_records(path, last_segment=following is None):
            if isinstance(record, frames.Torn):  # a write in progress, or a tail cut on the next open
                return
            if isinstance(record, frames.Damage):  # reported when the log was opened
                continue
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
    """Erase `users`' records from one segment. A damaged line that may hold one of them (it
    contains the user's id as JSON) is dropped too: a forgotten user must not survive in damage."""
    with open(path, "rb") as fh:
        lines = fh.readlines()
    needles = [orjson.dumps(user) for user in users]
    out, erased = [], 0
    for line in lines:
        record = _decode(line)
        if record is not None and not record.erased and record.user in users:
            out.append(_encode_erased(record.lsn))
            erased += 1
        elif record is None and line.endswith(b"\n") and any(n in line for n in needles):
            erased += 1
        else:
            out.append(line)
    if erased:
        replace_atomically(path, lambda fh: fh.writelines(out))
    return erased


class ObservationLog:
    """Append-only, crash-safe log of one model's observations."""

    _REFUSED_KEPT = 4096  # refused batches remembered, so a late waiter still learns it was refused
    _PROBE_S = 0.2  # while the disk refuses writes, let one batch through this often to notice it healed

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
        self._hooks: list[tuple[Callable[[int], None], Callable[[int, int], None]]] = []
        self._pending: list[tuple[bytes, int, int]] = []  # (frames, first LSN, last LSN)
        self._closed = False
        self._failure: StoreUnavailable | None = None  # the last write failed: refusing until one succeeds
        self._refused: list[tuple[int, int, StoreUnavailable]] = []  # (first, last, why), ascending
        self._next_probe = 0.0
        self.damage: list[frames.Damage] = []  # damaged runs found on open, reported once each
        self.write_failures = 0
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._last_lsn = self._recover()
        except OSError as exc:
            raise StoreUnavailable(f"Cannot open the observation log in {self.directory}: {exc}.") from exc
        self._durable_lsn = self._last_lsn
        self._file: Any = None
        self._file_size = 0
        self._writer = threading.Thread(target=self._write_loop, name=f"log-{self.directory.parent.name}", daemon=True)
        self._writer.start()

    # ---- opening -------------------------------------------------------------------------
    def _segments(self) -> list[tuple[int, Path]]:
        return _segments(self.directory)

    def _recover(self) -> int:
        """The highest valid LSN in any segment; a torn tail is cut off the last segment, and every
        damaged run anywhere is skipped, kept in place and reported."""
        segments = self._segments()
        while len(segments) > 1 and segments[-1][1].stat().st_size == 0:  # an empty last segment: drop it
            segments.pop()[1].unlink()
        last = unknown = 0  # `unknown`: damaged bytes after the last valid record, whose LSNs are lost
        for index, (first, path) in enumerate(segments):
            if first - 1 > last:
                last, unknown = first - 1, 0
            for entry in _scan_records(path, last_segment=index == len(segments) - 1):
                if isinstance(entry, frames.Torn):
                    record = None if entry.body is None else _record(entry.body)
                    with open(path, "rb+") as fh:
                        fh.truncate(entry.offset)
                        if record is not None and record.lsn > last:  # whole but for its newline
                            fh.seek(entry.offset)
                            fh.write(frames.encode(entry.body))
                            last, unknown = record.lsn, 0
                        os.fsync(fh.fileno())
                elif isinstance(entry, frames.Damage):
                    frames.report(entry, "observation log")
                    self.damage.append(entry)
                    unknown += entry.length
                elif entry.lsn > last:
                    last, unknown = entry.lsn, 0
        # Damage at the very end hides how far LSNs went: skip at least as many numbers as it has
        # bytes (every record takes more than one), so none is ever given out twice.
        return last + unknown

    def reserve_above(self, lsn: int) -> None:
        """Number every later record above `lsn`: a checkpoint or a version that claims LSNs the log
        no longer holds (its tail was lost) must never see those numbers reused for new records."""
        with self._lock:
            if lsn > self._last_lsn:
                log.error("%s: the log ends at LSN %d but state claims LSN %d; new records are numbered above it",
                          self.directory, self._last_lsn, lsn)
                self._last_lsn = lsn
                with self._durable:
                    self._durable_lsn = max(self._durable_lsn, lsn)

    def health(self) -> list[str]:
        """Why this log is degraded (empty when it is not): damage found on open, a failing disk."""
        reasons = [f"damaged record skipped in {d}" for d in self.damage[:5]]
        if len(self.damage) > 5:
            reasons.append(f"... and {len(self.damage) - 5} more damaged records in {self.directory}")
        if self._failure is not None:
            reasons.append(self._failure.message)
        return reasons

    # ---- appending -----------------------------------------------------------------------
    @property
    def last_lsn(self) -> int:
        return self._last_lsn

    @property
    def durable_lsn(self) -> int:
        return self._durable_lsn

    def append(self, rows: Sequence[tuple]) -> int:
        """Queue (user, item, score, version[, decision[, id]]) rows and return their last LSN at once.

        The rows are durable once `durable_lsn` reaches that LSN: wait with `wait_durable`, or
        `subscribe` to be told after every group commit. While the disk refuses writes, appends
        are refused at once (nothing is queued), until a write succeeds again.
        """
        ts = time.time()
        with self._lock:
            if self._failure is not None and not self._probe_due():
                raise self._failure
            if self._closed:
                raise StoreUnavailable(f"The observation log in {self.directory} is closed.")
            first = lsn = self._last_lsn
            chunks = []
            for user, item, score, version, *optional in rows:
                lsn += 1
                chunks.append(_encode(lsn, ts, user, item, score, version, *optional))
            self._last_lsn = lsn
            self._pending.append((b"".join(chunks), first + 1, lsn))
            self._wake.notify()
        return lsn

    def _probe_due(self) -> bool:
        """While failing, let one batch through now and then: it is how the log notices the disk healed."""
        now = time.monotonic()
        if now >= self._next_probe and not self._pending:
            self._next_probe = now + self._PROBE_S
            return True
        return False

    def refused(self, lsn: int) -> StoreUnavailable | None:
        """Why the batch holding `lsn` was refused, or None if it was not (or is not known)."""
        refused = self._refused
        at = bisect.bisect_right(refused, (lsn, float("inf"))) - 1
        if at >= 0 and refused[at][0] <= lsn <= refused[at][1]:
            return refused[at][2]
        return None

    def append_and_wait(self, rows: Sequence[tuple], timeout: float | None = None) -> int:
        lsn = self.append(rows)
        self.wait_durable(lsn, timeout)
        return lsn

    def wait_durable(self, lsn: int, timeout: float | None = None) -> int:
        """Block until every record up to `lsn` is fsynced; StoreUnavailable if its batch was refused."""
        with self._durable:
            if not self._durable.wait_for(lambda: self._durable_lsn >= lsn or self.refused(lsn) is not None, timeout):
                raise StoreUnavailable(f"The observation log in {self.directory} did not make LSN {lsn} durable "
                                       f"within {timeout} s; the disk may be stalled.")
        refused = self.refused(lsn)
        if refused is not None:
            raise refused
        return self._durable_lsn

    def sync(self, timeout: float | None = None) -> int:
        """Wait until everything appended so far is durable (or refused); returns the durable LSN."""
        target = self._last_lsn
        with self._durable:
            self._durable.wait_for(lambda: self._durable_lsn >= target or self.refused(target) is not None, timeout)
        return self._durable_lsn

    def subscribe(self, listener: Callable[[int], None]) -> None:
        """Call `listener(durable_lsn)` from the writer thread after every group commit (and with
        -1 when a batch was refused: `refused(lsn)` says which). One call per batch."""
        self._listeners.append(listener)

    def add_commit_hook(self, on_durable: Callable[[int], None], on_refused: Callable[[int, int], None]) -> None:
        """`on_durable(lsn)` after each fsync, before anyone is told (learn there); `on_refused(first,
        last)` when a batch is refused (forget it there). Hooks run on the writer thread."""
        self._hooks.append((on_durable, on_refused))

    def remove_commit_hook(self, on_durable: Callable[[int], None]) -> None:
        self._hooks = [h for h in self._hooks if h[0] != on_durable]

    @property
    def failure(self) -> StoreUnavailable | None:
        """Set while the disk refuses writes; cleared by the next write that succeeds."""
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
            self._commit(batch)
            self._concurrent = len(batch) > 1 or bool(self._pending)  # others arrived during the fsync

    def _commit(self, batch: list[tuple[bytes, int, int]]) -> None:
        """Write and fsync one group; on an I/O error cut it off again and refuse it, and only it."""
        try:
            with self._io_lock:
                self._write(b"".join(data for data, _, _ in batch))
        except OSError as exc:
            self._refuse(batch[0][1], batch[-1][2], exc)
            return
        if self._failure is not None:
            log.warning("%s: writes succeed again; observe is accepted again", self.directory)
            self._failure = None
        last = batch[-1][2]
        for on_durable, _ in self._hooks:
            on_durable(last)
        self._publish(last)

    def _refuse(self, first: int, last: int, exc: OSError) -> None:
        self.write_failures += 1
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        kind = InsufficientStorage if full else StoreUnavailable
        error = kind(f"The observation log in {self.directory} could not be written ({exc.strerror or exc}); "
                     f"nothing was acknowledged or learned. " + ("Free space on that disk; " if full else "")
                     + "observe is accepted again as soon as a write succeeds.")
        if self._failure is None:
            log.error("%s", error.message)
        with self._lock:
            self._failure = error
            self._next_probe = time.monotonic() + self._PROBE_S
            refused, self._pending = self._pending, []  # queued behind the failure: refused too
        ranges = [(first, last)] + [(f, l) for _, f, l in refused]
        with self._durable:
            self._refused.extend((f, l, error) for f, l in ranges)
            if len(self._refused) > self._REFUSED_KEPT:
                del self._refused[: len(self._refused) // 2]
        for f, l in ranges:
            for _, on_refused in self._hooks:
                on_refused(f, l)
        self._publish(-1)

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
        view, size = memoryview(data), self._file_size
        try:
            while view:
                view = view[self._file.write(view):]
            if self._fsync:
                os.fdatasync(self._file.fileno())
        except OSError:
            try:  # cut the refused batch off, so no part of it comes back after a restart
                os.ftruncate(self._file.fileno(), size)
            except OSError:
                self._file.close()  # reopened, and its tail checked, by the next write
                self._file = None
            raise
        self._file_size += len(data)

    def _open_segment(self, data: bytes) -> None:
        first_lsn = orjson.loads(frames.decode(data[: data.index(b"\n") + 1]))["lsn"]
        segments = self._segments()
        if self._file is None and segments and segments[-1][1].stat().st_size < self._segment_bytes:
            path = segments[-1][1]  # continue the last segment after a restart
        else:
            if self._file is not None:
                self._file.close()
                self._file = None
            path = self.directory / f"{_PREFIX}{first_lsn:020d}{_SUFFIX}"
        file = open(path, "ab", buffering=0)  # unbuffered: a refused write leaves nothing behind to flush
        try:
            fsync_dir(self.directory)
        except OSError:
            file.close()
            raise
        self._file, self._file_size = file, file.tell()

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
        while True:
            self.sync()
            with self._lock, self._io_lock:
                if self._pending:  # appended between sync() and taking the locks: commit them first
                    continue
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
