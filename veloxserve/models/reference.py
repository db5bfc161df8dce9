"""What a version's training data looked like, kept small, for serving to compare against.

A model goes wrong in production less by bugs than by serving data that no longer resembles its
training data (Polyzotis et al., SIGMOD 2017): items it has never seen, users it was not trained
on, requests for other items than it was fitted on, scores drifting. The trainer stores, with each
version, a uniform sample of its training rows reduced to what serving can compare:

    reference_item_rows   (m,) int64    catalogue rows of the sampled training rows: the features
                                        f(x) of these are the training feature distribution, with
                                        items as often as they were rated
    reference_scores      (m,) float64  the version's own scores σ(w_u · f(x)) of the sampled rows

m is at most REFERENCE_ROWS (2,000: 32 KB per version), enough for a two-sample KS test to see a
shift of a tenth of a standard deviation. The known items are the catalogue and the known users
the trained users, which the version holds anyway. No user id is kept. Versions written before
this have no reference: serving then runs no deviation checks on them (drift detectors still run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from veloxserve.models.features import MatrixFactorizationFeatures

REFERENCE_ROWS = 2_000
REFERENCE_ARRAYS = ("reference_item_rows", "reference_scores")


@dataclass(frozen=True)
class TrainingReference:
    """A uniform sample of a version's training rows: their item rows and the version's scores."""

    item_rows: np.ndarray  # (m,) int64
    scores: np.ndarray  # (m,) float64

    def __post_init__(self) -> None:
        if self.item_rows.shape != self.scores.shape or self.item_rows.ndim != 1 or self.item_rows.size == 0:
            raise ValueError(
                f"a training reference needs item rows and scores of one non-empty length, got "
                f"{self.item_rows.shape} and {self.scores.shape}"
            )

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> TrainingReference | None:
        """The version's reference, or None for a version trained before references existed."""
        if not all(name in arrays for name in REFERENCE_ARRAYS):
            return None
        return cls(
            np.asarray(arrays["reference_item_rows"], dtype=np.int64),
            np.asarray(arrays["reference_scores"], dtype=np.float64),
        )


def sample_reference(
    arrays: dict[str, np.ndarray],
    global_mean: float,
    users: np.ndarray,
    items: np.ndarray,
    *,
    logistic: bool,
    seed: int,
    size: int = REFERENCE_ROWS,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The reference arrays of a version (arrays of the version-directory contract) trained on
    the rows (users[i], items[i]), and its meta.json entry. Rows whose user or item the version
    does not serve are skipped; with none left there is no reference (empty dict, None meta)."""
    from veloxserve.models.version import sigmoid  # one sigmoid (version.py imports this module)

    rng = np.random.default_rng(seed)
    n = len(users)
    picked = np.sort(rng.choice(n, size=min(size, n), replace=False)) if n else np.zeros(0, dtype=np.int64)
    rows = _rows_of(np.asarray(arrays["item_ids"]).astype(str), np.asarray(items)[picked].astype(str))
    who = _rows_of(np.asarray(arrays["user_ids"]).astype(str), np.asarray(users)[picked].astype(str))
    keep = (rows >= 0) & (who >= 0)
    rows, who = rows[keep], who[keep]
    if rows.size == 0:
        return {}, {}
    if "item_features" in arrays:  # a black-box basis version: f(x) of every item, computed at training
        features = np.asarray(arrays["item_features"], dtype=np.float64)[rows]
    else:
        features = MatrixFactorizationFeatures(arrays["item_factors"], arrays["item_bias"], global_mean).of_rows(rows)
    z = np.einsum("ij,ij->i", features, arrays["user_weights"][who])
    scores = sigmoid(z) if logistic else z
    return (
        {"reference_item_rows": rows, "reference_scores": np.asarray(scores, dtype=np.float64)},
        {"rows": int(rows.size), "sampled_from": int(n), "seed": seed},
    )


def _rows_of(ids: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Row of each wanted id in `ids` (unique), -1 where absent: one sort, one binary search."""
    if ids.size == 0:
        return np.full(wanted.size, -1, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    at = np.minimum(np.searchsorted(ids[order], wanted), ids.size - 1)
    return np.where(ids[order][at] == wanted, order[at], -1).astype(np.int64)
