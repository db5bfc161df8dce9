"""Training-vs-serving deviations: what recent requests look like next to the training data.

`ServingSketch` keeps, per served version, bounded rings filled on the request path with a few
vectorised writes (no per-item Python work on the success path): whether each of the last
`window` items named by a request was unknown to the catalogue, whether each of the last
`window` users asking was one the version was not trained on, and the last `sample` served
(item row, score) pairs. `deviations` compares them with the version's TrainingReference when
asked (a scrape, GET /models/{name}/alerts), never on the request path:

    unknown items share    items named by predict / observe that the catalogue lacks
    new users share        predict / top-k requests by users absent from the training data
    scores                 served scores against the version's scores of its training rows:
                           two-sample KS, PSI over the reference's deciles, χ² over the same bins
    features               per dimension d of f(x), the requested items' f_d against the training
                           rows' f_d: two-sample KS, p-values Bonferroni-adjusted over the
                           dimensions tested (a constant dimension is not tested)

The statistics are checked against scipy (tests/serving/test_deviations.py): KS is
scipy.stats.ks_2samp's with its asymptotic p-value, χ² is scipy.stats.chisquare's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import chi2, kstwo

from veloxserve.models.reference import TrainingReference

BINS = 10  # PSI and χ² over the reference's deciles
_PSI_FLOOR = 1e-4  # a bin share is at least this, so an empty bin costs a large but finite PSI


class _Ring:
    """The last `capacity` values pushed (order within the ring is not kept: shares and
    distributions do not need it)."""

    def __init__(self, capacity: int, dtype: Any) -> None:
        self.values = np.zeros(capacity, dtype=dtype)
        self.count = 0

    def push(self, values: np.ndarray) -> None:
        capacity, n = self.values.size, values.size
        if n > capacity:
            values = values[-capacity:]
        start = (self.count + n - values.size) % capacity
        head = min(values.size, capacity - start)  # at most two slices: to the end, then from the start
        self.values[start : start + head] = values[:head]
        self.values[: values.size - head] = values[head:]
        self.count += n

    def recent(self) -> np.ndarray:
        return self.values[: min(self.count, self.values.size)]


class ServingSketch:
    """Bounded sketches of a served version's recent requests, cheap to fill, read on demand."""

    _FLUSH = 64  # single predictions are buffered in a list and written to the rings this many at a time

    def __init__(self, window: int, sample: int) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[int, bool, float]] = []
        self._unknown = _Ring(window, np.bool_)
        self._new_users = _Ring(window, np.bool_)
        self._rows = _Ring(sample, np.int64)
        self._scores = _Ring(sample, np.float64)

    def items(self, unknown: np.ndarray) -> None:
        """Items named by a request: True where the catalogue does not know the item."""
        with self._lock:
            self._unknown.push(unknown)

    def users(self, new: np.ndarray) -> None:
        """Users asking: True where the version was not trained on the user."""
        with self._lock:
            self._new_users.push(new)

    def served(self, rows: np.ndarray, scores: np.ndarray) -> None:
        """Scores served for catalogue rows (predict)."""
        with self._lock:
            self._rows.push(rows)
            self._scores.push(scores)

    def predicted(self, rows: np.ndarray, new_users: np.ndarray, scores: np.ndarray) -> None:
        """A predict answered: known items at `rows`, which users were new, the scores served."""
        with self._lock:
            self._unknown.push(np.zeros(rows.size, dtype=np.bool_))
            self._new_users.push(new_users)
            self._rows.push(rows)
            self._scores.push(scores)

    def predicted_one(self, row: int, new_user: bool, score: float) -> None:
        """One predict answered (the single-query route): a list append, the rings every _FLUSH."""
        pending = self._pending
        pending.append((row, new_user, score))  # atomic under the GIL; one racing a flush may be dropped
        if len(pending) >= self._FLUSH:
            with self._lock:
                self._flush()

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if pending:
            rows, new, scores = zip(*pending)
            self._unknown.push(np.zeros(len(rows), dtype=np.bool_))
            self._new_users.push(np.array(new, dtype=np.bool_))
            self._rows.push(np.array(rows, dtype=np.int64))
            self._scores.push(np.array(scores, dtype=np.float64))

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            self._flush()
            return {
                "items": self._unknown.count,
                "unknown": self._unknown.recent().copy(),
                "users": self._new_users.count,
                "new_users": self._new_users.recent().copy(),
                "rows": self._rows.recent().copy(),
                "scores": self._scores.recent().copy(),
            }


# ---- statistics --------------------------------------------------------------------------
def ks_2samp_columns(reference: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sample KS statistic and asymptotic p-value (scipy's method="asymp") per column."""
    reference, current = np.atleast_2d(reference.T).T, np.atleast_2d(current.T).T
    m, n = reference.shape[0], current.shape[0]
    a, b = np.sort(reference, axis=0), np.sort(current, axis=0)
    both = np.concatenate([a, b], axis=0)
    d = np.empty(a.shape[1])
    for j in range(a.shape[1]):  # one column (feature dimension) at a time: a few dozen at most
        cdf_a = np.searchsorted(a[:, j], both[:, j], side="right") / m
        cdf_b = np.searchsorted(b[:, j], both[:, j], side="right") / n
        d[j] = np.abs(cdf_a - cdf_b).max()
    p = np.clip(kstwo.sf(d, np.round(m * n / (m + n))), 0.0, 1.0)
    return d, p


def bin_edges(reference: np.ndarray, bins: int = BINS) -> np.ndarray:
    """Interior edges at the reference's quantiles (ties merged), so bins hold similar shares."""
    inner = np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1], method="inverted_cdf")
    return np.unique(inner)


def binned(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Counts per bin: bin j holds edges[j-1] < x <= edges[j] (the first and last are open)."""
    return np.bincount(np.searchsorted(edges, values, side="left"), minlength=edges.size + 1)


def psi(reference: np.ndarray, current: np.ndarray, bins: int = BINS) -> float:
    """Population stability index Σ (c − r) ln(c / r) over the reference's quantile bins."""
    edges = bin_edges(reference, bins)
    r = np.maximum(binned(reference, edges) / reference.size, _PSI_FLOOR)
    c = np.maximum(binned(current, edges) / current.size, _PSI_FLOOR)
    return float(((c - r) * np.log(c / r)).sum())


def chi_square(reference: np.ndarray, current: np.ndarray, bins: int = BINS) -> tuple[float, float]:
    """χ² goodness of fit of the current values' bin counts to the reference's bin shares
    (scipy.stats.chisquare(observed, expected)); bins the reference leaves empty are dropped."""
    edges = bin_edges(reference, bins)
    ref = binned(reference, edges)
    keep = ref > 0
    observed = binned(current, edges)[keep].astype(np.float64)
    expected = ref[keep] / ref[keep].sum() * observed.sum()
    statistic = float(((observed - expected) ** 2 / expected).sum())
    return statistic, float(chi2.sf(statistic, max(int(keep.sum()) - 1, 1)))


# ---- the comparison ----------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureShift:
    dimension: int
    ks: float
    p: float  # Bonferroni-adjusted over the dimensions tested


def deviations(sketch: dict[str, Any], reference: TrainingReference | None, features: np.ndarray) -> dict[str, Any]:
    """The deviations of a sketch's snapshot from the training data. Shares need only the
    catalogue and the trained users; score and feature tests need the version's reference."""
    unknown, new_users = sketch["unknown"], sketch["new_users"]
    out: dict[str, Any] = {
        "items_requested": int(sketch["items"]),
        "unknown_items_share": float(unknown.mean()) if unknown.size else None,
        "user_requests": int(sketch["users"]),
        "new_users_share": float(new_users.mean()) if new_users.size else None,
        "served_sample": int(sketch["scores"].size),
        "reference_rows": None if reference is None else int(reference.scores.size),
        "scores": None,
        "features": None,
    }
    scores, rows = sketch["scores"], sketch["rows"]
    if reference is None or scores.size == 0:
        return out
    d, p = ks_2samp_columns(reference.scores, scores)
    statistic, chi_p = chi_square(reference.scores, scores)
    out["scores"] = {
        "ks": float(d[0]),
        "ks_p": float(p[0]),
        "psi": psi(reference.scores, scores),
        "chi2": statistic,
        "chi2_p": chi_p,
        "reference_mean": float(reference.scores.mean()),
        "served_mean": float(scores.mean()),
    }
    ref_f, cur_f = features[reference.item_rows], features[rows]
    tested = np.flatnonzero(ref_f.std(axis=0) > 0)  # the constant dimension says nothing
    if tested.size:
        d, p = ks_2samp_columns(ref_f[:, tested], cur_f[:, tested])
        adjusted = np.minimum(p * tested.size, 1.0)
        out["features"] = [
            FeatureShift(int(dim), float(ks), float(pa)).__dict__ for dim, ks, pa in zip(tested, d, adjusted)
        ]
    return out
