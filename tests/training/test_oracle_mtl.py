"""Oracle-MTL against independent computations: the joint optimum of the bilinear least-squares
problem (SVD), the weighted data set by hand, the first-order gradients by finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from veloxserve.errors import InvalidInput
from veloxserve.training.oracle_mtl import (
    IndexedRatings,
    OracleConfig,
    basis_loss,
    check_solver,
    merge_by_item,
    solve_weights,
    train_first_order,
    train_oracle,
    weighted_dataset,
)


def full_instance(n_users: int = 12, n_items: int = 30, p: int = 6, k: int = 2, seed: int = 0):
    """Every user rates every item: Y = U Θ Xᵀ + noise, f_i(x) = θ_i · x linear."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_items, p))
    Y = rng.normal(size=(n_users, k)) @ rng.normal(size=(k, p)) @ X.T + 0.3 * rng.normal(size=(n_users, n_items))
    u, i = np.meshgrid(np.arange(n_users), np.arange(n_items), indexing="ij")
    return X, Y, IndexedRatings(u.ravel(), i.ravel(), Y.ravel(), n_users)


class WeightedLeastSquares:
    """The exact oracle for a linear f_i, written by hand: any object with fit(X, y, sample_weight)
    and predict(X) will do (no scikit-learn base class needed)."""

    def fit(self, X: np.ndarray, y: np.ndarray, sample_weight: np.ndarray) -> WeightedLeastSquares:
        root = np.sqrt(sample_weight)[:, None]
        self.coef_ = np.linalg.lstsq(X * root, y * root[:, 0], rcond=None)[0]
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        return X @ self.coef_


def joint_optimum(X: np.ndarray, Y: np.ndarray, k: int) -> float:
    """min over W (n_users, k), Θ (p, k) of ||Y − W Θᵀ Xᵀ||²: M = W Θᵀ Xᵀ ranges over the rank-k
    matrices whose rows lie in X's column space, so the optimum is the part of Y outside that space
    plus the tail of the singular values of Y's projection onto it (Eckart–Young)."""
    projected = Y @ X @ np.linalg.pinv(X)
    tail = np.linalg.svd(projected, compute_uv=False)[k:]
    return float(((Y - projected) ** 2).sum() + (tail**2).sum())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alternating_oracle_reaches_the_joint_least_squares_optimum(seed: int) -> None:
    X, Y, data = full_instance(seed=seed)
    config = OracleConfig(k=2, iterations=150, prior_precision=1e-9, constant=False, seed=seed)
    fitted = train_oracle(X, data, [WeightedLeastSquares(), WeightedLeastSquares()], config)
    optimum = joint_optimum(X, Y, 2)
    assert fitted.losses[-1] == pytest.approx(optimum, rel=1e-4)
    assert all(b <= a * (1 + 1e-9) for a, b in zip(fitted.losses, fitted.losses[1:]))  # monotone descent
    # the served prediction W·F reproduces that loss
    prediction = fitted.weights @ fitted.raw.T
    assert ((Y - prediction) ** 2).sum() == pytest.approx(optimum, rel=1e-4)


def test_weighted_data_set_by_hand() -> None:
    raw = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]])  # f_1, f_2 of 3 items
    W = np.array([[2.0, 1.0, 0.5], [0.0, -1.0, 1.0]])  # users' [w_1, w_2, bias]
    data = IndexedRatings(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 2]), np.array([4.0, 1.0, 2.0, 3.0]), 2)
    items, targets, weights = weighted_dataset(data, raw, W, 0, constant=True, min_weight=1e-6)
    # f_1's rows: user 0 only (user 1's w_1 = 0 is dropped); target (y − w_2 f_2 − bias) / w_1
    np.testing.assert_array_equal(items, [0, 1])
    np.testing.assert_allclose(targets, [(4.0 - 1.0 * 2.0 - 0.5) / 2.0, (1.0 - 1.0 * -1.0 - 0.5) / 2.0])
    np.testing.assert_allclose(weights, [4.0, 4.0])
    items, targets, weights = weighted_dataset(data, raw, W, 1, constant=True, min_weight=1e-6)
    np.testing.assert_array_equal(items, [0, 1, 1, 2])
    expected = [(4.0 - 2 * 1 - 0.5) / 1, (1.0 - 2 * 3 - 0.5) / 1, (2.0 - 0 - 1.0) / -1, (3.0 - 0 - 1.0) / -1]
    np.testing.assert_allclose(targets, expected)
    np.testing.assert_allclose(weights, [1.0, 1.0, 1.0, 1.0])


@settings(max_examples=30, deadline=None)
@given(
    items=st.lists(st.integers(0, 4), min_size=1, max_size=30),
    seed=st.integers(0, 1000),
)
def test_merging_rows_by_item_keeps_the_weighted_least_squares_minimiser(items: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    items_a = np.array(items)
    X = rng.normal(size=(5, 3))
    targets, weights = rng.normal(size=items_a.size), rng.uniform(0.1, 3.0, size=items_a.size)
    rows, mean, total = merge_by_item(items_a, targets, weights)
    full = Ridge(alpha=0.5, fit_intercept=False).fit(X[items_a], targets, sample_weight=weights).coef_
    merged = Ridge(alpha=0.5, fit_intercept=False).fit(X[rows], mean, sample_weight=total).coef_
    np.testing.assert_allclose(merged, full, atol=1e-8)


def test_w_step_is_every_users_ridge_solve() -> None:
    X, Y, data = full_instance(n_users=4, n_items=7, k=2)
    F = np.column_stack([X[:, :2], np.ones(7)])
    mean, lam = np.array([0.1, -0.2, 1.0]), np.array([2.0, 3.0, 0.5])
    W, grams, rhss, _ = solve_weights(data, F, mean, lam, stats=True)
    for u in range(4):
        A = np.diag(lam) + F.T @ F
        np.testing.assert_allclose(W[u], np.linalg.solve(A, lam * mean + F.T @ Y[u]), atol=1e-10)
        np.testing.assert_allclose(grams[u], A, atol=1e-10)


def test_a_solver_without_sample_weights_is_refused_before_training() -> None:
    X, _, data = full_instance()
    pipeline = make_pipeline(StandardScaler(), Ridge())
    with pytest.raises(InvalidInput, match="Pipeline does not accept sample weights") as err:
        check_solver(pipeline)
    assert err.value.field == "basis"

    class Counting(Ridge):
        fits = 0

        def fit(self, X, y, sample_weight=None):  # type: ignore[override]
            Counting.fits += 1
            return super().fit(X, y, sample_weight)

    with pytest.raises(InvalidInput, match="sample weights"):
        train_oracle(X, data, [Counting(), pipeline], OracleConfig(k=2))
    assert Counting.fits == 0


def test_first_order_gradients_match_finite_differences() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    X, Y, data = full_instance(n_users=5, n_items=8, p=4, k=2)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).double()
    W = np.random.default_rng(1).normal(size=(5, 3))
    loss = basis_loss(module, X, data, W, True)
    loss.backward()
    analytic = torch.cat([p.grad.reshape(-1) for p in module.parameters()]).numpy()
    numeric = np.empty_like(analytic)
    params = list(module.parameters())
    eps, offset = 1e-6, 0
    with torch.no_grad():
        for p in params:
            flat = p.view(-1)
            for j in range(flat.numel()):
                old = float(flat[j])
                flat[j] = old + eps
                up = float(basis_loss(module, X, data, W, True))
                flat[j] = old - eps
                down = float(basis_loss(module, X, data, W, True))
                flat[j] = old
                numeric[offset + j] = (up - down) / (2 * eps)
            offset += flat.numel()
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)


def test_first_order_descends_and_leaves_the_given_module_unchanged() -> None:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    X, Y, data = full_instance(n_users=10, n_items=20, p=5, k=2)
    module = torch.nn.Linear(5, 2).double()
    before = [p.detach().clone() for p in module.parameters()]
    config = OracleConfig(k=2, iterations=4, steps=20, learning_rate=0.05, prior_precision=1e-6)
    fitted = train_first_order(module, X, data, config)
    assert fitted.losses[-1] < fitted.losses[0]
    assert fitted.losses[-1] >= joint_optimum(np.column_stack([X, np.ones(20)]), Y, 3) * (1 - 1e-6)  # never below it
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters()))


def test_bad_config_is_named() -> None:
    with pytest.raises(InvalidInput, match="'k'"):
        OracleConfig(k=0)
    X, _, data = full_instance()
    with pytest.raises(InvalidInput, match="needs 2 solvers, got 1"):
        train_oracle(X, data, [Ridge()], OracleConfig(k=2))


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), i=st.integers(0, 2), zero_users=st.integers(0, 3))
def test_the_weighted_data_set_is_the_squared_loss_as_a_function_of_f_i(seed: int, i: int, zero_users: int) -> None:
    """For any values g of f_i, the full loss equals the weighted data set's loss in g plus the
    rows of users ignoring f_i (w_{u,i} = 0), which do not depend on g."""
    rng = np.random.default_rng(seed)
    n_users, n_items, k = 6, 5, 3
    raw, W = rng.normal(size=(n_items, k)), rng.normal(size=(n_users, k + 1))
    W[:zero_users, i] = 0.0
    data = IndexedRatings(rng.integers(0, n_users, 40), rng.integers(0, n_items, 40), rng.normal(size=40), n_users)
    items, targets, weights = weighted_dataset(data, raw, W, i, constant=True, min_weight=1e-12)
    g = rng.normal(size=n_items)
    swapped = raw.copy()
    swapped[:, i] = g
    full = data.scores - np.einsum("ij,ij->i", W[data.users, :k], swapped[data.items]) - W[data.users, k]
    ignored = W[data.users, i] == 0.0
    assert (full**2).sum() == pytest.approx((weights * (targets - g[items]) ** 2).sum() + (full[ignored] ** 2).sum())


def test_an_sklearn_linear_regression_is_an_exact_oracle_too() -> None:
    X, Y, data = full_instance(seed=3)
    config = OracleConfig(k=2, iterations=60, prior_precision=1e-9, constant=False, seed=3)
    fitted = train_oracle(X, data, LinearRegression(fit_intercept=False), config)
    assert fitted.losses[-1] == pytest.approx(joint_optimum(X, Y, 2), rel=1e-3)
