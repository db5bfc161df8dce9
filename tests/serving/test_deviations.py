"""Deviation statistics against scipy on the same data, and the bounded sketches."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from veloxserve.models.reference import TrainingReference
from veloxserve.serving.deviations import (
    ServingSketch,
    bin_edges,
    binned,
    chi_square,
    deviations,
    ks_2samp_columns,
    psi,
)

_SAMPLES = st.tuples(
    st.integers(0, 2**31 - 1), st.integers(20, 400), st.integers(20, 400), st.floats(-1, 1), st.booleans()
)


def _draw(seed: int, m: int, n: int, shift: float, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=m), rng.normal(shift, 1.0, size=n)
    return (np.round(a), np.round(b)) if ties else (a, b)


@settings(max_examples=40, deadline=None)
@given(_SAMPLES)
def test_ks_statistic_and_p_value_are_scipys(sample) -> None:
    a, b = _draw(*sample)
    d, p = ks_2samp_columns(a, b)
    expected = stats.ks_2samp(a, b, method="asymp")
    assert np.isclose(d[0], expected.statistic) and np.isclose(p[0], expected.pvalue, rtol=1e-6, atol=1e-12)


def test_ks_per_column_is_scipys_per_column() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(300, 4)), rng.normal(size=(200, 4)) + [0, 0.3, 0, 1]
    d, p = ks_2samp_columns(a, b)
    for j in range(4):
        expected = stats.ks_2samp(a[:, j], b[:, j], method="asymp")
        assert np.isclose(d[j], expected.statistic) and np.isclose(p[j], expected.pvalue)


@settings(max_examples=40, deadline=None)
@given(_SAMPLES)
def test_chi_square_is_scipys_on_the_same_bins(sample) -> None:
    a, b = _draw(*sample)
    statistic, p = chi_square(a, b)
    edges = bin_edges(a)
    ref = binned(a, edges)
    keep = ref > 0
    observed = binned(b, edges)[keep]
    expected = stats.chisquare(observed, ref[keep] / ref[keep].sum() * observed.sum())
    assert np.isclose(statistic, expected.statistic) and np.isclose(p, expected.pvalue)
    # the bins, counted independently: each value in the bin whose right edge is the first >= it
    for x, j in zip(b, np.searchsorted(edges, b)):
        assert (j == 0 or edges[j - 1] < x) and (j == edges.size or x <= edges[j])


def test_psi_is_the_formula_over_the_reference_deciles_and_grows_with_a_shift() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=5000), rng.normal(0.5, 1.0, size=5000)
    edges = np.quantile(a, np.linspace(0, 1, 11)[1:-1], method="inverted_cdf")
    r = np.bincount((a[:, None] > edges).sum(axis=1), minlength=10) / a.size  # bin: how many edges lie below
    c = np.bincount((b[:, None] > edges).sum(axis=1), minlength=10) / b.size
    assert np.isclose(psi(a, b), ((c - r) * np.log(c / r)).sum())
    assert psi(a, rng.normal(size=5000)) < 0.02 < 0.1 < psi(a, b)
    assert np.isfinite(psi(a, np.full(100, 10.0)))  # every current value in one bin: large, finite


def test_sketch_rings_keep_the_last_values_and_count_all() -> None:
    sketch = ServingSketch(window=5, sample=10)
    sketch.items(np.array([True, False, False]))
    sketch.items(np.array([True] * 4))  # 7 pushed: the ring holds 5, of which the last 4 are True
    snap = sketch.snapshot()
    assert snap["items"] == 7 and snap["unknown"].size == 5 and snap["unknown"].sum() == 4
    for i in range(12):
        sketch.predicted(np.array([i]), np.array([i % 2 == 0]), np.array([float(i)]))
    sketch.predicted(np.arange(100, 130), np.zeros(30, dtype=bool), np.arange(100.0, 130.0))  # longer than the rings
    snap = sketch.snapshot()
    assert sorted(snap["scores"]) == list(range(120, 130)) and sorted(snap["rows"]) == list(range(120, 130))
    assert snap["items"] == 7 + 42 and not snap["unknown"].any()  # a predict's items are known ones
    assert snap["users"] == 42 and not snap["new_users"].any()


def test_deviations_without_reference_give_shares_only() -> None:
    sketch = ServingSketch(window=100, sample=100)
    sketch.items(np.array([True, False, False, False]))
    sketch.users(np.array([True, False]))
    sketch.predicted(np.array([0, 1]), np.array([False, False]), np.array([1.0, 2.0]))
    found = deviations(sketch.snapshot(), None, np.eye(3))
    assert found["unknown_items_share"] == 1 / 6 and found["new_users_share"] == 0.25
    assert found["scores"] is None and found["features"] is None and found["reference_rows"] is None
    reference = TrainingReference(np.array([0, 1, 2, 0]), np.array([1.0, 2.0, 3.0, 1.5]))
    features = np.column_stack([np.arange(3.0), np.ones(3)])  # the constant dimension is not tested
    found = deviations(sketch.snapshot(), reference, features)
    assert [f["dimension"] for f in found["features"]] == [0] and found["scores"]["served_mean"] == 1.5


def test_single_predictions_are_buffered_and_every_one_is_in_the_next_snapshot() -> None:
    sketch = ServingSketch(window=1_000, sample=1_000)
    for i in range(150):  # more than one flush, and a remainder still in the buffer
        sketch.predicted_one(i, i % 3 == 0, float(i))
    snap = sketch.snapshot()
    assert sorted(snap["rows"]) == list(range(150)) and sorted(snap["scores"]) == list(map(float, range(150)))
    assert snap["new_users"].sum() == 50 and snap["items"] == 150 and not snap["unknown"].any()
