"""The decision log: framed like every log, so damage costs one decision, loudly."""

from __future__ import annotations

from pathlib import Path

from veloxserve.storage.decision_log import DecisionLog, read_decisions


def test_a_flipped_byte_loses_only_that_decision_loudly(tmp_path: Path, caplog) -> None:
    log = DecisionLog(tmp_path, flush_seconds=60)
    for n in range(30):
        log.append({"decision": f"d{n}", "user": "u", "items": [n, n + 1]})
    log.close()
    path = next(tmp_path.glob("decisions-*.jsonl"))
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x01
    path.write_bytes(bytes(data))
    hit = data[:middle].count(b"\n")  # the decision holding the flipped byte
    assert [d["decision"] for d in read_decisions(tmp_path)] == [f"d{n}" for n in range(30) if n != hit]
    assert f"{path} at byte" in caplog.text


def test_decisions_written_before_logs_had_frames_are_still_read(tmp_path: Path) -> None:
    (tmp_path / "decisions-2026-01-01.jsonl").write_bytes(b'{"decision": "old"}\n')
    log = DecisionLog(tmp_path)
    log.append({"decision": "new"})
    log.close()
    assert [d["decision"] for d in read_decisions(tmp_path)] == ["old", "new"]
