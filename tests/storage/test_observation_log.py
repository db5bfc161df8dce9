"""The observation log: durable before acknowledged, group commit, torn tails, replay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.errors import InsufficientStorage, StoreUnavailable
from veloxserve.storage import observation_log as module
from veloxserve.storage.observation_log import ObservationLog


def test_appended_records_replay_in_order(tmp_path: Path) -> None:
    with ObservationLog(tmp_path) as log:
        assert log.append([("u1", "i1", 1.5, "v1"), ("u2", "i2", -2.0, "v1")]) == 2
        assert log.wait_durable(2, 5) >= 2
        assert log.append_and_wait([("u1", "i3", 3.0, "v2")], 5) == 3
        records = list(log.replay())
    assert [(r.lsn, r.user, r.item, r.score, r.version) for r in records] == [
        (1, "u1", "i1", 1.5, "v1"),
        (2, "u2", "i2", -2.0, "v1"),
        (3, "u1", "i3", 3.0, "v2"),
    ]
    assert all(r.timestamp > 0 for r in records)


def test_lsns_continue_after_reopen_and_replay_skips_earlier_ones(tmp_path: Path) -> None:
    with ObservationLog(tmp_path) as log:
        log.append_and_wait([("u", "i", 1.0, "v1")] * 5)
    with ObservationLog(tmp_path) as log:
        assert log.last_lsn == 5
        assert log.append_and_wait([("u", "i", 2.0, "v1")]) == 6
        assert [r.lsn for r in log.replay(after_lsn=4)] == [5, 6]


def test_segments_roll_over_and_replay_crosses_them(tmp_path: Path) -> None:
    with ObservationLog(tmp_path, segment_bytes=400) as log:
        for n in range(30):
            log.append_and_wait([(f"u{n}", "i", float(n), "v1")])
        assert len(list(tmp_path.glob("segment-*.log"))) > 3
        assert [r.lsn for r in log.replay(after_lsn=17)] == list(range(18, 31))
    with ObservationLog(tmp_path, segment_bytes=400) as log:
        assert log.last_lsn == 30 and len(list(log.replay())) == 30


def test_a_damaged_last_line_is_skipped_and_its_lsn_never_reused(tmp_path: Path) -> None:
    with ObservationLog(tmp_path) as log:
        log.append_and_wait([("u", "i", 1.0, "v1")] * 3)
    segment = sorted(tmp_path.glob("segment-*.log"))[-1]
    with open(segment, "ab") as fh:
        fh.write(b"zzzzzzzz not a record\n")  # complete, so written whole: it may have held LSN 4
    with ObservationLog(tmp_path) as log:
        assert log.last_lsn > 4 and len(log.damage) == 1
        lsn = log.append_and_wait([("u", "i", 2.0, "v1")])
        assert [r.lsn for r in log.replay()] == [1, 2, 3, lsn]


@pytest.mark.parametrize("garbage", [b'00000000 {"lsn": 4', b"\x00\x00\x00"])
def test_a_torn_tail_is_cut_off_on_open_and_earlier_records_survive(tmp_path: Path, garbage: bytes) -> None:
    with ObservationLog(tmp_path) as log:
        log.append_and_wait([("u", "i", 1.0, "v1")] * 3)
    segment = sorted(tmp_path.glob("segment-*.log"))[-1]
    with open(segment, "ab") as fh:
        fh.write(garbage)
    with ObservationLog(tmp_path) as log:
        assert log.last_lsn == 3
        assert log.append_and_wait([("u", "i", 2.0, "v1")]) == 4
        assert [r.lsn for r in log.replay()] == [1, 2, 3, 4]


def test_concurrent_appends_get_unique_lsns_and_all_replay(tmp_path: Path) -> None:
    with ObservationLog(tmp_path) as log:
        got: list[int] = []
        lock = threading.Lock()

        def worker(n: int) -> None:
            for j in range(100):
                lsn = log.append_and_wait([(f"u{n}", f"i{j}", float(j), "v1")], 10)
                with lock:
                    got.append(lsn)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(got) == list(range(1, 801))
        assert len({(r.user, r.item) for r in log.replay()}) == 800


def test_acknowledgement_follows_fsync_and_fsyncs_are_batched(tmp_path: Path, monkeypatch) -> None:
    synced_upto: list[int] = []
    real = os.fdatasync

    def slow_fdatasync(fd: int) -> None:
        time.sleep(0.002)  # a disk that takes time, so concurrent appends pile up behind it
        real(fd)
        synced_upto.append(log.last_lsn)

    monkeypatch.setattr(os, "fdatasync", slow_fdatasync)
    log = ObservationLog(tmp_path)
    try:
        commits: list[int] = []
        log.subscribe(commits.append)
        acked: list[int] = []

        def client() -> None:
            for _ in range(125):
                lsn = log.append_and_wait([("u", "i", 1.0, "v1")], 10)
                assert lsn <= log.durable_lsn
                acked.append(lsn)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(acked) == list(range(1, 1001))
        assert commits == sorted(commits) and commits[-1] == 1000
        assert 0 < len(synced_upto) <= 500  # group commit: 8 waiting clients share fsyncs (1000 records)
    finally:
        log.close()


def test_nothing_is_durable_before_the_fsync_returns(tmp_path: Path, monkeypatch) -> None:
    gate = threading.Event()
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (gate.wait(5), real(fd)))
    with ObservationLog(tmp_path) as log:
        lsn = log.append([("u", "i", 1.0, "v1")])
        with pytest.raises(StoreUnavailable, match="did not make LSN 1 durable"):
            log.wait_durable(lsn, timeout=0.05)
        assert log.durable_lsn == 0
        gate.set()
        assert log.wait_durable(lsn, 5) == 1


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(min_size=1, max_size=20),
            st.text(min_size=1, max_size=20),
            st.floats(allow_nan=False, allow_infinity=False),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_any_records_round_trip_exactly(tmp_path_factory, rows) -> None:
    directory = tmp_path_factory.mktemp("log")
    with ObservationLog(directory, fsync=False) as log:
        log.append_and_wait([(u, i, s, "v1") for u, i, s in rows])
    with ObservationLog(directory, fsync=False) as log:
        assert [(r.user, r.item, r.score) for r in log.replay()] == rows


_CRASH_SCRIPT = """
import sys, threading
from veloxserve.storage.observation_log import ObservationLog
log = ObservationLog(sys.argv[1])
log.subscribe(lambda lsn: print(lsn, flush=True))  # every LSN up to this one is acknowledged
n = 0
while True:
    n += 1
    log.append([("u", f"i{n}", float(n), "v1")])
"""


def test_every_acknowledged_lsn_survives_sigkill(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", _CRASH_SCRIPT, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    acked_upto = 0
    for line in proc.stdout:
        acked_upto = int(line)
        if acked_upto >= 2000:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    with ObservationLog(tmp_path) as log:
        durable = {r.lsn for r in log.replay()}
    assert set(range(1, acked_upto + 1)) <= durable
    assert durable == set(range(1, max(durable) + 1))


def test_merged_logs_hold_every_instance_in_time_order(tmp_path) -> None:
    from veloxserve.storage.observation_log import instance_logs, read_merged

    main = tmp_path / "log"
    with ObservationLog(main) as a, ObservationLog(main / "instances" / "b") as b:
        for n in range(6):
            (a if n % 2 == 0 else b).append_and_wait([(f"u{n}", "10", float(n), "v1")])
    assert [name for name, _ in instance_logs(main)] == ["main", "b"]
    merged = list(read_merged(main))
    assert [r.user for _, r in merged] == [f"u{n}" for n in range(6)]
    assert [(i, r.lsn) for i, r in merged][:3] == [("main", 1), ("b", 1), ("main", 2)]
    assert [r.user for _, r in read_merged(main, {"main": 1})] == ["u0", "u1", "u3", "u5"]


def _flip(path: Path, at: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(at)
        byte = fh.read(1)
        fh.seek(at)
        fh.write(bytes([byte[0] ^ 0x01]))


def test_a_flipped_byte_loses_only_its_record_loudly_and_no_lsn_is_reused(tmp_path: Path, caplog) -> None:
    with ObservationLog(tmp_path) as log:
        for n in range(200):
            log.append_and_wait([(f"u{n}", "i", float(n), "v1")])
    segment = sorted(tmp_path.glob("segment-*.log"))[0]
    data = segment.read_bytes()
    middle = len(data) // 2
    _flip(segment, middle)
    hit = data[:middle].count(b"\n") + 1  # the LSN of the record holding the byte
    with ObservationLog(tmp_path) as log:
        assert [r.lsn for r in log.replay()] == [n for n in range(1, 201) if n != hit]
        assert log.last_lsn == 200 and log.append_and_wait([("new", "i", 1.0, "v1")]) == 201
        assert len(log.damage) == 1 and log.damage[0].path == segment
        assert log.damage[0].offset <= middle < log.damage[0].offset + log.damage[0].length
        assert any(str(segment) in reason for reason in log.health())
    assert f"{segment} at byte {log.damage[0].offset}" in caplog.text
    with ObservationLog(tmp_path) as log:  # the damage stays in place, and stays reported
        assert [r.lsn for r in log.replay()][-2:] == [200, 201] and len(log.damage) == 1


def test_a_damaged_segment_hides_no_later_segment(tmp_path: Path) -> None:
    with ObservationLog(tmp_path, segment_bytes=400) as log:
        for n in range(30):
            log.append_and_wait([(f"u{n}", "i", float(n), "v1")])
    segments = sorted(tmp_path.glob("segment-*.log"))
    assert len(segments) > 3
    _flip(segments[0], 20)  # inside the first record of the first segment
    with ObservationLog(tmp_path, segment_bytes=400) as log:
        assert [r.lsn for r in log.replay()] == list(range(2, 31))
        assert [r.lsn for r in module.read_log(tmp_path, after_lsn=0)] == list(range(2, 31))


def test_a_lost_newline_loses_no_record(tmp_path: Path) -> None:
    with ObservationLog(tmp_path) as log:
        log.append_and_wait([(f"u{n}", "i", float(n), "v1") for n in range(10)])
    segment = sorted(tmp_path.glob("segment-*.log"))[0]
    _flip(segment, segment.read_bytes().index(b"\n"))  # fuse records 1 and 2 into one line
    with ObservationLog(tmp_path) as log:
        assert [r.lsn for r in log.replay()] == list(range(1, 11)) and len(log.damage) == 1


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=0.0, max_value=0.9999), st.integers(min_value=0, max_value=7))
def test_any_single_bit_flip_loses_at_most_one_record(tmp_path_factory, where: float, bit: int) -> None:
    directory = tmp_path_factory.mktemp("log")
    with ObservationLog(directory) as log:
        log.append_and_wait([(f"user-{n}", f"item-{n}", n / 3, "v1") for n in range(40)])
    segment = sorted(directory.glob("segment-*.log"))[0]
    data = bytearray(segment.read_bytes())
    data[int(where * len(data))] ^= 1 << bit
    segment.write_bytes(bytes(data))
    with ObservationLog(directory) as log:
        lsns = [r.lsn for r in log.replay()]
        kept = {r.lsn: (r.user, r.item, r.score) for r in log.replay()}
        assert lsns == sorted(set(lsns)) and len(lsns) >= 39
        assert all(kept[n] == (f"user-{n - 1}", f"item-{n - 1}", (n - 1) / 3) for n in kept)
        assert log.append_and_wait([("after", "i", 0.0, "v1")]) > 40  # never a reused LSN


def test_a_refused_write_is_cut_back_refused_to_its_waiters_only_and_the_writer_lives_on(
    tmp_path: Path, monkeypatch
) -> None:
    with ObservationLog(tmp_path) as log:
        log.append_and_wait([("u", "i", 1.0, "v1")])
        real = os.fdatasync
        failing = {"on": True}

        def full_disk(fd: int) -> None:  # the write reached the page cache; the disk then refused it
            if failing["on"]:
                raise OSError(28, "No space left on device")
            real(fd)

        monkeypatch.setattr(os, "fdatasync", full_disk)
        lsn = log.append([("refused", "i", 2.0, "v1")] * 3)
        with pytest.raises(InsufficientStorage) as refused:
            log.wait_durable(lsn, 30)
        assert refused.value.status == 507 and refused.value.headers()["retry-after"]
        assert log.refused(lsn) is not None and log.health()
        failing["on"] = False
        deadline = time.monotonic() + 30
        while True:  # appends are refused at once while failing, and probe now and then
            try:
                after = log.append_and_wait([("later", "i", 3.0, "v1")], 30)
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert after > lsn and log.health() == [] and log.failure is None
    with ObservationLog(tmp_path) as log:
        assert [r.user for r in log.replay()] == ["u", "later"]
