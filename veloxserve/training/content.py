"""θ of the content features: a basis from hashed item text to the collaborative item vectors.

Learned offline after ALS, as a supervised feature model with side information (the Velox
papers' document-recommendation setting): a ridge regression from φ(text), the hashed n-gram
counts of each catalogue item's text, onto [v_x, b_x], the vectors and biases ALS found for it.
The regression is multi-output ridge on a sparse design, solved by scikit-learn without ever
forming the (buckets × buckets) Gram matrix, so the bucket count can be large.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import sklearn
from sklearn.linear_model import Ridge

from veloxserve.errors import InvalidInput
from veloxserve.models.content import KIND, text_vectorizer

TEXT_COLUMN = "text"
DEFAULT_BUCKETS = 1 << 16
DEFAULT_NGRAM_MAX = 3
DEFAULT_ALPHA = 0.1
HOLDOUT_FRACTION = 0.1


def read_item_texts(path: Path) -> dict[str, str] | None:
    """Item id -> text from a model's item table (Parquet), or None when it has no text column."""
    if not path.is_file():
        return None
    table = pq.read_table(path)
    if TEXT_COLUMN not in table.column_names:
        return None
    items = table["item"].cast(pa.string()).to_pylist()
    texts = table[TEXT_COLUMN].cast(pa.string()).fill_null("").to_pylist()
    return dict(zip(items, texts))


def fit_text_basis(
    arrays: dict[str, np.ndarray],
    texts: dict[str, str],
    *,
    n_buckets: int = DEFAULT_BUCKETS,
    ngram_max: int = DEFAULT_NGRAM_MAX,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The basis B, shape (n_buckets, rank + 1), and a report for the version's meta.json.

    `arrays` are a trained version's (item_ids, item_factors, item_bias). Before the final fit on
    every item with a text, a fit on 90% of them is scored on the rest: R² of the predicted item
    vectors and biases, i.e. how well the basis places an item it has never seen.
    """
    item_ids = [str(x) for x in arrays["item_ids"].tolist()]
    rows = np.array([i for i, item in enumerate(item_ids) if texts.get(item)], dtype=np.int64)
    if rows.size < 10:
        raise InvalidInput(
            f"Content features need item texts for at least 10 catalogue items; {rows.size} of "
            f"{len(item_ids)} have one. Check the 'item' ids and the '{TEXT_COLUMN}' column of the item file.",
            field="items",
        )
    target = np.column_stack([arrays["item_factors"][rows], arrays["item_bias"][rows]])
    with sklearn.config_context(skip_parameter_validation=False):
        design = text_vectorizer(n_buckets, ngram_max).transform([texts[item_ids[r]] for r in rows])
    rng = np.random.default_rng(seed)
    order = rng.permutation(rows.size)
    n_test = max(1, int(round(HOLDOUT_FRACTION * rows.size)))
    test, train = order[:n_test], order[n_test:]
    heldout = _ridge(design[train], target[train], alpha).predict(design[test])
    residual = ((target[test] - heldout) ** 2).sum()
    total = ((target[test] - target[test].mean(axis=0)) ** 2).sum()
    basis = np.ascontiguousarray(_ridge(design, target, alpha).coef_.T)  # (n_buckets, rank + 1)
    report = {
        "kind": KIND,
        "n_buckets": n_buckets,
        "ngram_max": ngram_max,
        "alpha": alpha,
        "items_with_text": int(rows.size),
        "heldout_items": int(n_test),
        "heldout_r2": float(1.0 - residual / total) if total > 0 else None,
    }
    return basis, report


def _ridge(design: Any, target: np.ndarray, alpha: float) -> Ridge:
    return Ridge(alpha=alpha, fit_intercept=False, solver="sparse_cg", tol=1e-8, max_iter=2000).fit(design, target)
