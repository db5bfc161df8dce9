"""Content features: f(text) equals hashed n-gram counts projected onto the basis, computed by hand."""

from __future__ import annotations

import re
import zlib

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.utils import murmurhash3_32

from veloxserve.models.content import HashedTextFeatures, text_signature


def by_hand(text: str, basis: np.ndarray, mu: float, ngram_max: int) -> np.ndarray:
    """Tokenise as scikit-learn's default (words of 2+ word characters, lower-cased), count the
    1..n-grams into murmurhash buckets, L2-normalise, project, and lay out [v, μ + b, 1]."""
    words = re.findall(r"(?u)\b\w\w+\b", text.lower())
    counts = np.zeros(basis.shape[0])
    for n in range(1, ngram_max + 1):
        for i in range(len(words) - n + 1):
            counts[abs(murmurhash3_32(" ".join(words[i : i + n]), seed=0)) % basis.shape[0]] += 1
    norm = np.linalg.norm(counts)
    projected = (counts / norm if norm else counts) @ basis
    return np.concatenate([projected[:-1], [mu + projected[-1], 1.0]])


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.text(alphabet="ab cdé.,XY", min_size=0, max_size=40), min_size=1, max_size=5))
def test_transform_matches_a_by_hand_computation(texts) -> None:
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(64, 4))
    features = HashedTextFeatures(basis, 3.5, ngram_max=3)
    got = features.transform(texts)
    assert got.shape == (len(texts), features.dim) == (len(texts), 5)
    for row, text in zip(got, texts):
        np.testing.assert_allclose(row, by_hand(text, basis, 3.5, 3), atol=1e-12)


def test_a_version_without_texts_has_no_content_features() -> None:
    assert HashedTextFeatures.from_version({"item_ids": np.array(["1"])}, {"global_mean": 3.0}) is None


@settings(max_examples=40, deadline=None)
@given(texts=st.lists(st.text(alphabet="ab cdÉ\n\t.,XY", min_size=0, max_size=60), min_size=1, max_size=5))
def test_text_signature_is_normalised_crc32_word_counts(texts) -> None:
    """By hand: lower-case, split on white space, count crc32(word) mod 256, L2-normalise (zeros stay zero)."""
    got = text_signature(texts)
    assert got.shape == (len(texts), 256)
    for row, text in zip(got, texts):
        counts = np.zeros(256)
        for word in text.lower().encode().split():
            counts[zlib.crc32(word) % 256] += 1
        norm = np.linalg.norm(counts)
        np.testing.assert_allclose(row, counts / norm if norm else counts, atol=1e-12)


def test_a_near_duplicate_text_has_a_nearby_signature() -> None:
    words = [f"w{i}" for i in range(120)]
    text, edited, other = " ".join(words), " ".join(["zz", *words[1:]]), " ".join(f"v{i}" for i in range(120))
    a, b, c = text_signature([text, edited, other])
    assert a @ b > 0.98 > 0.5 > a @ c
