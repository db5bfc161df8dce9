"""FeatureCache: rows are always f(x) of the right version, memory stays bounded, repeats hit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.config import ApproximateSettings
from veloxserve.serving.feature_cache import Coarsening, FeatureCache


def fake_features(version: str):
    """A deterministic f that differs per version, and a record of what it was asked to compute."""
    calls: list[list[str]] = []

    def compute(texts):
        calls.append(list(texts))
        return np.array([[len(t), sum(map(ord, t)) % 97, float(version[1:])] for t in texts], dtype=np.float64)

    return compute, calls


@settings(max_examples=60, deadline=None)
@given(
    batches=st.lists(st.lists(st.sampled_from([f"text-{i}" for i in range(12)]), min_size=1, max_size=6), max_size=25),
    max_bytes=st.sampled_from([0, 300, 1_000, 10_000]),
)
def test_rows_are_exact_memory_is_bounded_and_only_misses_are_computed(batches, max_bytes) -> None:
    cache = FeatureCache(max_bytes)
    compute, calls = fake_features("v1")
    reference, _ = fake_features("v1")
    for batch in batches:
        before = cache.stats()
        rows = cache.features(("m", "v1"), batch, compute)
        np.testing.assert_array_equal(rows, reference(batch))
        stats = cache.stats()
        assert stats.bytes <= max_bytes
        computed = len(calls[-1]) if stats.misses > before.misses else 0
        assert stats.misses - before.misses == computed  # a lookup is a miss iff f is computed for it
        assert stats.hits + stats.misses == before.hits + before.misses + len(batch)
    if max_bytes == 0:
        assert sum(map(len, calls)) == sum(len(set(b)) for b in batches)  # nothing cached, repeats in a batch shared


def test_a_repeat_is_a_hit_and_is_not_recomputed() -> None:
    cache = FeatureCache(1 << 20)
    compute, calls = fake_features("v1")
    cache.features(("m", "v1"), ["a", "b"], compute)
    cache.features(("m", "v1"), ["b", "a", "a"], compute)
    assert calls == [["a", "b"]]
    assert cache.stats().hits == 3 and cache.stats().hit_rate == pytest.approx(3 / 5)


def test_a_new_version_never_reads_the_old_versions_rows() -> None:
    cache = FeatureCache(1 << 20)
    old, _ = fake_features("v1")
    new, new_calls = fake_features("v2")
    cache.features(("m", "v1"), ["a"], old)
    rows = cache.features(("m", "v2"), ["a"], new)
    assert new_calls == [["a"]] and rows[0, 2] == 2.0
    assert cache.drop(("m", "v1")) == 1
    assert cache.stats().entries == 1


def test_least_recently_used_is_evicted_first() -> None:
    compute, calls = fake_features("v1")
    probe = FeatureCache(1 << 20)
    probe.features(("m", "v1"), ["a"], compute)
    entry = probe.stats().bytes
    cache = FeatureCache(2 * entry)  # room for two rows of the same size
    cache.features(("m", "v1"), ["a"], compute)
    cache.features(("m", "v1"), ["b"], compute)
    cache.features(("m", "v1"), ["a"], compute)  # a is now the most recent
    cache.features(("m", "v1"), ["c"], compute)  # evicts b
    calls.clear()
    cache.features(("m", "v1"), ["a", "c", "b"], compute)
    assert calls == [["b"]] and cache.stats().evictions >= 1


def test_negative_size_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        FeatureCache(-1)


# ---- feature coarsening (cache equivalence classes) ------------------------------------------------
def _numeric_f():
    """f of a numeric input (a tuple, hashable for the exact rows): a nonlinear map, and its calls."""
    calls: list[list[tuple]] = []

    def compute(points):
        calls.append(list(points))
        X = np.array(points, dtype=np.float64)
        return np.column_stack([np.sin(X).sum(axis=1), (X**2).sum(axis=1), np.ones(len(X))])

    return compute, calls


def _grid(width: float) -> Coarsening:
    return Coarsening(ApproximateSettings(family="grid", width=width), lambda points: np.array(points, dtype=float))


def test_a_coarsened_cache_returns_f_of_the_class_representative() -> None:
    cache = FeatureCache(1 << 20)
    compute, calls = _numeric_f()
    z, x, far = (0.2, 0.3), (0.45, 0.05), (1.5, 0.3)  # z and x share the cell [0, 0.5)²
    first = cache.features(("m", "v1"), [z], compute, coarsening=_grid(0.5))
    rows = cache.features(("m", "v1"), [x, far], compute, coarsening=_grid(0.5))
    np.testing.assert_array_equal(rows[0], first[0])  # f(x) ≈ f(z): z's row, not computed again
    np.testing.assert_array_equal(rows[1], compute([far])[0])
    assert calls[:2] == [[z], [far]]
    stats = cache.stats()
    assert (stats.hits, stats.approximate_hits, stats.misses) == (0, 1, 2) and stats.approximate_entries == 2
    again = cache.features(("m", "v1"), [x], compute, coarsening=_grid(0.5))
    np.testing.assert_array_equal(again[0], first[0])
    assert cache.stats().hits == 1  # x now has its own exact row (z's value)


def test_without_coarsening_every_distinct_input_is_computed_exactly() -> None:
    cache = FeatureCache(1 << 20)
    compute, _ = _numeric_f()
    reference, _ = _numeric_f()
    points = [(0.2, 0.3), (0.45, 0.05), (0.2, 0.3)]
    np.testing.assert_array_equal(cache.features(("m", "v1"), points, compute), reference(points))
    assert cache.stats().approximate_hits == 0 and cache.stats().approximate_entries == 0


@pytest.mark.parametrize("family", ["grid", "cosine"])
def test_coarser_settings_raise_the_hit_rate(family: str) -> None:
    """Queries are noisy copies of 30 centres; a coarser class (a wider cell, fewer bits) hits more."""
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(30, 6))
    queries = [tuple(np.round(centres[i] + rng.normal(scale=0.05, size=6), 6)) for i in rng.integers(0, 30, 600)]
    coarse_to_fine = (
        [ApproximateSettings(family="grid", width=w) for w in (2.0, 0.5, 0.1, 0.02)]
        if family == "grid"
        else [ApproximateSettings(bits=b, seed=3) for b in (2, 8, 24, 64)]
    )
    rates = []
    for s in coarse_to_fine:
        cache = FeatureCache(1 << 22)
        compute, _ = _numeric_f()
        coarsening = Coarsening(s, lambda points: np.array(points, dtype=float))
        for start in range(0, len(queries), 20):
            cache.features(("m", "v1"), queries[start : start + 20], compute, coarsening=coarsening)
        rates.append(cache.stats().hit_rate)
    assert rates == sorted(rates, reverse=True) and rates[0] > rates[-1] + 0.3, rates


def test_a_new_version_never_sees_the_old_versions_classes() -> None:
    cache = FeatureCache(1 << 20)
    compute, calls = _numeric_f()
    cache.features(("m", "v1"), [(0.1, 0.1)], compute, coarsening=_grid(1.0))
    cache.features(("m", "v2"), [(0.2, 0.2)], compute, coarsening=_grid(1.0))
    assert calls == [[(0.1, 0.1)], [(0.2, 0.2)]] and cache.stats().approximate_hits == 0
    cache.drop(("m", "v1"))
    assert cache.stats().approximate_entries == 1  # v2's class only


def test_arrays_are_cached_by_the_keys_given() -> None:
    cache = FeatureCache(1 << 20)
    X = np.array([[1.0, 2.0], [1.0, 2.0], [3.0, 4.0]])
    calls = []

    def compute(rows):
        calls.append(len(rows))
        return np.asarray(rows) * 2

    out = cache.features(("m", "v1"), list(X), compute, keys=[row.tobytes() for row in X])
    np.testing.assert_array_equal(out, X * 2)
    assert calls == [2]


@settings(max_examples=30, deadline=None)
@given(
    batches=st.lists(
        st.lists(
            st.tuples(st.integers(0, 7), st.integers(0, 7)).map(lambda p: (p[0] / 4, p[1] / 4)), min_size=1, max_size=5
        ),
        max_size=15,
    ),
    max_bytes=st.sampled_from([0, 400, 2_000, 1 << 20]),
    width=st.sampled_from([0.25, 0.5, 1.0]),
)
def test_a_coarsened_row_is_always_f_of_an_input_of_the_same_class(batches, max_bytes, width) -> None:
    """Against an independent model of the classes: every row is f(x) or f(z) for a z seen before
    in x's grid cell; both byte bounds hold; lookups are hits, approximate hits or misses."""
    cache = FeatureCache(max_bytes)
    compute, _ = _numeric_f()
    reference, _ = _numeric_f()
    seen: set[tuple] = set()
    lookups = 0
    for batch in batches:
        rows = cache.features(("m", "v1"), batch, compute, coarsening=_grid(width))
        for x, row in zip(batch, rows):
            cell = tuple(int(np.floor(c / width)) for c in x)
            candidates = [x] + [z for z in seen if tuple(int(np.floor(c / width)) for c in z) == cell]
            assert any(np.array_equal(row, reference([z])[0]) for z in candidates), (x, row)
        seen.update(batch)
        lookups += len(batch)
        stats = cache.stats()
        assert stats.bytes <= max_bytes and stats.approximate_bytes <= max_bytes
        assert stats.hits + stats.approximate_hits + stats.misses == lookups
    if max_bytes == 0:
        assert cache.stats().approximate_hits == 0
