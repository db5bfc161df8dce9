"""FeatureCache: rows are always f(x) of the right version, memory stays bounded, repeats hit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.serving.feature_cache import FeatureCache


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
