"""ApproximateCache: near-identical inputs hit, far ones miss, the radius bounds what a hit may be,
namespaces (versions) and settings never share entries, and the byte bound holds."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.approximate_cache import ApproximateCache
from veloxserve.config import ApproximateSettings
from veloxserve.lsh import hyperplane_collision

V1, V2 = ("m", "v1"), ("m", "v2")
COSINE = ApproximateSettings(tables=4, bits=16, seed=1)


def _cache(max_bytes: int = 1 << 22) -> ApproximateCache[float]:
    return ApproximateCache(max_bytes, lambda value: 8)


def _near(x: np.ndarray, angle: float, rng: np.random.Generator) -> np.ndarray:
    """A vector at exactly `angle` from x, in a random direction."""
    u = x / np.linalg.norm(x)
    r = rng.normal(size=x.size)
    r -= (r @ u) * u
    r /= np.linalg.norm(r)
    return math.cos(angle) * u + math.sin(angle) * r


def test_near_identical_inputs_hit_and_far_ones_miss() -> None:
    rng = np.random.default_rng(0)
    cache = _cache()
    X = rng.normal(size=(200, 32))
    cache.put_many(V1, COSINE, X, [float(i) for i in range(200)])
    near = np.stack([_near(x, 0.01, rng) for x in X])
    far = np.stack([_near(x, 1.2, rng) for x in X])
    near_hits = [value for found, value in cache.get_many(V1, COSINE, near) if found]
    # at 0.01 rad a table of 16 bits collides with p ≈ 0.95, so nearly every query hits its own entry
    assert len(near_hits) >= 195
    assert sum(found for found, _ in cache.get_many(V1, COSINE, far)) <= 10
    own = [value for (found, value), i in zip(cache.get_many(V1, COSINE, near), range(200)) if found]
    assert sum(v == i for v, i in zip(own, range(200))) >= 190


@settings(max_examples=20, deadline=None, derandomize=True)
@given(theta=st.floats(0.02, 1.0), tables=st.integers(1, 4), bits=st.integers(4, 12))
def test_hit_rate_follows_the_or_of_tables(theta: float, tables: int, bits: int) -> None:
    """One stored input per trial in its own namespace: a hit is a collision in any of L tables."""
    rng = np.random.default_rng([tables, bits, int(theta * 1e6)])
    trials = 300
    s = ApproximateSettings(tables=tables, bits=bits, seed=int(theta * 1e6))
    cache = _cache()
    hits = 0
    for trial in range(trials):
        x = rng.normal(size=12)
        cache.put(trial, s, x, 1.0)
        hits += cache.get(trial, s, _near(x, theta, rng))[0]
    p = float(hyperplane_collision(theta, bits, tables))
    assert abs(hits / trials - p) <= 4.5 * math.sqrt(max(p * (1 - p), 1e-3) / trials), (hits / trials, p)


def test_a_new_version_never_sees_the_old_versions_entries() -> None:
    cache = _cache()
    x = np.ones(8)
    cache.put(V1, COSINE, x, 1.0)
    assert cache.get(V2, COSINE, x) == (False, None)
    assert cache.get(V1, COSINE, x) == (True, 1.0)
    assert cache.drop(V1) == COSINE.tables and len(cache) == 0
    assert cache.get(V1, COSINE, x) == (False, None)


def test_settings_and_dimensions_are_part_of_the_key() -> None:
    cache = _cache()
    cache.put(V1, COSINE, np.ones(8), 1.0)
    assert not cache.get(V1, ApproximateSettings(tables=4, bits=16, seed=2), np.ones(8))[0]
    cache.put(V1, COSINE, np.ones(4), 2.0)
    assert cache.get(V1, COSINE, np.ones(4)) == (True, 2.0) and cache.get(V1, COSINE, np.ones(8)) == (True, 1.0)


def test_the_radius_refuses_a_bucket_mate_that_is_too_far() -> None:
    """A 1-bit table puts half the sphere in one bucket; the radius still refuses what is far."""
    coarse = ApproximateSettings(tables=1, bits=1, radius=0.1, seed=0)
    unbounded = ApproximateSettings(tables=1, bits=1, seed=0)
    rng = np.random.default_rng(3)
    x = rng.normal(size=16)
    cache = _cache()
    for s in (coarse, unbounded):
        cache.put(V1, s, x, 5.0)
    mates = [y for y in (_near(x, 1.0, rng) for _ in range(50)) if cache.get(V1, unbounded, y)[0]]
    assert mates, "some vectors at 1 rad share the single bit"
    assert not any(cache.get(V1, coarse, y)[0] for y in mates)
    assert cache.get(V1, coarse, _near(x, 0.05, rng)) == (True, 5.0)


def test_a_bucket_keeps_its_representative() -> None:
    cache = _cache()
    s = ApproximateSettings(family="grid", width=1.0)
    cache.put(V1, s, np.array([0.2, 0.2]), 1.0)
    cache.put(V1, s, np.array([0.7, 0.7]), 2.0)
    assert cache.get(V1, s, np.array([0.5, 0.5])) == (True, 1.0)


def test_hits_and_misses_are_counted() -> None:
    cache = _cache()
    cache.put(V1, COSINE, np.ones(3), 1.0)
    cache.get_many(V1, COSINE, np.stack([np.ones(3), -np.ones(3), np.ones(3)]))
    assert (cache.hits, cache.misses) == (2, 1)


def test_the_byte_bound_evicts_the_least_recently_used() -> None:
    one = ApproximateSettings(tables=1, bits=32)
    probe = _cache()
    probe.put(V1, one, np.ones(4), 0.0)
    cache = _cache(max_bytes=probe.bytes * 10)
    X = np.random.default_rng(5).normal(size=(40, 4))
    cache.put_many(V1, one, X, [float(i) for i in range(40)])
    assert len(cache) <= 10 and cache.bytes <= cache.max_bytes and cache.evictions >= 30
    assert cache.get(V1, one, X[-1]) == (True, 39.0)


def test_rows_must_be_a_matrix() -> None:
    with pytest.raises(ValueError, match=r"rows of vectors \(n, d\)"):
        _cache().get_many(V1, COSINE, np.ones(3))


def test_euclidean_buckets_hit_within_the_width_and_miss_far_away() -> None:
    s = ApproximateSettings(family="euclidean", tables=4, bits=4, width=4.0, seed=5)
    rng = np.random.default_rng(6)
    X = rng.normal(scale=10.0, size=(100, 8))
    cache = _cache()
    cache.put_many(V1, s, X, [float(i) for i in range(100)])
    near = cache.get_many(V1, s, X + rng.normal(scale=0.01, size=X.shape))
    far = cache.get_many(V1, s, X + 60.0)
    assert sum(v == i for i, (_, v) in enumerate(near)) >= 97
    assert sum(found for found, _ in far) <= 5
