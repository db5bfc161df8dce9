"""The feedback log: group commit, replay, a torn tail cut off, and policies rebuilt exactly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np

from tests.clipper.conftest import write_callable
from veloxserve.clipper import Clipper
from veloxserve.clipper.feedback_log import FeedbackLog, FeedbackTail
from veloxserve.storage import frames


def test_concurrent_appends_are_all_durable_and_replay_in_order(tmp_path: Path) -> None:
    async def scenario():
        log = FeedbackLog(tmp_path / "a.feedback")
        await asyncio.gather(*(log.append({"i": i, "x": np.arange(2.0) * i}) for i in range(50)))
        log.close()

    asyncio.run(scenario())
    records = list(FeedbackLog(tmp_path / "a.feedback").replay())
    assert sorted(r["i"] for r in records) == list(range(50))
    assert records[3]["x"] == [0.0, float(records[3]["i"])]


def test_a_torn_last_line_is_cut_off_and_appends_go_on(tmp_path: Path) -> None:
    path = tmp_path / "a.feedback"
    path.write_bytes(b'{"i": 0}\n{"i": 1}\n{"i": 2, "x"')
    log = FeedbackLog(path)
    assert [r["i"] for r in log.replay()] == [0, 1]
    asyncio.run(log.append({"i": 3}))
    log.close()
    # records written before logs numbered theirs count by position, so the next one is LSN 3
    assert path.read_bytes() == b'{"i": 0}\n{"i": 1}\n' + frames.encode(b'{"lsn":3,"i":3}')


def test_a_flipped_byte_loses_only_that_record_loudly(tmp_path: Path, caplog) -> None:
    path = tmp_path / "a.feedback"

    async def write() -> None:
        log = FeedbackLog(path)
        for i in range(20):
            await log.append({"i": i, "payload": "x" * 20})
        log.close()

    asyncio.run(write())
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x01
    path.write_bytes(bytes(data))
    hit = data[:middle].count(b"\n")  # the record holding the flipped byte
    log = FeedbackLog(path)
    assert [r["i"] for r in log.replay()] == [i for i in range(20) if i != hit]
    assert len(log.damage) == 1 and "damaged record" in caplog.text and str(path) in caplog.text
    asyncio.run(log.append({"i": 20}))  # appends go on after the damage
    log.close()
    assert [r["i"] for r in FeedbackLog(path).replay()][-1] == 20


def test_a_restarted_runtime_rebuilds_every_policy_from_its_feedback(tmp_path: Path) -> None:
    def half(batch):
        import numpy as np

        return np.asarray(batch)[:, 0] * 0.5

    def double(batch):
        import numpy as np

        return np.asarray(batch)[:, 0] * 2.0

    home, rng = tmp_path / "home", np.random.default_rng(0)
    with Clipper(home, model_dirs=[tmp_path]) as clipper:
        clipper.deploy("half", "callable", write_callable(tmp_path / "h.pkl", half))
        clipper.deploy("double", "callable", write_callable(tmp_path / "d.pkl", double))
        for policy in ("exp3", "exp4", "personalised"):
            clipper.create_app(policy, ["half", "double"], policy=policy, loss="absolute", objective_ms=20_000)
        for _ in range(30):
            x = float(rng.uniform(0, 1))
            for policy in ("exp3", "exp4", "personalised"):
                clipper.observe(policy, "ann", [x], 1.8 * x)
        before = {p: clipper.runtime.app(p).describe() for p in ("exp3", "exp4")}
        weights = clipper.runtime.app("personalised").policy.user_weights("ann")
    with Clipper(home, model_dirs=[tmp_path]) as clipper:
        for policy in ("exp3", "exp4"):
            after = clipper.runtime.app(policy).describe()
            np.testing.assert_allclose(after["state"]["weights"], before[policy]["state"]["weights"])
            assert after["observed"] == 30
        np.testing.assert_allclose(clipper.runtime.app("personalised").policy.user_weights("ann"), weights)


def test_a_tail_reads_another_frontends_records_as_they_become_whole(tmp_path: Path) -> None:
    path = tmp_path / "a.feedback-1"
    tail = FeedbackTail(path)
    assert tail.read() == []  # no file yet: that frontend has had no feedback

    async def append(log: FeedbackLog, *items: int) -> None:
        await asyncio.gather(*(log.append({"i": i}) for i in items))

    log = FeedbackLog(path)
    asyncio.run(append(log, 0, 1))
    assert sorted(r["i"] for r in tail.read()) == [0, 1]
    assert tail.read() == []  # each record once
    asyncio.run(append(log, 2))
    log.close()
    assert [r["i"] for r in tail.read()] == [2]
    frame = frames.encode(b'{"i":3}')
    with open(path, "ab") as fh:  # a record being written: half of it is on disk
        fh.write(frame[:6])
    assert tail.read() == []
    with open(path, "ab") as fh:
        fh.write(frame[6:] + b"00000000 {damaged}\n" + frames.encode(b'{"i":4}'))
    assert [r["i"] for r in tail.read()] == [3, 4]  # the damaged one skipped, its neighbours kept


def test_a_tail_of_a_file_removed_and_written_again_reads_the_new_records(tmp_path: Path) -> None:
    path = tmp_path / "a.feedback-1"
    path.write_bytes(frames.encode(b'{"i":0}') + frames.encode(b'{"i":1}'))
    tail = FeedbackTail(path)
    assert len(tail.read()) == 2
    path.unlink()
    path.write_bytes(frames.encode(b'{"i":7}'))  # an application of the same name, created again
    assert [r["i"] for r in tail.read()] == [7]
