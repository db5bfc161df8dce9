"""Content features: f(x; θ) computed from an item's text, for items the catalogue has never seen.

The document-recommendation setting of the Velox papers: f hashes the word 1- to 3-grams of a
text (feature hashing, so the vocabulary never has to be stored or agreed on) and projects the
sparse, L2-normalised counts onto a basis θ learned offline. The basis maps text into the same
space as the collaborative item vectors, f(x) = [v̂_x, μ + b̂_x, 1], so every user's weights
apply to a brand-new item unchanged: the cold-start item problem becomes a feature computation.

That computation is the expensive part of a prediction (tokenising and hashing dozens of
n-grams against a dot product of 50 numbers), and it does not depend on the user, which is why
the serving layer caches its result across users (serving/feature_cache.py).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import sklearn
from sklearn.feature_extraction.text import HashingVectorizer

KIND = "hashed_text"
SIGNATURE_DIM = 256


def text_signature(texts: Sequence[str], dim: int = SIGNATURE_DIM) -> np.ndarray:
    """A cheap vector per text that near-duplicate texts share most of, shape (len(texts), dim):
    its lower-cased, whitespace-separated words counted into `dim` crc32 buckets, L2-normalised.

    What approximate feature caching hashes (serving/feature_cache.py, docs/approximate-caching.md):
    the cache equivalence class of a text must cost far less than f(text), or coarsening saves
    nothing. Splitting on whitespace and one crc32 per word is ~15x cheaper than the 1-3-gram
    hashing of `transform` (scikit-learn's tokeniser regex alone costs twice this); crc32, not
    Python's salted hash(), so that every process gives a text the same signature."""
    out = np.zeros((len(texts), dim), dtype=np.float64)
    for row, text in enumerate(texts):
        words = np.fromiter(map(zlib.crc32, text.lower().encode().split()), dtype=np.uint32)
        if words.size:
            out[row] = np.bincount(words % dim, minlength=dim)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return np.divide(out, norms, out=out, where=norms > 0)


def text_vectorizer(n_buckets: int, ngram_max: int) -> HashingVectorizer:
    """The hashing of texts into sparse rows; training and serving must use the same one."""
    return HashingVectorizer(
        n_features=n_buckets, ngram_range=(1, ngram_max), alternate_sign=False, norm="l2", dtype=np.float64
    )


class HashedTextFeatures:
    """f(text; θ) = [φ(text) B_v, μ + φ(text) b, 1], with φ the hashed, normalised n-gram counts."""

    kind = KIND

    def __init__(self, basis: np.ndarray, global_mean: float, *, ngram_max: int) -> None:
        n_buckets, width = basis.shape
        self.rank = width - 1
        self.dim = width + 1
        self.n_buckets = n_buckets
        self.ngram_max = ngram_max
        self.global_mean = float(global_mean)
        self._basis = np.ascontiguousarray(basis, dtype=np.float64)
        self._vectorizer = text_vectorizer(n_buckets, ngram_max)

    @classmethod
    def from_version(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> HashedTextFeatures | None:
        """The content features a version carries, or None when it was trained without item texts."""
        content = meta.get("content")
        if not content or "content_basis" not in arrays:
            return None
        return cls(arrays["content_basis"], float(meta["global_mean"]), ngram_max=int(content["ngram_max"]))

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """f(x) of many texts at once, shape (len(texts), dim)."""
        # The vectorizer's parameters were checked once at construction; re-checking them on every
        # call costs more than hashing a short text.
        with sklearn.config_context(skip_parameter_validation=True):
            hashed = self._vectorizer.transform(texts)
        projected = hashed @ self._basis  # (n, rank + 1)
        out = np.empty((len(texts), self.dim), dtype=np.float64)
        out[:, : self.rank] = projected[:, : self.rank]
        out[:, self.rank] = self.global_mean + projected[:, self.rank]
        out[:, self.rank + 1] = 1.0
        return out
