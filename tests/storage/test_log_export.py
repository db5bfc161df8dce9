"""The observation log exported as Parquet is readable by standard tools and loses nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as ds

from veloxserve.storage.log_export import export_parquet
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
    assert list(zip(table["user"].to_pylist(), table["item"].to_pylist(), table["score"].to_pylist(),
                    table["model_version"].to_pylist())) == rows
    assert set(table["date"].to_pylist()) == {r.timestamp and __import__("datetime").datetime.fromtimestamp(
        r.timestamp, __import__("datetime").timezone.utc).date().isoformat() for r in read_log(tmp_path / "log")}


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
        log.append_and_wait([("u", "i", 1.0, "v1"), ("u", "j", 0.0, "v1", "d1"), ("u", "k", 1.0, "v1", None, "key-3"),
                             ("u", "l", 1.0, "v1", "d2", "key-4")])
    export_parquet(tmp_path / "log", tmp_path / "out")
    table = ds.dataset(tmp_path / "out", format="parquet", partitioning="hive").to_table().sort_by("lsn")
    assert table["decision"].to_pylist() == [None, "d1", None, "d2"]
    assert table["id"].to_pylist() == [None, None, "key-3", "key-4"]
    assert [r.id for r in read_log(tmp_path / "log")] == [None, None, "key-3", "key-4"]
