"""The observation log exported as Parquet is readable by standard tools and loses nothing."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from veloxserve.storage import log_export
from veloxserve.storage.log_export import MANIFEST, export_parquet
from veloxserve.storage.observation_log import ObservationLog, read_log


def test_export_round_trips_every_record_partitioned_by_date(tmp_path: Path) -> None:
    rows = [(f"u{n % 7}", f"i{n % 11}", float(n) / 3, "v1" if n < 30 else "v2") for n in range(50)]
    with ObservationLog(tmp_path / "log") as log:
        log.append_and_wait(rows[:20])
        log.append_and_wait(rows[20:])
    first = export_parquet(tmp_path / "log", tmp_path / "out")
    assert first["rows"] == 50 and first["first_lsn"] == 1 and first["last_lsn"] == 50
    table = ds.dataset(tmp_path / "out", format="parquet", partitioning="hive").to_table().sort_by("lsn")
    assert table["lsn"].to_pylist() == list(range(1, 51))
    assert (
        list(
            zip(
                table["user"].to_pylist(),
                table["item"].to_pylist(),
                table["score"].to_pylist(),
                table["model_version"].to_pylist(),
            )
        )
        == rows
    )
    assert set(table["date"].to_pylist()) == {
        r.timestamp
        and __import__("datetime")
        .datetime.fromtimestamp(r.timestamp, __import__("datetime").timezone.utc)
        .date()
        .isoformat()
        for r in read_log(tmp_path / "log")
    }


def test_incremental_export_adds_only_new_observations(tmp_path: Path) -> None:
    with ObservationLog(tmp_path / "log") as log:
        log.append_and_wait([("u", "i", 1.0, "v1")] * 5)
        first = export_parquet(tmp_path / "log", tmp_path / "out")
        log.append_and_wait([("u", "i", 2.0, "v1")] * 3)
    second = export_parquet(tmp_path / "log", tmp_path / "out", after_lsn=first["last_lsn"])
    assert second["rows"] == 3 and second["first_lsn"] == 6
    table = ds.dataset(tmp_path / "out", format="parquet", partitioning="hive").to_table()
    assert sorted(table["lsn"].to_pylist()) == list(range(1, 9))


def test_cli_export(tmp_path: Path) -> None:
    with ObservationLog(tmp_path / "home" / "models" / "songs" / "log") as log:
        log.append_and_wait([("u", "i", 1.0, "v1")] * 4)
    cli = [sys.executable, "-m", "veloxserve.cli", "log", "export", "--home", str(tmp_path / "home")]
    done = subprocess.run(cli + ["--model", "songs", "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert done.returncode == 0 and '"rows": 4' in done.stdout
    missing = subprocess.run(cli + ["--model", "nope", "--out", str(tmp_path / "o2")], capture_output=True, text=True)
    assert missing.returncode == 2 and "no observation log" in missing.stderr


def test_export_carries_each_observations_decision_and_idempotency_id(tmp_path: Path) -> None:
    with ObservationLog(tmp_path / "log") as log:
        log.append_and_wait(
            [
                ("u", "i", 1.0, "v1"),
                ("u", "j", 0.0, "v1", "d1"),
                ("u", "k", 1.0, "v1", None, "key-3"),
                ("u", "l", 1.0, "v1", "d2", "key-4"),
            ]
        )
    export_parquet(tmp_path / "log", tmp_path / "out")
    table = ds.dataset(tmp_path / "out", format="parquet", partitioning="hive").to_table().sort_by("lsn")
    assert table["decision"].to_pylist() == [None, "d1", None, "d2"]
    assert table["id"].to_pylist() == [None, None, "key-3", "key-4"]
    assert [r.id for r in read_log(tmp_path / "log")] == [None, None, "key-3", "key-4"]


def _lsns_pandas_reads(out: Path) -> list[int]:
    return sorted(pd.read_parquet(out)["lsn"].tolist())


def test_exporting_again_into_the_same_directory_reads_every_lsn_once(tmp_path: Path) -> None:
    with ObservationLog(tmp_path / "log") as log:
        log.append_and_wait([("u", "i", 1.0, "v1")] * 5)
        export_parquet(tmp_path / "log", tmp_path / "out")
        log.append_and_wait([("u", "i", 2.0, "v1")] * 3)
    files_before = sorted(p.name for p in (tmp_path / "out").rglob("*.parquet"))
    overlapping = export_parquet(tmp_path / "log", tmp_path / "out", after_lsn=4)  # LSN 5 is already there
    assert overlapping["rows"] == 3 and overlapping["first_lsn"] == 6
    again = export_parquet(tmp_path / "log", tmp_path / "out")  # everything is already there
    assert again["rows"] == 0 and again["files"] == []
    assert len(sorted(p.name for p in (tmp_path / "out").rglob("*.parquet"))) == len(files_before) + 1
    assert _lsns_pandas_reads(tmp_path / "out") == list(range(1, 9))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 14)), min_size=1, max_size=5))
def test_any_sequence_of_appends_and_exports_holds_each_exported_lsn_once(steps: list[tuple[int, int]]) -> None:
    """Each step appends n observations then exports after some LSN; pandas must read exactly the
    union of what each export was asked for, each LSN once."""
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        expected: set[int] = set()
        last = 0
        with ObservationLog(root / "log") as log:
            for appended, after in steps:
                if appended:
                    log.append_and_wait([("u", f"i{n}", float(n), "v1") for n in range(appended)])
                    last += appended
                export_parquet(root / "log", root / "out", after_lsn=after)
                expected |= set(range(after + 1, last + 1))
        read = _lsns_pandas_reads(root / "out") if expected else []
        assert read == sorted(expected)


def test_an_export_that_died_before_its_manifest_is_written_again_once(tmp_path: Path, monkeypatch) -> None:
    with ObservationLog(tmp_path / "log") as log:
        log.append_and_wait([("u", "i", 1.0, "v1")] * 5)
        export_parquet(tmp_path / "log", tmp_path / "out")
        log.append_and_wait([("u", "i", 2.0, "v1")] * 3)

    def die(*args: object) -> None:
        raise RuntimeError("the process died here")

    with monkeypatch.context() as patch:  # the files of 6..8 are in place, the manifest never names them
        patch.setattr(log_export, "_write_manifest", die)
        with pytest.raises(RuntimeError):
            export_parquet(tmp_path / "log", tmp_path / "out")
    stray = next((tmp_path / "out").glob("date=*")) / ".lsn-00000000000000000009-00000000000000000009-0.parquet.tmp"
    stray.write_bytes(b"half a file")  # and a temporary a crash left mid-write
    assert export_parquet(tmp_path / "log", tmp_path / "out")["rows"] == 3
    assert _lsns_pandas_reads(tmp_path / "out") == list(range(1, 9))
    assert not stray.exists()


def test_a_directory_exported_before_the_manifest_is_not_exported_twice(tmp_path: Path) -> None:
    with ObservationLog(tmp_path / "log") as log:
        log.append_and_wait([("u", "i", 1.0, "v1")] * 8)
    old = tmp_path / "out" / "date=2026-01-01"  # as the export wrote it before: the range in the name
    old.mkdir(parents=True)
    pq.write_table(pa.table({"lsn": pa.array(range(1, 6), pa.int64())}), old / f"lsn-{1:020d}-{5:020d}-0.parquet")
    assert export_parquet(tmp_path / "log", tmp_path / "out")["first_lsn"] == 6
    assert (tmp_path / "out" / MANIFEST).exists()
    assert sorted(ds.dataset(tmp_path / "out", partitioning="hive").to_table()["lsn"].to_pylist()) == list(range(1, 9))


def test_a_damaged_manifest_is_refused_naming_the_file_and_what_to_do(tmp_path: Path) -> None:
    from veloxserve.errors import Conflict

    with ObservationLog(tmp_path / "log") as log:
        log.append_and_wait([("u", "i", 1.0, "v1")] * 2)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / MANIFEST).write_text("{not json")
    with pytest.raises(Conflict, match="damaged.*new directory") as raised:
        export_parquet(tmp_path / "log", tmp_path / "out")
    assert raised.value.field == "out" and not list((tmp_path / "out").rglob("*.parquet"))


def test_a_second_export_into_a_directory_being_exported_to_is_refused(tmp_path: Path) -> None:
    from veloxserve.errors import Conflict
    from veloxserve.storage.home_lock import HomeLock

    with ObservationLog(tmp_path / "log") as log:
        log.append_and_wait([("u", "i", 1.0, "v1")] * 3)
    (tmp_path / "out").mkdir()
    running = HomeLock(tmp_path / "out" / log_export.LOCK)  # as an export in progress holds it
    try:
        with pytest.raises(Conflict, match="another --out"):
            export_parquet(tmp_path / "log", tmp_path / "out")
        assert not list((tmp_path / "out").rglob("*.parquet"))
    finally:
        running.release()
    assert export_parquet(tmp_path / "log", tmp_path / "out")["rows"] == 3


@pytest.mark.slow
def test_cli_export_exits_zero_on_every_run(tmp_path: Path) -> None:
    """The export used to abort at interpreter exit (exit 134, "terminate called without an active
    exception") in some runs, after writing correct files: Arrow's threads held a Python callback."""
    with ObservationLog(tmp_path / "home" / "models" / "songs" / "log") as log:
        log.append_and_wait([("u", "i", 1.0, "v1")] * 4)
    cli = [
        sys.executable,
        "-m",
        "veloxserve.cli",
        "log",
        "export",
        "--home",
        str(tmp_path / "home"),
        "--model",
        "songs",
    ]
    runs = [
        subprocess.run(cli + ["--out", str(tmp_path / f"out{n}")], capture_output=True, text=True, timeout=120)
        for n in range(8)
    ]
    assert [(r.returncode, "terminate called" in r.stderr) for r in runs] == [(0, False)] * len(runs)
