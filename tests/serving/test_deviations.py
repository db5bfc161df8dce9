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
    merge,
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
    ref, counts = binned(a, edges), binned(b, edges)
    keep = (ref > 0) | (counts > 0)  # a bin only the current values fall in: the floor share
    shares = np.maximum(ref[keep] / ref.sum(), 1e-4)
    observed = counts[keep]
    expected = stats.chisquare(observed, shares / shares.sum() * observed.sum())
    assert np.isclose(statistic, expected.statistic) and np.isclose(p, expected.pvalue)
    # the bins, counted independently: each value in the bin whose right edge is the first >= it
    for x, j in zip(b, np.searchsorted(edges, b)):
        assert (j == 0 or edges[j - 1] < x) and (j == edges.size or x <= edges[j])


def test_scores_where_the_reference_has_none_are_a_large_finite_deviation() -> None:
    statistic, p = chi_square(np.full(500, 3.0), np.full(80, 4.0))  # a constant reference, every score above it
    assert np.isfinite(statistic) and statistic > 1e3 and p < 1e-6
    assert chi_square(np.full(500, 3.0), np.full(80, 3.0)) == (0.0, 1.0)  # the same constant: no deviation
    assert chi_square(np.arange(10.0), np.array([])) == (0.0, 1.0)  # nothing served


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


_REQUEST = st.one_of(
    st.tuples(st.just("items"), st.lists(st.booleans(), min_size=1, max_size=8)),
    st.tuples(st.just("users"), st.lists(st.booleans(), min_size=1, max_size=8)),
    st.tuples(st.just("predicted"), st.lists(st.tuples(st.integers(0, 4), st.booleans()), min_size=1, max_size=8)),
    st.tuples(st.just("one"), st.tuples(st.integers(0, 4), st.booleans())),
)


def _feed(sketch: ServingSketch, request: tuple, score: float) -> None:
    kind, what = request
    if kind in ("items", "users"):
        getattr(sketch, kind)(np.array(what))
    elif kind == "predicted":
        rows, new = zip(*what)
        sketch.predicted(np.array(rows), np.array(new), score + np.arange(len(rows)))
    else:
        sketch.predicted_one(what[0], what[1], score)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_REQUEST, max_size=40), min_size=1, max_size=4))
def test_merged_snapshots_have_the_statistics_of_one_sketch_fed_every_request(workers) -> None:
    reference = TrainingReference(np.array([0, 1, 2, 3, 4, 2]), np.array([0.5, 40.0, 120.0, 210.0, 330.0, 420.0]))
    features = np.column_stack([np.arange(5.0), np.arange(5.0) ** 2])
    one, sketches = ServingSketch(1_000, 1_000), [ServingSketch(1_000, 1_000) for _ in workers]
    for w, requests in enumerate(workers):
        for n, request in enumerate(requests):
            score = float(w * 100 + n)
            _feed(sketches[w], request, score)
            _feed(one, request, score)
    merged, alone = merge([s.snapshot() for s in sketches], 1_000, 1_000), one.snapshot()
    for key in ("items", "users", "served"):
        assert merged[key] == alone[key]
    for key in ("unknown", "new_users"):
        assert sorted(merged[key]) == sorted(alone[key])
    assert sorted(zip(merged["rows"], merged["scores"])) == sorted(zip(alone["rows"], alone["scores"]))
    got, expected = deviations(merged, reference, features), deviations(alone, reference, features)
    if expected["scores"] is not None:  # a mean summed in another order: equal up to rounding
        assert np.isclose(got["scores"].pop("served_mean"), expected["scores"].pop("served_mean"))
    np.testing.assert_equal(got, expected)  # every statistic, exactly


def test_merged_rings_keep_each_sketchs_newest_in_proportion_to_its_count() -> None:
    busy, quiet = ServingSketch(window=20, sample=20), ServingSketch(window=20, sample=20)
    busy.predicted(np.arange(30), np.zeros(30, dtype=bool), np.arange(30.0))  # its ring wrapped: 20 of 30 kept
    quiet.predicted(np.arange(100, 110), np.ones(10, dtype=bool), np.arange(100.0, 110.0))
    merged = merge([busy.snapshot(), quiet.snapshot()], window=20, sample=20)
    # 30 : 10 requests: 15 and 5 of the 20 kept, each sketch's newest
    assert merged["rows"].tolist() == [*range(15, 30), *range(105, 110)]
    assert merged["scores"].tolist() == [*map(float, range(15, 30)), *map(float, range(105, 110))]
    assert merged["new_users"].sum() == 5 and merged["new_users"].size == 20
    assert (merged["items"], merged["users"], merged["served"]) == (40, 40, 40)
