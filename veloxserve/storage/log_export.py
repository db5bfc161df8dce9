"""The observation log as data: Parquet files partitioned by date, for the trainer and for users.

pandas, DuckDB and Spark read the result directly (`<out>/date=YYYY-MM-DD/*.parquet`, hive
partitioning). File names carry the LSN range they hold, so exporting again after more
observations adds files rather than rewriting old ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from veloxserve.errors import StoreUnavailable
from veloxserve.storage.observation_log import read_log

SCHEMA = pa.schema([
    ("lsn", pa.int64()), ("user", pa.string()), ("item", pa.string()), ("score", pa.float64()),
    ("timestamp", pa.timestamp("us", tz="UTC")), ("model_version", pa.string()),
    ("decision", pa.string()),  # serving context: the decision-log id of the list this answers, if any
    ("id", pa.string()),  # the client's idempotency key, if it sent one
    ("date", pa.string()),
])


def export_parquet(log_dir: Path, out_dir: Path, *, after_lsn: int = 0) -> dict[str, Any]:
    """Write every logged observation after `after_lsn` to Parquet; returns what was written."""
    records = list(read_log(log_dir, after_lsn))
    if not records:
        return {"rows": 0, "first_lsn": None, "last_lsn": after_lsn, "files": []}
    lsn = np.fromiter((r.lsn for r in records), dtype=np.int64, count=len(records))
    seconds = np.fromiter((r.timestamp for r in records), dtype=np.float64, count=len(records))
    stamps = (seconds * 1e6).astype("datetime64[us]")
    table = pa.table({
        "lsn": lsn,
        "user": [r.user for r in records],
        "item": [r.item for r in records],
        "score": np.fromiter((r.score for r in records), dtype=np.float64, count=len(records)),
        "timestamp": pa.array(stamps, type=pa.timestamp("us", tz="UTC")),
        "model_version": [r.version for r in records],
        "decision": [r.decision for r in records],
        "id": [r.id for r in records],
        "date": stamps.astype("datetime64[D]").astype(str),
    }, schema=SCHEMA)
    first, last = int(lsn[0]), int(lsn[-1])
    written: list[str] = []
    try:
        pq.write_to_dataset(
            table, root_path=str(out_dir), partition_cols=["date"],
            basename_template=f"lsn-{first:020d}-{last:020d}-{{i}}.parquet",
            existing_data_behavior="overwrite_or_ignore",
            file_visitor=lambda f: written.append(f.path),
        )
    except (OSError, pa.ArrowException) as exc:
        raise StoreUnavailable(f"Cannot write Parquet under {out_dir}: {exc}.") from exc
    return {"rows": len(records), "first_lsn": first, "last_lsn": last, "files": sorted(written)}
