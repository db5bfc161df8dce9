"""Item tables on disk: a CSV or Parquet file with an `item` column and any attribute columns.

They feed top-k filters (models/attributes.py turns a table into columns aligned to a catalogue)
and, in a `text` column, content features. Reading and writing them is I/O, so it lives here.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from veloxserve.errors import InvalidInput
from veloxserve.storage.atomic import replace_atomically


def read_item_table(path: Path) -> pa.Table:
    """An attributes file (CSV or Parquet) as a table with an `item` column; InvalidInput if not."""
    path = Path(path)
    try:
        table = pq.read_table(path) if path.suffix == ".parquet" else pacsv.read_csv(path)
    except (pa.ArrowException, OSError) as exc:
        raise InvalidInput(f"Cannot read item attributes from {path}: {exc}.", field="attributes") from None
    if "item" not in table.column_names:
        raise InvalidInput(
            f"Item attributes in {path} need an 'item' column (found {table.column_names}).", field="attributes"
        )
    return table


def write_item_table(path: Path, table: pa.Table) -> None:
    """Keep `table` as Parquet at `path`, replaced atomically."""
    replace_atomically(path, lambda fh: pq.write_table(table, fh))
