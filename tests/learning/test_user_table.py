"""The online learner must equal an independent batch solve of the same ridge problem."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.learning.user_table import UserTable
from veloxserve.models.version import Link, UserPrior


def batch_ridge(F: np.ndarray, y: np.ndarray, w0: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """argmin_w ||y - F w||^2 + Σ lam_j (w_j - w0_j)^2, solved from scratch."""
    return np.linalg.solve(np.diag(lam) + F.T @ F, lam * w0 + F.T @ y)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    dim=st.integers(2, 24),
    lam=st.floats(0.05, 20.0),
    n_users=st.integers(1, 8),
)
def test_online_updates_equal_batch_ridge_after_1000_observations(
    seed: int, dim: int, lam: float, n_users: int
) -> None:
    rng = np.random.default_rng(seed)
    F = rng.normal(size=(300, dim))
    w0 = rng.normal(size=dim)
    lam = lam * rng.uniform(0.5, 50.0, size=dim)  # a diagonal prior precision, as trained versions have
    table = UserTable(dim, UserPrior(w0, lam), capacity=2)  # tiny capacity: growth is exercised too
    users = rng.integers(0, n_users, size=1000)
    items = rng.integers(0, F.shape[0], size=1000)
    ys = rng.normal(size=1000) * 3 + 1
    half = 500
    for u, i, y in zip(users[:half], items[:half], ys[:half]):  # one at a time
        table.observe(table.ensure(str(u)), F, int(i), float(y))
    rows = np.array([table.ensure(str(u)) for u in users[half:]], dtype=np.int64)
    table.observe_many(rows, F, items[half:].astype(np.int64), ys[half:])  # then as a batch

    for u in np.unique(users):
        mine = users == u
        expected = batch_ridge(F[items[mine]], ys[mine], w0, lam)
        np.testing.assert_allclose(table.weights(str(u)), expected, rtol=1e-6, atol=1e-6)
        A = np.diag(lam) + F[items[mine]].T @ F[items[mine]]
        np.testing.assert_allclose(table.covariance(str(u)) @ A, np.eye(dim), atol=1e-6)
        assert table.counts[table.rows[str(u)]] == mine.sum()
        assert table.seen[table.rows[str(u)]] == set(items[mine].tolist())


def test_unseen_user_gets_the_prior_mean_not_zero() -> None:
    w0 = np.array([0.5, -1.0, 2.0])
    table = UserTable(3, UserPrior.isotropic(w0, 1.0))
    np.testing.assert_array_equal(table.weights("never-seen"), w0)
    np.testing.assert_array_equal(table.weights_many(["a", "b"]), np.stack([w0, w0]))


def test_state_round_trips_through_bytes() -> None:
    rng = np.random.default_rng(1)
    F = rng.normal(size=(20, 4))
    table = UserTable(4, UserPrior.isotropic(np.zeros(4), 2.0))
    for i in range(30):
        table.observe(table.ensure("u"), F, i % 20, float(rng.normal()))
    restored = UserTable(4, UserPrior.isotropic(np.zeros(4), 2.0))
    restored.restore("u", table.encode(table.rows["u"]))
    row, other = table.rows["u"], restored.rows["u"]
    np.testing.assert_array_equal(restored.P[other], table.P[row])
    np.testing.assert_array_equal(restored.W[other], table.W[row])
    assert restored.seen[other] == table.seen[row]
    assert restored.counts[other] == 30


def test_restore_rejects_state_of_another_dimension() -> None:
    small = UserTable(3, UserPrior.isotropic(np.zeros(3), 1.0))
    small.ensure("u")
    big = UserTable(4, UserPrior.isotropic(np.zeros(4), 1.0))
    with pytest.raises(ValueError, match="dimension 3"):
        big.restore("u", small.encode(0))


def test_take_dirty_returns_exactly_the_changed_users() -> None:
    F = np.eye(3)
    table = UserTable(3, UserPrior.isotropic(np.zeros(3), 1.0))
    table.observe(table.ensure("a"), F, 0, 1.0)
    table.observe(table.ensure("b"), F, 1, 1.0)
    assert set(table.take_dirty()) == {"a", "b"}
    table.observe(table.ensure("b"), F, 2, 1.0)
    assert set(table.take_dirty()) == {"b"}
    assert table.take_dirty() == {}


def test_logistic_sgd_learns_the_direction_of_a_batch_logistic_fit() -> None:
    from scipy.optimize import minimize

    rng = np.random.default_rng(3)
    dim = 5
    F = rng.normal(size=(400, dim))
    truth = rng.normal(size=dim) * 2
    items = rng.integers(0, 400, size=4000)
    labels = (rng.random(4000) < 1 / (1 + np.exp(-F[items] @ truth))).astype(float)
    table = UserTable(dim, UserPrior.isotropic(np.zeros(dim), 1.0), Link.LOGISTIC, learning_rate=0.05)
    row = table.ensure("u")
    table.observe_many(np.full(4000, row), F, items.astype(np.int64), labels)

    def loss(w: np.ndarray) -> float:  # the same objective, solved in batch by an independent optimiser
        z = F[items] @ w
        return float(np.sum(np.logaddexp(0, z) - labels * z) + 0.5 * np.sum(w**2))

    batch = minimize(loss, np.zeros(dim), method="BFGS").x
    online = table.weights("u")
    cosine = online @ batch / np.linalg.norm(online) / np.linalg.norm(batch)
    assert cosine > 0.95
    accuracy = np.mean((F[items] @ online > 0) == (labels > 0.5))
    assert accuracy > 0.75
