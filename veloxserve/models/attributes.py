"""Item attributes for candidate filters (`?filter=genre:jazz`), aligned to catalogue rows.

Built from a table with an `item` column and any attribute columns (values are compared as
strings; storage/item_tables.py reads and writes the files).
A filter is `name:value[|value…][,name:value…]`: values of one attribute
are alternatives (OR), attributes combine with AND. Evaluating one is a few vectorised
comparisons over the catalogue, never a loop over items.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from veloxserve.errors import invalid_parameter
from veloxserve.models.catalog import ItemCatalog


class ItemAttributes:
    def __init__(self, columns: dict[str, np.ndarray]) -> None:
        self.columns = columns

    @classmethod
    def from_table(cls, table: pa.Table, catalog: ItemCatalog) -> ItemAttributes:
        items = np.asarray(table["item"].cast(pa.string()).to_numpy(zero_copy_only=False)).astype(str)
        rows = np.fromiter(
            (-1 if (r := catalog.lookup(x)) is None else r for x in items), dtype=np.int64, count=len(items)
        )
        known = rows >= 0
        columns = {}
        for name in table.column_names:
            if name in ("item", "text"):  # the id, and the text content features are trained on
                continue
            values = np.asarray(table[name].cast(pa.string()).fill_null("").to_numpy(zero_copy_only=False)).astype(str)
            column = np.full(len(catalog), "", dtype=values.dtype if values.size else "<U1")
            column[rows[known]] = values[known]
            columns[name] = column
        return cls(columns)

    def mask(self, expression: str, where: str = "top_k") -> np.ndarray:
        """Boolean mask over catalogue rows of the items the filter admits."""
        clauses = [c for c in expression.split(",") if c]
        if not clauses:
            raise invalid_parameter("filter", where, "name:value[|value][,name:value]", expression)
        mask: np.ndarray | None = None
        for clause in clauses:
            name, sep, values = clause.partition(":")
            if not sep or not name or not values:
                raise invalid_parameter("filter", where, "name:value[|value][,name:value]", expression)
            column = self.columns.get(name)
            if column is None:
                known = ", ".join(sorted(self.columns)) or "none loaded"
                raise invalid_parameter("filter", where, f"an attribute among: {known}", name)
            admitted = np.isin(column, values.split("|"))
            mask = admitted if mask is None else mask & admitted
        assert mask is not None  # at least one clause
        return mask


EMPTY = ItemAttributes({})
