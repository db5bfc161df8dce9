"""The training reference: a uniform sample of training rows, their item rows and the version's scores."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import synthetic_version_arrays
from veloxserve.models.reference import REFERENCE_ARRAYS, TrainingReference, sample_reference
from veloxserve.models.version import ModelVersion


def _training_rows(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    counts = np.diff(arrays["seen_indptr"])
    return np.repeat(arrays["user_ids"], counts), arrays["item_ids"][arrays["seen_items"]]


@pytest.mark.parametrize("link", ["identity", "logistic"])
def test_the_reference_holds_the_versions_own_scores_of_sampled_training_rows(link: str) -> None:
    arrays, meta = synthetic_version_arrays(n_users=40, link=link)
    users, items = _training_rows(arrays)
    reference, about = sample_reference(
        arrays, meta["global_mean"], users, items, logistic=link == "logistic", seed=3, size=50
    )
    assert set(reference) == set(REFERENCE_ARRAYS) and about == {"rows": 50, "sampled_from": len(users), "seed": 3}
    version = ModelVersion.from_arrays({**arrays, **reference}, meta)
    assert version.reference is not None
    # Independently: find each sampled row's user by its (item, score) among the training rows.
    F = version.features.matrix
    z = np.einsum("ij,ij->i", F[np.searchsorted(arrays["item_ids"], items)], arrays["user_weights"][users.astype(int)])
    expected = 0.5 * (1 + np.tanh(z / 2)) if link == "logistic" else z
    for row, score in zip(version.reference.item_rows, version.reference.scores):
        candidates = expected[arrays["item_ids"][row] == items]
        assert np.isclose(candidates, score).any()


def test_rows_of_unknown_users_or_items_are_skipped_and_none_left_means_no_reference() -> None:
    arrays, meta = synthetic_version_arrays()
    users, items = _training_rows(arrays)
    users = users.astype(object).astype(str).astype("<U16")
    users[::2] = "stranger"
    reference, about = sample_reference(arrays, meta["global_mean"], users, items, logistic=False, seed=0)
    assert about["rows"] == (users != "stranger").sum()
    assert sample_reference(arrays, meta["global_mean"], np.full(3, "x"), items[:3], logistic=False, seed=0) == ({}, {})


def test_an_older_version_without_reference_arrays_has_none() -> None:
    arrays, meta = synthetic_version_arrays()
    assert ModelVersion.from_arrays(arrays, meta).reference is None
    assert TrainingReference.from_arrays({"reference_scores": np.ones(3)}) is None
    with pytest.raises(ValueError, match="one non-empty length"):
        TrainingReference(np.zeros(2, dtype=np.int64), np.zeros(3))


def test_a_black_box_versions_reference_scores_with_its_item_features() -> None:
    arrays, meta = synthetic_version_arrays(n_users=40)
    users, items = _training_rows(arrays)
    features = np.random.default_rng(1).normal(size=(arrays["item_ids"].size, arrays["user_weights"].shape[1]))
    arrays = {k: v for k, v in arrays.items() if k not in ("item_factors", "item_bias")} | {"item_features": features}
    reference, _ = sample_reference(arrays, 0.0, users, items, logistic=False, seed=2, size=30)
    rows = reference["reference_item_rows"]
    by_row = {}
    for u, x in zip(users.astype(int), np.searchsorted(arrays["item_ids"], items)):
        by_row.setdefault(int(x), []).append(float(features[x] @ arrays["user_weights"][u]))
    assert all(np.isclose(by_row[int(r)], s).any() for r, s in zip(rows, reference["reference_scores"]))
