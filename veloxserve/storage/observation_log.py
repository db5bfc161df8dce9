"""The durable observation log: the records of storage/durable_log.py that the model server learns.

Every observation is appended here and acknowledged only once fsynced; one writer groups
concurrent appends into one write() and one fsync() (group commit), a refused batch is cut back
and refused to exactly its waiters, and a torn tail or a damaged record costs only itself
(durable_log.py, storage/frames.py). This module adds what is the observations' own: the record
(user, item, score, version, decision, idempotency key), segments named by their first LSN so
replay from a position skips whole files, one log per server instance of a model merged by time
for training, and erasing a forgotten user's records. Hooks added with `add_commit_hook` run after
each fsync and before anyone is told it is durable: the model server learns there, so nothing is
learned that was not made durable, and an acknowledgement already reflects the learning.
"""

from __future__ import annotations

import heapq
import os  # noqa: F401  (tests reach os.fdatasync through this module: the writer in durable_log.py calls it)
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from veloxserve.storage import frames, log_files
from veloxserve.storage.atomic import replace_atomically
from veloxserve.storage.durable_log import DurableLog
from veloxserve.storage.log_files import SegmentsBySequence


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


def _body(
    ts: float, user: str, item: str, score: float, version: str, decision: str | None = None, key: str | None = None
) -> bytes:
    """One observation as JSON, without its LSN (the log writes that in)."""
    record: dict[str, Any] = {"ts": ts, "user": user, "item": item, "score": score, "version": version}
    if decision is not None:
        record["decision"] = decision
    if key is not None:
        record["id"] = key
    return orjson.dumps(record)


def _erased(lsn: int) -> bytes:
    return frames.encode(orjson.dumps({"lsn": lsn, "erased": True}))


def _record(lsn: int, d: dict[str, Any]) -> ObservationRecord | None:
    """The observation of one logged record, or None if it is not one."""
    if d.get("erased"):
        return ObservationRecord(lsn, 0.0, "", "", 0.0, "", True)
    try:
        return ObservationRecord(
            lsn, d["ts"], d["user"], d["item"], d["score"], d["version"], False, d.get("decision"), d.get("id")
        )
    except KeyError:
        return None


def _segments(directory: Path) -> list[tuple[int, Path]]:
    """The log's segments with their first LSNs, oldest first."""
    return SegmentsBySequence(directory).segments()


def read_log(directory: Path, after_lsn: int = 0, upto_lsn: int | None = None) -> Iterator[ObservationRecord]:
    """Records with after_lsn < lsn <= upto_lsn, in order, read-only: safe while a server appends
    to the log. Erased records (forgotten users) are skipped."""
    for entry in log_files.read(SegmentsBySequence(Path(directory)), after_lsn, upto_lsn):
        record = _record(entry.lsn, entry.record)
        if record is not None and not record.erased:
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
        body = frames.decode(line) if line.endswith(b"\n") else None
        d = None if body is None else log_files.parse(body)
        if d is not None and not d.get("erased") and d.get("user") in users:
            out.append(_erased(d["lsn"]))
            erased += 1
        elif d is None and line.endswith(b"\n") and any(n in line for n in needles):
            erased += 1
        else:
            out.append(line)
    if erased:
        replace_atomically(path, lambda fh: fh.writelines(out))
    return erased


class ObservationLog(DurableLog):
    """Append-only, crash-safe log of one model's observations."""

    def __init__(
        self, directory: Path, *, fsync: bool = True, segment_bytes: int = 64 << 20, commit_delay: float = 0.0
    ) -> None:
        self.directory = Path(directory)
        super().__init__(
            SegmentsBySequence(self.directory, segment_bytes),
            f"observation log in {self.directory}",
            fsync=fsync,
            commit_delay=commit_delay,
            refusal="nothing was acknowledged or learned",
            resumes="observe is accepted again",
            thread_name=f"log-{self.directory.parent.name}",
        )

    def append(self, rows: Sequence[tuple]) -> int:
        """Queue (user, item, score, version[, decision[, id]]) rows and return their last LSN at once.

        The rows are durable once `durable_lsn` reaches that LSN: wait with `wait_durable`, or
        `subscribe` to be told after every group commit. While the disk refuses writes, appends
        are refused at once (nothing is queued), until a write succeeds again.
        """
        ts = time.time()
        return self.append_records([_body(ts, *row) for row in rows])

    def append_and_wait(self, rows: Sequence[tuple], timeout: float | None = None) -> int:
        lsn = self.append(rows)
        self.wait_durable(lsn, timeout)
        return lsn

    def replay(self, after_lsn: int = 0, upto_lsn: int | None = None) -> Iterator[ObservationRecord]:
        """Records with after_lsn < lsn <= upto_lsn, in order."""
        return read_log(self.directory, after_lsn, upto_lsn)

    def erase_users(self, users: set[str]) -> int:
        """Replace every record of `users` by an erased marker (same LSN, no data); returns how many.

        Segments holding such records are rewritten to a temporary file, fsynced and renamed over
        the old one, so a crash leaves the old or the new segment, never a mix. Appends wait meanwhile.
        """
        with self.exclusive() as segments:
            return sum(_rewrite_without(path, users) for _, path in segments)

    def __enter__(self) -> ObservationLog:
        return self
