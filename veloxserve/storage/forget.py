"""Rewriting files when a user is forgotten: base training data, and arrays of a version directory.

Each file is rewritten to a temporary name, fsynced and renamed over the original, so a crash
leaves either the old file or the new one. Which arrays hold a user's data, and how to cut them,
is the version contract's (models/version.py `without_user`); here they are only arrays. (The log
erases records in place of its own; the user stores delete keys.)
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from veloxserve.storage.atomic import fsync_dir, replace_atomically, temporary_name, write_synced


def drop_user_from_base_data(path: Path, user: str) -> int:
    """Rewrite the base ratings without `user`; returns the rows removed."""
    if not path.is_file():
        return 0
    table = pq.read_table(path)
    keep = pc.not_equal(table["user"].cast(pa.string()), pa.scalar(user))
    removed = table.num_rows - pc.sum(keep.cast(pa.int64())).as_py() if table.num_rows else 0
    if removed:
        kept = table.filter(keep)

        def write(fh: BinaryIO) -> None:
            pq.write_table(kept, fh)

        replace_atomically(path, write)
    return int(removed)


def read_arrays(directory: Path, names: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The named `.npy` arrays of a directory; None if the first of them is absent."""
    if not (directory / f"{names[0]}.npy").is_file():
        return None
    return {name: np.load(directory / f"{name}.npy", allow_pickle=False) for name in names}


def replace_arrays(directory: Path, arrays: Mapping[str, np.ndarray], last: str) -> None:
    """Replace `.npy` arrays of a directory, `last` renamed last.

    Every new file is written and fsynced before the first rename, so the window in which a
    crash could leave the arrays mismatched is a handful of renames (a known, documented gap:
    a version directory has no multi-file atomic replace)."""
    staged = []
    try:
        for name in [*sorted(set(arrays) - {last}), last]:
            path = directory / f"{name}.npy"
            tmp = temporary_name(path)
            staged.append((tmp, path))
            array = arrays[name]

            def write(fh: BinaryIO, array: np.ndarray = array) -> None:
                np.save(fh, array, allow_pickle=False)

            write_synced(tmp, write)
        for tmp, path in staged:
            os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()
