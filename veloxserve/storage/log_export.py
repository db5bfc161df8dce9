"""The observation log as data: Parquet files partitioned by date, for the trainer and for users.

pandas, DuckDB and Spark read the result directly (`<out>/date=YYYY-MM-DD/*.parquet`, hive
partitioning). File names carry the LSN range they hold.

An export is idempotent: `<out>/_veloxserve_export.json` (ignored by those readers, like every
name starting with `_` or `.`) records which LSN ranges the directory holds, so exporting again
into the same directory writes only observations it does not hold yet, and pandas reads every
LSN once. Each file is written under a hidden temporary name and renamed into place; the
manifest is replaced last, so an export that died half-way claims nothing, and the next one
removes the files it left and writes them again. Nothing acknowledged is lost, nothing is doubled.
One export at a time per directory (`_veloxserve_export.lock`); a second one is refused (409).

Files are written by `pq.write_table` on the calling thread. `pq.write_to_dataset` with a Python
`file_visitor` aborted the process at exit in some runs ("terminate called without an active
exception", exit 134): Arrow's I/O threads held the Python callable and took the GIL while the
interpreter was finalising, and Python 3.11 ends such a thread with pthread_exit, whose unwinding
through C++ calls std::terminate. No Python object is handed to Arrow's threads here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from veloxserve.errors import Conflict, StoreUnavailable
from veloxserve.storage.atomic import fsync_dir, replace_atomically
from veloxserve.storage.home_lock import HomeLock
from veloxserve.storage.observation_log import read_log

SCHEMA = pa.schema(
    [
        ("lsn", pa.int64()),
        ("user", pa.string()),
        ("item", pa.string()),
        ("score", pa.float64()),
        ("timestamp", pa.timestamp("us", tz="UTC")),
        ("model_version", pa.string()),
        ("decision", pa.string()),  # serving context: the decision-log id of the list this answers, if any
        ("id", pa.string()),  # the client's idempotency key, if it sent one
        ("date", pa.string()),
    ]
)
MANIFEST = "_veloxserve_export.json"
LOCK = "_veloxserve_export.lock"
_FILE = re.compile(r"lsn-(\d{20})-(\d{20})-\d+\.parquet")


def export_parquet(log_dir: Path, out_dir: Path, *, after_lsn: int = 0) -> dict[str, Any]:
    """Write every logged observation after `after_lsn` that `out_dir` does not hold yet to
    Parquet; returns what was written (0 rows when the directory already holds them all)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # One export at a time per directory: another would take this one's unlisted files for leftovers.
        lock = HomeLock(out_dir / LOCK, advice="Wait for that export to finish, or export into another --out.")
        try:
            return _export(Path(log_dir), out_dir, after_lsn)
        finally:
            lock.release()
    except (OSError, pa.ArrowException) as exc:
        raise StoreUnavailable(f"Cannot write Parquet under {out_dir}: {exc}.") from exc


def _export(log_dir: Path, out_dir: Path, after_lsn: int) -> dict[str, Any]:
    ranges, files = _committed(out_dir)
    records = list(read_log(log_dir, _first_missing(ranges, after_lsn)))
    lsn = np.fromiter((r.lsn for r in records), dtype=np.int64, count=len(records))
    held = np.zeros(len(lsn), dtype=bool)
    for low, high in ranges:  # one pass per earlier export, not per record
        held |= (lsn > low) & (lsn <= high)
    last_read = max(int(lsn[-1]) if len(lsn) else after_lsn, after_lsn)
    keep = np.flatnonzero(~held)
    if not len(keep):
        return {"rows": 0, "first_lsn": None, "last_lsn": last_read, "files": []}
    table = _table([records[i] for i in keep], lsn[keep])
    written = [
        _write_partition(out_dir, table.filter(pc.equal(table["date"], day)), day)
        for day in pc.unique(table["date"]).to_pylist()
    ]
    # Claimed only now, once every file is in place: (after_lsn, last_read] is held from here on.
    fsync_dir(out_dir)  # new date= directories are durable before the manifest names their files
    ranges.append((after_lsn, last_read))
    _write_manifest(out_dir, ranges, files + [str(path.relative_to(out_dir)) for path in written])
    return {
        "rows": int(table.num_rows),
        "first_lsn": int(lsn[keep[0]]),
        "last_lsn": int(lsn[keep[-1]]),
        "files": sorted(str(path) for path in written),
    }


def _table(records: list, lsn: np.ndarray) -> pa.Table:
    seconds = np.fromiter((r.timestamp for r in records), dtype=np.float64, count=len(records))
    stamps = (seconds * 1e6).astype("datetime64[us]")
    return pa.table(
        {
            "lsn": lsn,
            "user": [r.user for r in records],
            "item": [r.item for r in records],
            "score": np.fromiter((r.score for r in records), dtype=np.float64, count=len(records)),
            "timestamp": pa.array(stamps, type=pa.timestamp("us", tz="UTC")),
            "model_version": [r.version for r in records],
            "decision": [r.decision for r in records],
            "id": [r.id for r in records],
            "date": stamps.astype("datetime64[D]").astype(str),
        },
        schema=SCHEMA,
    )


def _write_partition(out_dir: Path, part: pa.Table, day: str) -> Path:
    """One date's rows, hive-style (the date is in the directory name, not the file)."""
    first, last = pc.min(part["lsn"]).as_py(), pc.max(part["lsn"]).as_py()
    directory = out_dir / f"date={day}"
    directory.mkdir(exist_ok=True)
    path = directory / f"lsn-{first:020d}-{last:020d}-0.parquet"
    body = part.drop_columns(["date"])
    replace_atomically(path, lambda fh: pq.write_table(body, fh))
    return path


def _committed(out_dir: Path) -> tuple[list[tuple[int, int]], list[str]]:
    """The (after, last] LSN ranges the directory holds, and its files. Parquet files the manifest
    does not list were left by an export that did not finish: removed, their rows are written again."""
    manifest = out_dir / MANIFEST
    if not manifest.exists():
        found = _data_files(out_dir)
        # A directory exported before the manifest existed: its file names say what it holds.
        ranges = sorted({(int(m[1]) - 1, int(m[2])) for m in (_FILE.fullmatch(p.name) for p in found) if m})
        files = [str(p.relative_to(out_dir)) for p in found]
        _write_manifest(out_dir, ranges, files)  # before any new file: from now on, unlisted means unfinished
        return ranges, files
    try:
        state = orjson.loads(manifest.read_bytes())
        ranges = [(int(low), int(high)) for low, high in state["ranges"]]
        listed = [str(name) for name in state["files"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise Conflict(
            f"{manifest} is damaged ({exc}): it says which observations {out_dir} holds. "
            "Export into a new directory, or delete this one and export again.",
            field="out",
        ) from exc
    known = set(listed)
    for path in _data_files(out_dir):
        if str(path.relative_to(out_dir)) not in known:
            path.unlink()
    for leftover in out_dir.glob("date=*/.lsn-*.tmp"):
        leftover.unlink()
    return ranges, listed


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """(after, last] ranges with overlapping or touching ones joined: the manifest stays small."""
    out: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if out and low <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


def _first_missing(ranges: list[tuple[int, int]], after_lsn: int) -> int:
    """Where reading the log must start: past the held ranges that begin at or before after_lsn."""
    for low, high in _merged(ranges):
        if low <= after_lsn < high:
            after_lsn = high
    return after_lsn


def _data_files(out_dir: Path) -> list[Path]:
    return sorted(p for p in out_dir.glob("date=*/lsn-*.parquet") if _FILE.fullmatch(p.name))


def _write_manifest(out_dir: Path, ranges: list[tuple[int, int]], files: list[str]) -> None:
    state = {"ranges": [list(r) for r in _merged(ranges)], "files": sorted(set(files))}

    def write(fh: BinaryIO) -> None:
        fh.write(orjson.dumps(state, option=orjson.OPT_INDENT_2))

    replace_atomically(out_dir / MANIFEST, write)
