"""The one append-only durable log: numbered records, one writer, group commit, recovery.

The observation log, Clipper's feedback log and the decision log are this log with a record type
and a file layout (storage/log_files.py); what each does with its records is theirs. Here:

- **Numbering.** Every record gets the next LSN, written into its JSON (`{"lsn": n, …}`). LSNs
  only grow: after damage or a refused batch they may skip numbers, never repeat one.
- **Group commit.** `append_records` queues and returns the batch's last LSN at once; one writer
  thread drains everything queued with one write() and one fsync() (when `fsync`), so while one
  fsync runs the next batch accumulates. `commit_delay` lingers for company when appends arrive
  concurrently (or always, with `linger_always`: a log flushed every so often).
- **Refused writes.** A batch the disk refuses (ENOSPC, EIO) is cut back off the file, so no
  part of it comes back after a restart. With `OnFailure.REFUSE` it is refused to exactly its
  waiters and later appends are refused at once until a probe write succeeds; with
  `OnFailure.RETRY` (records that are context, never acknowledged) it is kept, bounded, and
  written again later.
- **Recovery.** Each record is a frame of storage/frames.py. On open every valid record is kept;
  a torn tail of the last file (a write a crash cut short, never acknowledged) is cut off; every
  damaged run elsewhere is skipped, left in place as evidence and reported (`damage`, `health`).
- **Hooks.** `add_commit_hook` hooks run on the writer thread after each fsync and before anyone
  is told it is durable (the model server learns there); `subscribe` listeners after that.
"""

from __future__ import annotations

import bisect
import contextlib
import enum
import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from veloxserve.errors import InsufficientStorage, StoreUnavailable
from veloxserve.storage import frames
from veloxserve.storage.atomic import fsync_dir
from veloxserve.storage.log_files import Entry, Layout, lsn_of, number, parse, scan

log = logging.getLogger(__name__)


class OnFailure(enum.Enum):
    REFUSE = "refuse"  # acknowledged records: a refused batch fails its waiters
    RETRY = "retry"  # context records nobody waits for: a refused batch is written again later


class DurableLog:
    """An append-only log of JSON records under one layout, written by one thread."""

    _REFUSED_KEPT = 4096  # refused batches remembered, so a late waiter still learns it was refused
    _PROBE_S = 0.2  # while the disk refuses writes, let one batch through this often to notice it healed
    _RETRY_KEPT = 100_000  # records kept for a retry while the disk refuses them (OnFailure.RETRY)

    def __init__(
        self,
        layout: Layout,
        name: str,
        *,
        fsync: bool = True,
        commit_delay: float = 0.0,
        linger_always: bool = False,
        on_failure: OnFailure = OnFailure.REFUSE,
        refusal: str = "nothing was acknowledged",
        resumes: str = "appends are accepted again",
        on_recovered: Callable[[Entry], None] | None = None,
        thread_name: str = "log",
    ) -> None:
        self.layout = layout
        self.name = name  # "observation log in <directory>": the subject of every message
        self._refusal, self._resumes = refusal, resumes
        self._fsync, self._commit_delay, self._linger_always = fsync, commit_delay, linger_always
        self._on_failure = on_failure
        self._concurrent = False  # were appends arriving concurrently with the last batch?
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()  # held while the writer touches the file; `exclusive` takes it too
        self._wake = threading.Condition(self._lock)
        self._closing = threading.Event()
        self._durable = threading.Condition(threading.Lock())
        self._listeners: list[Callable[[int], None]] = []
        self._hooks: list[tuple[Callable[[int], None], Callable[[int, int], None]]] = []
        self._pending: list[tuple[bytes, int, int]] = []  # (frames, first LSN, last LSN)
        self._closed = False
        self._failure: StoreUnavailable | None = None  # the last write failed (refusing until one succeeds)
        self._refused: list[tuple[int, int, StoreUnavailable]] = []  # (first, last, why), ascending
        self._next_probe = 0.0
        self.damage: list[frames.Damage] = []  # damaged runs found on open, reported once each
        self.write_failures = 0
        try:
            layout.directory.mkdir(parents=True, exist_ok=True)
            self._last_lsn = self._recover(on_recovered)
        except OSError as exc:
            raise StoreUnavailable(f"Cannot open the {name}: {exc}.") from exc
        self._durable_lsn = self._last_lsn
        self._file: Any = None
        self._path: Path | None = None
        self._file_size = 0
        self._writer = threading.Thread(target=self._write_loop, name=thread_name, daemon=True)
        self._writer.start()

    # ---- opening -------------------------------------------------------------------------
    def _recover(self, on_recovered: Callable[[Entry], None] | None) -> int:
        """The highest LSN given out before; a torn tail is cut off the last file, and every
        damaged run anywhere is skipped, kept in place and reported."""
        segments = self.layout.segments()
        while len(segments) > 1 and segments[-1][1].stat().st_size == 0:  # an empty last segment: drop it
            segments.pop()[1].unlink()
        last = unknown = 0  # `unknown`: damaged bytes after the last valid record, whose LSNs are lost
        for index, (first, path) in enumerate(segments):
            if first - 1 > last:
                last, unknown = first - 1, 0
            for found in scan(path, last_file=index == len(segments) - 1, previous=last):
                entry = self._cut_torn_tail(path, found, last) if isinstance(found, frames.Torn) else found
                if isinstance(entry, frames.Damage):
                    frames.report(entry, self.name)
                    self.damage.append(entry)
                    unknown += entry.length
                elif isinstance(entry, Entry):
                    last, unknown = entry.lsn, 0
                    if on_recovered is not None:
                        on_recovered(entry)
        # Damage at the very end hides how far LSNs went: skip at least as many numbers as it has
        # bytes (every record takes more than one), so none is ever given out twice.
        return last + unknown

    @staticmethod
    def _cut_torn_tail(path: Path, torn: frames.Torn, last: int) -> Entry | None:
        """Truncate the torn tail; a whole frame that only lost its newline is kept, newline restored."""
        body = torn.body
        record = None if body is None else parse(body)
        lsn = None if record is None else lsn_of(record, last)
        with open(path, "rb+") as fh:
            fh.truncate(torn.offset)
            kept = None
            if body is not None and record is not None and lsn is not None and lsn > last:
                fh.seek(torn.offset)
                fh.write(frames.encode(body))
                kept = Entry(lsn, record, torn.offset)
            os.fsync(fh.fileno())
        return kept

    def reserve_above(self, lsn: int) -> None:
        """Number every later record above `lsn`: state that claims LSNs the log no longer holds
        (its tail was lost) must never see those numbers reused for new records."""
        with self._lock:
            if lsn > self._last_lsn:
                log.error(
                    "%s: the log ends at LSN %d but state claims LSN %d; new records are numbered above it",
                    self.name,
                    self._last_lsn,
                    lsn,
                )
                self._last_lsn = lsn
                with self._durable:
                    self._durable_lsn = max(self._durable_lsn, lsn)

    def health(self) -> list[str]:
        """Why this log is degraded (empty when it is not): damage found on open, a failing disk."""
        reasons = [f"damaged record skipped in {d}" for d in self.damage[:5]]
        if len(self.damage) > 5:
            reasons.append(f"... and {len(self.damage) - 5} more damaged records in the {self.name}")
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

    @property
    def failure(self) -> StoreUnavailable | None:
        """Set while the disk refuses writes; cleared by the next write that succeeds."""
        return self._failure

    def append_records(self, bodies: Sequence[bytes]) -> int:
        """Queue JSON objects (serialised, without an LSN) and return the last LSN they get, at once.

        They are durable once `durable_lsn` reaches it: wait with `wait_durable`, or `subscribe`.
        With OnFailure.REFUSE, appends are refused at once while the disk refuses writes."""
        with self._lock:
            if self._failure is not None and self._on_failure is OnFailure.REFUSE and not self._probe_due():
                raise self._failure
            if self._closed:
                raise StoreUnavailable(f"The {self.name} is closed.")
            first = self._last_lsn + 1
            self._last_lsn += len(bodies)
            if len(bodies) == 1:  # the common case (one observation, one decision) without a join
                data = number(first, bodies[0])
            else:
                data = b"".join([number(lsn, body) for lsn, body in enumerate(bodies, first)])
            self._pending.append((data, first, self._last_lsn))
            self._wake.notify()
            return self._last_lsn

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

    def wait_durable(self, lsn: int, timeout: float | None = None) -> int:
        """Block until every record up to `lsn` is fsynced; StoreUnavailable if its batch was refused."""
        with self._durable:
            if not self._durable.wait_for(lambda: self._durable_lsn >= lsn or self.refused(lsn) is not None, timeout):
                raise StoreUnavailable(
                    f"The {self.name} did not make LSN {lsn} durable within {timeout} s; the disk may be stalled."
                )
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

    # ---- the writer ----------------------------------------------------------------------
    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._wake.wait()
                concurrent = self._concurrent and len(self._pending) < 64
                linger = self._commit_delay and not self._closed and (self._linger_always or concurrent)
            if linger:
                # Like PostgreSQL's commit_delay (with commit_siblings): when appends are arriving
                # concurrently, let them join this fsync, so a busy server pays one thread hand-off
                # and one fsync per batch, not per request. A lone client never waits.
                self._closing.wait(self._commit_delay)
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch and self._closed:
                    return
            if not self._commit(batch) and self._on_failure is OnFailure.RETRY:
                self._closing.wait(self._commit_delay or self._PROBE_S)
            self._concurrent = len(batch) > 1 or bool(self._pending)  # others arrived during the fsync

    def _commit(self, batch: list[tuple[bytes, int, int]]) -> bool:
        """Write and fsync one group; on an I/O error cut it off again and refuse (or keep) it, only it."""
        try:
            with self._io_lock:
                self._write(b"".join(data for data, _, _ in batch), batch[0][1])
        except OSError as exc:
            self._fail(batch, exc)
            return False
        if self._failure is not None:
            log.warning("%s: writes succeed again; %s", self.name, self._resumes)
            self._failure = None
        last = batch[-1][2]
        for on_durable, _ in self._hooks:
            on_durable(last)
        self._publish(last)
        return True

    def _fail(self, batch: list[tuple[bytes, int, int]], exc: OSError) -> None:
        self.write_failures += 1
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        kind = InsufficientStorage if full else StoreUnavailable
        retry = self._on_failure is OnFailure.RETRY
        outcome = "its records are kept and written again" if retry else self._refusal
        error = kind(
            f"The {self.name} could not be written ({exc.strerror or exc}); {outcome}. "
            + ("Free space on that disk; " if full else "")
            + f"{self._resumes} as soon as a write succeeds."
        )
        if self._failure is None:
            log.error("%s", error.message)
        with self._lock:
            self._failure = error
            self._next_probe = time.monotonic() + self._PROBE_S
            if retry and not self._closed:
                kept, records = [], 0
                for item in reversed(batch + self._pending):  # the newest, up to _RETRY_KEPT records
                    records += item[2] - item[1] + 1
                    if records > self._RETRY_KEPT:
                        break
                    kept.append(item)
                self._pending = kept[::-1]
                return
            refused, self._pending = batch + self._pending, []  # queued behind the failure: refused too
        with self._durable:
            self._refused.extend((first, last, error) for _, first, last in refused)
            if len(self._refused) > self._REFUSED_KEPT:
                del self._refused[: len(self._refused) // 2]
        for _, first, last in refused:
            for _, on_refused in self._hooks:
                on_refused(first, last)
        self._publish(-1)

    def _publish(self, lsn: int) -> None:
        with self._durable:
            if lsn >= 0:
                self._durable_lsn = lsn
            self._durable.notify_all()
        for listener in self._listeners:
            listener(lsn)

    def _write(self, data: bytes, first_lsn: int) -> None:
        if not data:
            return
        path = self.layout.target(first_lsn, self._path, self._file_size)
        if path != self._path or self._file is None:
            self._open(path)
        view, size = memoryview(data), self._file_size
        try:
            while view:
                view = view[self._file.write(view) :]
            if self._fsync:
                os.fdatasync(self._file.fileno())
        except OSError:
            try:  # cut the refused batch off, so no part of it comes back after a restart
                os.ftruncate(self._file.fileno(), size)
            except OSError:
                self._close_file()  # reopened, and its tail checked, by the next write
            raise
        self._file_size += len(data)

    def _open(self, path: Path) -> None:
        self._close_file()
        file = open(path, "ab", buffering=0)  # unbuffered: a refused write leaves nothing behind to flush
        try:
            fsync_dir(self.layout.directory)
        except OSError:
            file.close()
            raise
        self._file, self._path, self._file_size = file, path, file.tell()

    def _close_file(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._path = None, None

    # ---- rewriting and closing -----------------------------------------------------------
    @contextlib.contextmanager
    def exclusive(self) -> Iterator[list[tuple[int, Path]]]:
        """Everything appended so far committed, appends held and the file closed, for rewriting
        the log's files in place (forgetting users); yields the files."""
        while True:
            self.sync()
            self._lock.acquire()
            self._io_lock.acquire()
            if not self._pending:
                break
            self._io_lock.release()  # appended between sync() and taking the locks: commit them first
            self._lock.release()
        try:
            self._close_file()  # reopened by the next write
            yield self.layout.segments()
        finally:
            self._io_lock.release()
            self._lock.release()

    def close(self) -> None:
        """Write what is queued, stop the writer, close the file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._closing.set()
            self._wake.notify()
        self._writer.join()
        self._close_file()

    def __enter__(self) -> DurableLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
