"""Removing one user's data from the files a model keeps: base training data and versions.

Each file is rewritten to a temporary name, fsynced and renamed over the original, so a crash
leaves either the old file or the new one. (The log erases records in place of its own; the user
stores delete keys.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from veloxserve.storage.atomic import fsync_dir, replace_atomically, temporary_name, write_synced

_USER_ARRAYS = ("user_ids", "user_weights", "user_gram", "user_rhs", "user_counts")


def drop_user_from_base_data(path: Path, user: str) -> int:
    """Rewrite the base ratings without `user`; returns the rows removed."""
    if not path.is_file():
        return 0
    table = pq.read_table(path)
    keep = pc.not_equal(table["user"].cast(pa.string()), pa.scalar(user))
    removed = table.num_rows - pc.sum(keep.cast(pa.int64())).as_py() if table.num_rows else 0
    if removed:
        kept = table.filter(keep)
        replace_atomically(path, lambda fh: pq.write_table(kept, fh))
    return int(removed)


def drop_user_from_version(directory: Path, user: str) -> int:
    """Remove `user`'s trained statistics (and the items they rated) from a version directory;
    returns the number of ratings their statistics summarised (0 if the user was not in it)."""
    ids_path = directory / "user_ids.npy"
    if not ids_path.is_file():
        return 0
    ids = np.load(ids_path, allow_pickle=False)
    matches = np.flatnonzero(ids == user)
    if matches.size == 0:
        return 0
    index = int(matches[0])
    arrays = {name: np.load(directory / f"{name}.npy", allow_pickle=False) for name in _USER_ARRAYS}
    indptr = np.load(directory / "seen_indptr.npy", allow_pickle=False)
    seen = np.load(directory / "seen_items.npy", allow_pickle=False)
    start, stop = int(indptr[index]), int(indptr[index + 1])
    updated = {name: np.delete(array, index, axis=0) for name, array in arrays.items()}
    updated["seen_items"] = np.concatenate([seen[:start], seen[stop:]])
    updated["seen_indptr"] = np.concatenate([indptr[: index + 1], indptr[index + 2 :] - (stop - start)])
    # Every new file is written and fsynced before the first rename, so the window in which a
    # crash could leave the arrays mismatched is a handful of renames (a known, documented gap:
    # a version directory has no multi-file atomic replace). user_ids goes last.
    staged = []
    try:
        for name in [*sorted(set(updated) - {"user_ids"}), "user_ids"]:
            path = directory / f"{name}.npy"
            tmp = temporary_name(path)
            staged.append((tmp, path))
            write_synced(tmp, lambda fh, a=updated[name]: np.save(fh, a, allow_pickle=False))
        for tmp, path in staged:
            os.replace(tmp, path)
        fsync_dir(directory)
    finally:
        for tmp, _ in staged:
            if tmp.exists():
                tmp.unlink()
    return int(arrays["user_counts"][index])
