"""The item catalogue of a model version: item id <-> row of the feature matrix."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from veloxserve.errors import ItemNotFound
from veloxserve.ids import Id, canonical_id


class ItemCatalog:
    """Maps canonical item ids to rows, and rows back to the ids clients sent.

    When every id in the catalogue is a decimal integer (MovieLens, Catify), ids are given back
    as JSON integers, so a client that sends 27632 gets 27632 back rather than "27632".
    """

    def __init__(self, item_ids: np.ndarray) -> None:
        ids = [str(x) for x in item_ids.tolist()]
        self._rows: dict[str, int] = {item: row for row, item in enumerate(ids)}
        if len(self._rows) != len(ids):
            raise ValueError("item ids in a catalogue must be unique")
        integer_ids = all(_is_int_string(item) for item in ids)
        self._external: list[Id] = [int(x) for x in ids] if integer_ids else list[Id](ids)

    def __len__(self) -> int:
        return len(self._external)

    def __contains__(self, item: str) -> bool:
        return item in self._rows

    def row(self, item: Any, field: str = "item", where: str = "predict") -> int:
        """The row of one item; raises ItemNotFound naming the item."""
        key = canonical_id(item, field, where)
        row = self._rows.get(key)
        if row is None:
            raise ItemNotFound(
                f"Item {item!r} in {field!r} is not in the catalogue of this model version "
                f"({len(self)} items). Check the id, or retrain with the item's ratings.",
                field=field,
            )
        return row

    def rows(self, items: Sequence[Any], field: str = "items", where: str = "predict") -> np.ndarray:
        """Rows of many items (all must exist), as an int64 array."""
        return np.fromiter((self.row(x, field, where) for x in items), dtype=np.int64, count=len(items))

    def lookup(self, key: str) -> int | None:
        """Row of a canonical item id, or None."""
        return self._rows.get(key)

    def external(self, row: int) -> Id:
        return self._external[row]

    def externals(self, rows: np.ndarray) -> list[Id]:
        ext = self._external
        return [ext[r] for r in rows.tolist()]


def _is_int_string(s: str) -> bool:
    body = s[1:] if s.startswith("-") else s
    return body.isdigit() and body.isascii() and (body == "0" or not body.startswith("0"))
