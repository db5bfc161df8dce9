"""ALS recovers Catify's planted structure; its user statistics are exactly the served ridge solve."""

from __future__ import annotations

import numpy as np
import pytest

from veloxserve.training.als import ALSConfig, prior_precision_vector, train_als
from veloxserve.training.catify import generate_catify
from veloxserve.training.ratings import split_holdout


@pytest.fixture(scope="module")
def catify():
    return generate_catify(n_users=600, n_items=800, rank=8, noise=0.5, n_ratings=100_000, seed=7)


@pytest.fixture(scope="module")
def trained(catify):
    train, test = split_holdout(catify.ratings, 0.1, seed=0)
    config = ALSConfig(rank=8, reg=1.0, prior_precision=1.0, iterations=10)
    return train, test, config, train_als(train, config, test)


def test_catify_is_seeded_and_skewed() -> None:
    a, b = generate_catify(200, 300, n_ratings=5000, seed=3), generate_catify(200, 300, n_ratings=5000, seed=3)
    assert np.array_equal(a.ratings.users, b.ratings.users) and np.array_equal(a.ratings.scores, b.ratings.scores)
    c = generate_catify(200, 300, n_ratings=5000, seed=4)
    assert not np.array_equal(a.ratings.scores[:100], c.ratings.scores[:100])
    counts = np.sort(np.bincount(a.ratings.items.astype(int), minlength=300))[::-1]
    assert counts[:30].sum() > 0.25 * counts.sum()  # the top 10% of songs hold far more than 10%
    assert len(set(zip(a.ratings.users, a.ratings.items))) == len(a.ratings)  # no duplicate pairs
    assert all(s.isdigit() for s in a.ratings.users[:50])


def test_als_recovers_the_planted_structure_to_the_noise_level(catify, trained) -> None:
    *_, factors = trained
    assert factors.heldout_rmse <= 1.10 * catify.noise
    assert factors.losses[-1] < factors.losses[0]


def test_user_statistics_are_the_exact_ridge_solve_against_the_final_features(trained) -> None:
    train, _, config, factors = trained
    a = factors.arrays
    np.testing.assert_allclose(
        a["user_weights"], np.linalg.solve(a["user_gram"], a["user_rhs"][..., None])[..., 0], atol=1e-8
    )
    F = np.column_stack([a["item_factors"], factors.global_mean + a["item_bias"], np.ones(len(a["item_ids"]))])
    lam = prior_precision_vector(config)
    item_row = {x: n for n, x in enumerate(a["item_ids"].tolist())}
    for n in (0, 17, 512):  # (600 users)  # recompute a few users from their raw ratings, independently
        mine = train.users == a["user_ids"][n]
        Fu = F[[item_row[x] for x in train.items[mine]]]
        A = np.diag(lam) + Fu.T @ Fu
        r = lam * a["prior_mean"] + Fu.T @ train.scores[mine]
        np.testing.assert_allclose(a["user_gram"][n], A, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(a["user_rhs"][n], r, rtol=1e-9, atol=1e-9)
        assert a["user_counts"][n] == mine.sum()
        seen = a["seen_items"][a["seen_indptr"][n] : a["seen_indptr"][n + 1]]
        assert sorted(a["item_ids"][seen].tolist()) == sorted(train.items[mine].tolist())


def test_cold_start_prior_beats_the_global_mean(catify, trained) -> None:
    _, test, _, factors = trained
    a = factors.arrays
    F = np.column_stack([a["item_factors"], factors.global_mean + a["item_bias"], np.ones(len(a["item_ids"]))])
    rows = np.searchsorted(a["item_ids"], test.items)
    known = a["item_ids"][np.minimum(rows, len(rows) - 1)] == test.items
    prior_rmse = np.sqrt(np.mean((F[rows[known]] @ a["prior_mean"] - test.scores[known]) ** 2))
    mean_rmse = np.sqrt(np.mean((factors.global_mean - test.scores[known]) ** 2))
    assert prior_rmse < mean_rmse


def test_training_is_deterministic_for_a_seed(catify) -> None:
    small = catify.ratings.take(np.arange(20_000))
    one = train_als(small, ALSConfig(rank=4, iterations=3, seed=1))
    two = train_als(small, ALSConfig(rank=4, iterations=3, seed=1))
    np.testing.assert_array_equal(one.arrays["item_factors"], two.arrays["item_factors"])
