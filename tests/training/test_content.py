"""The text basis is the ridge solution, and on Catify it learns where unseen songs belong."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.feature_extraction.text import HashingVectorizer

from veloxserve.errors import InvalidInput
from veloxserve.training.catify import catify_items, generate_catify
from veloxserve.training.content import fit_text_basis


@pytest.fixture(scope="module")
def catify():
    data = generate_catify(n_users=50, n_items=300, rank=4, n_ratings=2000, seed=3)
    items = catify_items(data, seed=3)
    arrays = {"item_ids": np.array(items["item"]), "item_factors": data.item_factors, "item_bias": data.item_bias}
    return arrays, dict(zip(items["item"], items["text"]))


def test_basis_equals_the_dense_ridge_solution(catify) -> None:
    arrays, texts = catify
    basis, report = fit_text_basis(arrays, texts, n_buckets=128, ngram_max=2, alpha=0.5)
    X = (
        HashingVectorizer(n_features=128, ngram_range=(1, 2), alternate_sign=False, norm="l2")
        .transform([texts[i] for i in arrays["item_ids"]])
        .toarray()
    )
    Y = np.column_stack([arrays["item_factors"], arrays["item_bias"]])
    expected = np.linalg.solve(X.T @ X + 0.5 * np.eye(128), X.T @ Y)
    np.testing.assert_allclose(basis, expected, atol=1e-5)
    assert report["items_with_text"] == 300 and report["heldout_items"] == 30


def test_held_out_songs_are_placed_from_their_text(catify) -> None:
    arrays, texts = catify
    _, report = fit_text_basis(arrays, texts, n_buckets=1 << 12, alpha=0.1)
    assert report["heldout_r2"] > 0.3  # planted: words depend on the song's vector and bias


def test_too_few_texts_is_a_clear_error(catify) -> None:
    arrays, texts = catify
    with pytest.raises(InvalidInput, match="at least 10 catalogue items"):
        fit_text_basis(arrays, {"0": texts["0"]})
