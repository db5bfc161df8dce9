"""Training-vs-serving deviations: what recent requests look like next to the training data.

`ServingSketch` keeps, per served version, bounded rings filled on the request path by one
compiled call per request (no per-item Python work on the success path): whether each of the last
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

`merge` makes one snapshot of several sketches' (the workers of `serve --workers N`, each
answering through a monitor of its own; storage/sketch_files.py carries the readers' to worker 0).

The statistics are checked against scipy (tests/serving/test_deviations.py): KS is
scipy.stats.ks_2samp's with its asymptotic p-value, χ² is scipy.stats.chisquare's.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit
from scipy.stats import chi2, kstwo

from veloxserve.models.reference import TrainingReference

BINS = 10  # PSI and χ² over the reference's deciles
_PSI_FLOOR = 1e-4  # a bin share is at least this, so an empty bin costs a large but finite PSI


@njit(cache=True, nogil=True)
def _write(ring: np.ndarray, counts: np.ndarray, which: int, values: np.ndarray) -> None:
    """Append values to a ring (the newest `ring.size` are kept); counts[which] counts all ever."""
    capacity, start = ring.size, counts[which]
    for i in range(max(0, values.size - capacity), values.size):
        ring[(start + i) % capacity] = values[i]
    counts[which] += values.size


@njit(cache=True, nogil=True)
def _predicted(
    unknown: np.ndarray,
    new_ring: np.ndarray,
    rows_ring: np.ndarray,
    scores_ring: np.ndarray,
    counts: np.ndarray,
    new: np.ndarray,
    rows: np.ndarray,
    scores: np.ndarray,
) -> None:
    """A predict's four writes in one compiled call: known items, new users, rows and scores."""
    _write(unknown, counts, _ITEMS, np.zeros(rows.size, dtype=np.bool_))
    _write(new_ring, counts, _USERS, new)
    _write(rows_ring, counts, _SERVED, rows)
    counts[_SERVED] -= rows.size
    _write(scores_ring, counts, _SERVED, scores)


_ITEMS, _USERS, _SERVED = 0, 1, 2


def _warm_kernels() -> None:
    """Load the compiled writes now, while a version is being served in, not in the first request:
    numba's first call in a process costs ~0.3-0.5 s, which admission control would count as the
    route's service time and then refuse requests by (seen in tests/api/test_overload.py)."""
    global _WARM
    if not _WARM:
        counts, flags = np.zeros(3, dtype=np.int64), np.zeros(1, dtype=np.bool_)
        rows, scores = np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.float64)
        _write(flags, counts, _ITEMS, np.zeros(0, dtype=np.bool_))
        _predicted(flags, flags, rows, scores, counts, flags[:0], rows[:0], scores[:0])
        _WARM = True


_WARM = False


class ServingSketch:
    """Bounded sketches of a served version's recent requests, cheap to fill, read on demand."""

    _FLUSH = 64  # single predictions are buffered in a list and written to the rings this many at a time

    def __init__(self, window: int, sample: int) -> None:
        self._lock = threading.Lock()
        self._pending: list[tuple[int, bool, float]] = []
        self._unknown = np.zeros(window, dtype=np.bool_)
        self._new_users = np.zeros(window, dtype=np.bool_)
        self._rows = np.zeros(sample, dtype=np.int64)
        self._scores = np.zeros(sample, dtype=np.float64)
        self._counts = np.zeros(3, dtype=np.int64)  # items, users, served: how many ever written
        _warm_kernels()

    def items(self, unknown: np.ndarray) -> None:
        """Items named by a request: True where the catalogue does not know the item."""
        with self._lock:
            _write(self._unknown, self._counts, _ITEMS, np.asarray(unknown, dtype=np.bool_))

    def users(self, new: np.ndarray) -> None:
        """Users asking: True where the version was not trained on the user."""
        with self._lock:
            _write(self._new_users, self._counts, _USERS, np.asarray(new, dtype=np.bool_))

    def predicted(self, rows: np.ndarray, new_users: np.ndarray, scores: np.ndarray) -> None:
        """A predict answered: known items at `rows`, which users were new, the scores served."""
        with self._lock:
            _predicted(
                self._unknown,
                self._new_users,
                self._rows,
                self._scores,
                self._counts,
                np.asarray(new_users, dtype=np.bool_),
                np.asarray(rows, dtype=np.int64),
                np.asarray(scores, dtype=np.float64),
            )

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
            _predicted(
                self._unknown,
                self._new_users,
                self._rows,
                self._scores,
                self._counts,
                np.array(new, dtype=np.bool_),
                np.array(rows, dtype=np.int64),
                np.array(scores, dtype=np.float64),
            )

    def snapshot(self) -> dict[str, Any]:
        """Counts ever written and each ring's values, oldest first (what `merge` trims by)."""
        with self._lock:
            self._flush()
            items, users, served = (int(c) for c in self._counts)
            return {
                "items": items,
                "unknown": _in_order(self._unknown, items),
                "users": users,
                "new_users": _in_order(self._new_users, users),
                "served": served,
                "rows": _in_order(self._rows, served),
                "scores": _in_order(self._scores, served),
            }


def _in_order(ring: np.ndarray, written: int) -> np.ndarray:
    """A copy of a ring's values, oldest first (`written` values ever, the newest ring.size kept)."""
    if written <= ring.size:
        return ring[:written].copy()
    start = written % ring.size  # the oldest kept value: where the next write goes
    return np.concatenate([ring[start:], ring[:start]])


_RINGS = (("items", ("unknown",)), ("users", ("new_users",)), ("served", ("rows", "scores")))


def merge(snapshots: Sequence[dict[str, Any]], window: int, sample: int) -> dict[str, Any]:
    """One snapshot of the requests several sketches saw (the workers of `serve --workers N`).

    Counts are summed and rings concatenated. Where they hold more than one sketch would (`window`
    items and users, `sample` served pairs), each keeps its newest values in proportion to its
    count, as if the sketches' requests had come in evenly interleaved over the same recent time:
    a worker that answered twice as many requests has twice as many of the kept ones. (The rings
    hold no times, so which requests were newest across workers is not known; the kernel spreads
    connections evenly over the workers, so their windows cover about the same time.)"""
    out: dict[str, Any] = {}
    for count, rings in _RINGS:
        written = np.array([s[count] for s in snapshots], dtype=np.int64)
        out[count] = int(written.sum())
        held = [s[rings[0]] for s in snapshots]
        keep = _newest(
            np.array([h.size for h in held], dtype=np.int64), written, window if count != "served" else sample
        )
        for ring in rings:
            parts = [s[ring][s[ring].size - n :] for s, n in zip(snapshots, keep)]
            out[ring] = np.concatenate(parts) if parts else np.zeros(0)
    return out


def _newest(held: np.ndarray, written: np.ndarray, capacity: int) -> np.ndarray:
    """How many of its newest values each ring keeps: all when they fit in `capacity`; otherwise the
    `capacity` youngest, a ring's j-th newest value being j / written old (evenly interleaved)."""
    if held.sum() <= capacity:
        return held
    ages = np.concatenate([np.arange(1, h + 1) / max(w, 1) for h, w in zip(held, written)])
    owner = np.repeat(np.arange(held.size), held)
    youngest = np.argpartition(ages, capacity - 1)[:capacity]
    return np.bincount(owner[youngest], minlength=held.size)


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
    (scipy.stats.chisquare(observed, expected)). Bins empty in both are dropped; a bin the
    reference leaves empty but current values fall in gets the share _PSI_FLOOR (then all shares
    renormalised): values where the training data had none are a large, finite deviation, not
    the 0/0 a zero share would give (a constant reference, and scores all above it)."""
    edges = bin_edges(reference, bins)
    ref, counts = binned(reference, edges), binned(current, edges)
    keep = (ref > 0) | (counts > 0)
    observed = counts[keep].astype(np.float64)
    if observed.sum() == 0:
        return 0.0, 1.0  # nothing served yet: nothing deviates
    shares = np.maximum(ref[keep] / ref.sum(), _PSI_FLOOR)
    expected = shares / shares.sum() * observed.sum()
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
