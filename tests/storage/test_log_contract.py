"""One durability contract, run against every log: observations, Clipper feedback, decisions.

Each adapter says how to open its log, append one record (returning its LSN once the log says it
is acknowledged) and read back what survived a reopen. The behaviours are the durable log's
(storage/durable_log.py), so every log built on it must show them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from veloxserve.clipper.feedback_log import FeedbackLog
from veloxserve.storage.decision_log import DecisionLog, read_decisions
from veloxserve.storage.observation_log import ObservationLog


@dataclass
class Adapter:
    name: str
    open: Callable[[Path], Any]
    append: Callable[[Any, int], int]  # (log, n) -> LSN of record n, acknowledged
    read: Callable[[Path], list[int]]  # the n of every record that survived, in order
    files: Callable[[Path], list[Path]]


def _observation_append(log: ObservationLog, n: int) -> int:
    return log.append_and_wait([(f"user-{n}", "item", float(n), "v1")], 10)


def _feedback_append(log: FeedbackLog, n: int) -> int:
    return asyncio.run(log.append({"n": n, "payload": "x" * 20}))


def _decision_append(log: DecisionLog, n: int) -> int:
    lsn = log.append({"decision": f"d{n}", "n": n})
    log.sync(10)
    return lsn


def _feedback_read(root: Path) -> list[int]:
    log = FeedbackLog(root / "app.feedback")
    try:
        return [r["n"] for r in log.replay()]
    finally:
        log.close()


def _observation_read(root: Path) -> list[int]:
    with ObservationLog(root) as log:
        return [int(r.score) for r in log.replay()]


def _decision_read(root: Path) -> list[int]:
    DecisionLog(root).close()  # opening recovers: the torn tail is cut, damage reported
    return [d["n"] for d in read_decisions(root)]


ADAPTERS = [
    Adapter(
        "observations",
        ObservationLog,
        _observation_append,
        _observation_read,
        lambda root: sorted(root.glob("segment-*.log")),
    ),
    Adapter(
        "feedback",
        lambda root: FeedbackLog(root / "app.feedback"),
        _feedback_append,
        _feedback_read,
        lambda root: [root / "app.feedback"],
    ),
    Adapter(
        "decisions",
        lambda root: DecisionLog(root, flush_seconds=0.001),
        _decision_append,
        _decision_read,
        lambda root: sorted(root.glob("decisions-*.jsonl")),
    ),
]


@pytest.fixture(params=ADAPTERS, ids=[a.name for a in ADAPTERS])
def adapter(request) -> Adapter:
    return request.param


def _write(adapter: Adapter, root: Path, ns: range) -> list[int]:
    log = adapter.open(root)
    try:
        return [adapter.append(log, n) for n in ns]
    finally:
        log.close()


def test_an_acknowledged_record_survives_a_reopen(adapter: Adapter, tmp_path: Path) -> None:
    lsns = _write(adapter, tmp_path, range(10))
    assert lsns == sorted(set(lsns))
    assert adapter.read(tmp_path) == list(range(10))


def test_a_damaged_record_in_the_middle_is_skipped_and_reported_and_the_rest_kept(
    adapter: Adapter, tmp_path: Path, caplog
) -> None:
    _write(adapter, tmp_path, range(20))
    (path,) = adapter.files(tmp_path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x01
    path.write_bytes(bytes(data))
    hit = data[:middle].count(b"\n")  # the record holding the flipped byte
    assert adapter.read(tmp_path) == [n for n in range(20) if n != hit]
    assert f"{path} at byte" in caplog.text and "damaged record" in caplog.text


def test_a_torn_tail_is_cut_and_appends_go_on(adapter: Adapter, tmp_path: Path) -> None:
    _write(adapter, tmp_path, range(5))
    (path,) = adapter.files(tmp_path)
    whole = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(b'0badc0de {"lsn": 6, "half a rec')  # a write a crash cut short: never acknowledged
    assert adapter.read(tmp_path) == list(range(5))
    assert path.stat().st_size == whole
    _write(adapter, tmp_path, range(5, 7))
    assert adapter.read(tmp_path) == list(range(7))


def test_lsns_are_never_reused_across_reopens_and_damage(adapter: Adapter, tmp_path: Path) -> None:
    first = _write(adapter, tmp_path, range(5))
    (path,) = adapter.files(tmp_path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # the last record damaged: how far LSNs went is no longer readable
    path.write_bytes(bytes(data))
    second = _write(adapter, tmp_path, range(5, 8))
    assert min(second) > max(first) and second == sorted(set(second))
