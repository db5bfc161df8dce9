"""Ratings files: CSV or Parquet (user,item,score[,timestamp]) and the MovieLens formats.

Ids are read as strings (canonical ids), whatever they look like in the file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from veloxserve.errors import InvalidInput, invalid_parameter

COLUMNS = ("user", "item", "score")


@dataclass(frozen=True)
class Ratings:
    users: np.ndarray  # unicode ids
    items: np.ndarray  # unicode ids
    scores: np.ndarray  # float64
    timestamps: np.ndarray | None = None  # int64 seconds

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def take(self, index: np.ndarray) -> Ratings:
        ts = None if self.timestamps is None else self.timestamps[index]
        return Ratings(self.users[index], self.items[index], self.scores[index], ts)


def _bad(path: Path, problem: str) -> InvalidInput:
    return InvalidInput(
        f"Cannot read ratings from {path}: {problem}. Expected CSV or Parquet with columns user,item,score"
        "[,timestamp], or MovieLens u.data (tab-separated) or ratings.dat ('::'-separated).",
        field="ratings",
    )


def check_columns(columns: Mapping[str, str], where: str = "--columns") -> dict[str, str]:
    """A mapping {user|item|score|timestamp: the file's column}, checked: `--columns user=uid,item=iid`."""
    known = (*COLUMNS, "timestamp")
    for name, column in columns.items():
        if name not in known:
            raise invalid_parameter(name, where, f"one of {', '.join(known)} (=the file's column)", column)
        if not isinstance(column, str) or not column:
            raise invalid_parameter(name, where, "the name of a column of the file", column)
    return dict(columns)


def load_ratings(path: str | Path, columns: Mapping[str, str] | None = None) -> Ratings:
    """Read a ratings file of any supported format into arrays. `columns` names the file's
    columns when they are not user, item, score[, timestamp]: {"user": "uid", "score": "rating"}."""
    path = Path(path)
    columns = check_columns(columns or {})
    if not path.is_file():
        raise _bad(path, "no such file")
    try:
        if path.suffix == ".parquet":
            table = pq.read_table(path)
        else:
            table = _read_text(path, ids=(columns.get("user", "user"), columns.get("item", "item")))
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
        raise _bad(path, str(exc).splitlines()[0]) from None
    if columns:
        table = _renamed(table, columns, path)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise _bad(path, f"missing column(s) {', '.join(missing)} (found {', '.join(table.column_names)})")
    if table.num_rows == 0:
        raise _bad(path, "it holds no ratings")
    users = np.asarray(table["user"].cast(pa.string()).to_numpy(zero_copy_only=False)).astype(str)
    items = np.asarray(table["item"].cast(pa.string()).to_numpy(zero_copy_only=False)).astype(str)
    try:
        scores = table["score"].cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)
    except pa.ArrowException:
        raise _bad(path, "column score is not numeric") from None
    if not np.isfinite(scores).all():
        row = int(np.flatnonzero(~np.isfinite(scores))[0])
        raise _bad(path, f"score of row {row} is {scores[row]} (missing, NaN or infinite)")
    timestamps = None
    if "timestamp" in table.column_names:
        timestamps = table["timestamp"].cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.int64)
    return Ratings(users, items, scores, timestamps)


def _renamed(table: pa.Table, columns: dict[str, str], path: Path) -> pa.Table:
    """The table with the mapped columns under their canonical names (and nothing else under them)."""
    names = table.column_names
    for name, column in columns.items():
        if column not in names:
            raise _bad(path, f"no column {column!r} for {name} (--columns {name}={column}; found {', '.join(names)})")
    source = {column: name for name, column in columns.items()}
    keep = [c for c in names if c in source or c not in columns]  # a canonical name mapped elsewhere is dropped
    return table.select(keep).rename_columns([source.get(c, c) for c in keep])


def _read_text(path: Path, ids: tuple[str, str] = ("user", "item")) -> pa.Table:
    with open(path, "rb") as fh:
        head = fh.read(4096)
    movielens_ids = {"user": pa.string(), "item": pa.string()}
    string_ids = {ids[0]: pa.string(), ids[1]: pa.string()}
    movielens = ["user", "item", "score", "timestamp"]
    if b"::" in head.split(b"\n", 1)[0]:  # ratings.dat: '::' is two characters, which Arrow cannot split on
        data = path.read_bytes().replace(b"::", b"\t")
        return pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(column_names=movielens),
            parse_options=pacsv.ParseOptions(delimiter="\t"),
            convert_options=pacsv.ConvertOptions(column_types=movielens_ids),
        )
    first = head.split(b"\n", 1)[0]
    if b"\t" in first and not any(c in first for c in (b"user", b"item", b"score")):  # u.data and friends
        return pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=movielens),
            parse_options=pacsv.ParseOptions(delimiter="\t"),
            convert_options=pacsv.ConvertOptions(column_types=movielens_ids),
        )
    delimiter = "\t" if b"\t" in first else ","
    return pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter=delimiter),
        convert_options=pacsv.ConvertOptions(column_types=string_ids),
    )


def _table(ratings: Ratings) -> pa.Table:
    columns = {"user": ratings.users, "item": ratings.items, "score": ratings.scores}
    if ratings.timestamps is not None:
        columns["timestamp"] = ratings.timestamps
    return pa.table(columns)


def write_ratings_csv(ratings: Ratings, path: str | Path) -> None:
    pacsv.write_csv(_table(ratings), Path(path))


def write_ratings_parquet(ratings: Ratings, path: str | Path | BinaryIO) -> None:
    pq.write_table(_table(ratings), str(path) if isinstance(path, Path) else path)


def split_holdout(ratings: Ratings, fraction: float, seed: int = 0) -> tuple[Ratings, Ratings]:
    """A random (train, held-out) split; fraction 0 gives an empty held-out set."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    mask = np.random.default_rng(seed).random(len(ratings)) < fraction
    return ratings.take(~mask), ratings.take(mask)
