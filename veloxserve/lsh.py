"""Locality-sensitive hashing of input vectors: the bucket codes approximate caches look inputs up by.

An exact cache keyed by the input's bytes never hits on continuous, high-dimensional inputs: two
queries a pixel or a word apart are different keys. Clipper's answer (approximate caching) and
the Velox paper's (feature coarsening, cache equivalence classes) are the same idea: map each input
to a bucket so that near-identical inputs share it, and serve the cached answer of the bucket's
representative. The families here are the textbook ones, each with its collision probability in
closed form, so the accuracy–hit-rate trade-off is a setting one can reason about (and test):

- cosine (Charikar's random hyperplanes): bit j of a table is sign(a_j · x), a_j ~ N(0, I);
  P[one bit agrees] = 1 − θ/π for inputs at angle θ, so a table of b bits collides with
  probability (1 − θ/π)^b and L tables (a hit in any) with 1 − (1 − (1 − θ/π)^b)^L.
- euclidean (Datar et al.'s p-stable): h_j(x) = ⌊(a_j · x + c_j) / w⌋, c_j ~ U[0, w); one
  function collides with p(r) = 1 − 2Φ(−w/r) − 2/(√(2π) w/r) · (1 − e^{−(w/r)²/2}) at distance r.
- grid: every coordinate floored to cells of width w (one table): a deterministic equivalence
  class, the "rounding grid" of numeric inputs.

A table's b hash values are folded into one uint64 code (bits packed for cosine; a multiply-xor
mix of the integers otherwise), so a lookup is L dictionary probes. Hashers are built once per
(settings, dimension), seeded, so every process hashes the same input to the same code.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from veloxserve.config import ApproximateSettings

_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: the multiplicative hash constant
MAX_PROJECTION = 1 << 23  # dim × tables × bits floats (64 MB) at most per hasher: larger inputs stay exact


class LSH:
    """The bucket codes of vectors of one dimension under one setting: `codes(X)` is (n, tables)."""

    def __init__(self, settings: ApproximateSettings, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"LSH needs vectors of at least one dimension, got {dim}")
        self.settings = settings
        self.dim = dim
        self.tables = 1 if settings.family == "grid" else settings.tables
        rng = np.random.default_rng([settings.seed, dim])
        width = self.tables * settings.bits
        grid = settings.family == "grid"
        self._project = np.empty((dim, 0)) if grid else rng.standard_normal((dim, width))
        self._offsets = rng.uniform(0.0, settings.width, width) if settings.family == "euclidean" else np.zeros(0)
        n_values = dim if grid else settings.bits
        self._multipliers = (rng.integers(1, 1 << 62, n_values, dtype=np.uint64) << np.uint64(1)) | np.uint64(1)
        self._shifts = np.arange(settings.bits, dtype=np.uint64)

    def codes(self, vectors: np.ndarray) -> np.ndarray:
        """uint64 codes, shape (n, tables), of `vectors` of shape (n, dim) (or one vector, (dim,))."""
        X = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
        if X.shape[1] != self.dim:
            raise ValueError(f"LSH over {self.dim} dimensions got vectors of {X.shape[1]}")
        n, family, bits = X.shape[0], self.settings.family, self.settings.bits
        if family == "grid":
            return _fold(np.floor(X / self.settings.width).astype(np.int64), self._multipliers)[:, None]
        projected = X @ self._project
        if family == "cosine":
            signs = (projected > 0).reshape(n, self.tables, bits).astype(np.uint64)
            return (signs << self._shifts).sum(axis=2, dtype=np.uint64)
        values = np.floor((projected + self._offsets) / self.settings.width).astype(np.int64)
        return _fold(values.reshape(n * self.tables, bits), self._multipliers).reshape(n, self.tables)

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """The distance the setting's radius bounds: the angle (radians) for cosine, L2 otherwise."""
        if self.settings.family == "cosine":
            norms = float(np.linalg.norm(a) * np.linalg.norm(b))
            if norms == 0.0:
                return 0.0 if not a.any() and not b.any() else math.pi / 2
            return math.acos(max(-1.0, min(1.0, float(a @ b) / norms)))
        return float(np.linalg.norm(a - b))


def fits(settings: ApproximateSettings, dim: int) -> bool:
    """Whether inputs of `dim` dimensions may be hashed under `settings` (the projection's size bound)."""
    return settings.family == "grid" or dim * settings.tables * settings.bits <= MAX_PROJECTION


def hasher(settings: ApproximateSettings, dim: int) -> LSH:
    """The LSH of `settings` over `dim` dimensions, built once per process."""
    if not fits(settings, dim):
        raise ValueError(
            f"LSH of {dim} dimensions × {settings.tables} tables × {settings.bits} bits exceeds "
            f"{MAX_PROJECTION} projection entries; use fewer tables or bits, or exact caching"
        )
    return _hasher(settings, dim)


@functools.lru_cache(maxsize=32)
def _hasher(settings: ApproximateSettings, dim: int) -> LSH:
    return LSH(settings, dim)


def _fold(values: np.ndarray, multipliers: np.ndarray) -> np.ndarray:
    """One uint64 per row of int64 values: Σ v_j m_j (mod 2^64) with odd random m_j, then a
    multiply-xorshift finaliser so that nearby integer tuples do not give nearby codes."""
    mixed = (values.astype(np.uint64) * multipliers).sum(axis=1, dtype=np.uint64)
    mixed ^= mixed >> np.uint64(31)
    mixed *= _MIX
    return mixed ^ (mixed >> np.uint64(29))


def hyperplane_collision(angle: float | np.ndarray, bits: int, tables: int = 1) -> float | np.ndarray:
    """P[two inputs at `angle` (radians) share a bucket in at least one of `tables`], random hyperplanes."""
    per_table = (1.0 - np.asarray(angle) / math.pi) ** bits
    return 1.0 - (1.0 - per_table) ** tables


def pstable_collision(distance: float, width: float, bits: int = 1, tables: int = 1) -> float:
    """The same for the Gaussian p-stable family at Euclidean `distance` (Datar et al. 2004, eq. for p = 2)."""
    if distance == 0:
        return 1.0
    s = width / distance
    one = 1.0 - 2.0 * _normal_cdf(-s) - 2.0 / (math.sqrt(2.0 * math.pi) * s) * (1.0 - math.exp(-(s * s) / 2.0))
    return 1.0 - (1.0 - one**bits) ** tables


def _normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))
