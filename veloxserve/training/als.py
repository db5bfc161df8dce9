"""Split-model alternating least squares: block coordinate descent on the Velox objective.

With f(x) = [v_x, μ + b_x, 1] and user weights w_u = [u_u, c_u, d_u]:

- user step: w_u = (λ_u I + F_u^T F_u)^{-1} (λ_u w0 + F_u^T y), the very ridge solve the server
  maintains online, with w0 the mean user weights (the cold-start prior);
- item step: y - c_u μ - d_u = [u_u, c_u] · [v_x, b_x], a ridge solve per item with λ_i
  (scaled by the item's count, as in ALS-WR, which generalises better on sparse items).

Both steps are one compiled loop over groups (users or items), each a small Gram matrix and a
Cholesky solve, run in parallel; no Python loop over ratings, users or items.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numba import njit, prange
from tqdm import tqdm

from veloxserve.training.ratings import Ratings


@dataclass(frozen=True)
class ALSConfig:
    rank: int = 10
    reg: float = 10.0  # item-side λ_i (per rating of the item when weighted_reg)
    prior_precision: float = 15.0  # user-side λ_u: precision of the prior around w0 (taste and bias)
    baseline_precision: float = 100.0  # precision on c_u, the weight of the item baseline μ + b_x
    iterations: int = 8
    seed: int = 0
    heldout_fraction: float = 0.1
    weighted_reg: bool = False  # scale λ_i by the item's rating count (ALS-WR)

    def __post_init__(self) -> None:
        checks = [
            (self.rank >= 1, f"rank must be >= 1, got {self.rank}"),
            (self.reg > 0, f"reg must be > 0, got {self.reg}"),
            (self.prior_precision > 0, f"prior_precision must be > 0, got {self.prior_precision}"),
            (self.iterations >= 1, f"iterations must be >= 1, got {self.iterations}"),
            (0 <= self.heldout_fraction < 1, f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


@dataclass
class TrainedFactors:
    """Everything a version directory holds, plus the training figures."""

    arrays: dict[str, np.ndarray]
    global_mean: float
    train_rmse: float
    heldout_rmse: float | None
    heldout_rows: int
    heldout_skipped: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


@njit(parallel=True, cache=True, fastmath=True)
def _group_ridge(indptr, others, X, targets, reg_diag, prior_rhs, keep_stats):  # pragma: no cover - compiled
    """For each group g: solve (diag(reg_g) + X_g^T X_g) θ = prior_rhs + X_g^T t_g.

    reg_diag is (n_groups, d) so the penalty can scale with the group's size.
    """
    n, d = indptr.shape[0] - 1, X.shape[1]
    out = np.empty((n, d))
    grams = np.empty((n if keep_stats else 0, d, d))
    rhss = np.empty((n if keep_stats else 0, d))
    sse = np.zeros(n)
    for g in prange(n):
        A = np.zeros((d, d))
        r = prior_rhs.copy()
        for t in range(indptr[g], indptr[g + 1]):
            x = X[others[t]]
            y = targets[t]
            for i in range(d):  # the full square, row by row: contiguous inner loops vectorise
                xi = x[i]
                r[i] += y * xi
                row = A[i]
                for j in range(d):
                    row[j] += xi * x[j]
        for i in range(d):
            A[i, i] += reg_diag[g, i]
        theta = np.linalg.solve(A, r)
        out[g] = theta
        for t in range(indptr[g], indptr[g + 1]):  # squared error of the fit, for the loss
            x = X[others[t]]
            e = targets[t]
            for i in range(d):
                e -= x[i] * theta[i]
            sse[g] += e * e
        if keep_stats:
            grams[g] = A
            rhss[g] = r
    return out, grams, rhss, sse


def prior_precision_vector(config: ALSConfig) -> np.ndarray:
    """Diagonal of Λ0: the taste factors and the user bias get λ_u; the baseline weight c_u is held
    near its prior (≈ 1) — freeing it overfits sparse users (u1.test RMSE 0.923 → 0.918 at rank 50)."""
    precision = np.full(config.rank + 2, config.prior_precision)
    precision[config.rank] = config.baseline_precision
    return precision


def _csr(groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(groups, kind="stable")
    indptr = np.zeros(n_groups + 1, dtype=np.int64)
    np.cumsum(np.bincount(groups, minlength=n_groups), out=indptr[1:])
    return order, indptr


def _features(V: np.ndarray, b: np.ndarray, mu: float) -> np.ndarray:
    return np.column_stack([V, mu + b, np.ones(len(b))])


def train_als(
    train: Ratings,
    config: ALSConfig,
    heldout: Ratings | None = None,
    progress: bool = False,
    link: Callable[[np.ndarray], np.ndarray] | None = None,
    items: np.ndarray | None = None,
    final_users: Ratings | None = None,
) -> TrainedFactors:
    """Fit θ = (V, b) and every trained user's ridge statistics against it.

    `link` maps w·f to the served score for the held-out RMSE (σ for logistic models). `items`
    adds items to the catalogue even without ratings (a retrain must not drop items the active
    version serves; unrated ones get V = 0, b = 0, i.e. the global mean). `final_users`, when
    given, are the ratings the served user statistics are computed from (train plus the slice
    held out to compare versions), so no observation is lost from the served state."""
    started = time.perf_counter()
    r, k = config.rank, config.rank + 2
    user_ids, u = np.unique(train.users, return_inverse=True)
    item_ids = np.unique(train.items if items is None else np.concatenate([train.items, np.asarray(items, dtype=str)]))
    i = np.searchsorted(item_ids, train.items)
    y = train.scores.astype(np.float64)
    mu = float(y.mean())
    u_order, u_ptr = _csr(u, len(user_ids))
    i_order, i_ptr = _csr(i, len(item_ids))
    u_items, u_y = i[u_order].astype(np.int64), y[u_order]
    i_users = u[i_order].astype(np.int64)
    item_counts = np.diff(i_ptr).astype(np.float64)

    rng = np.random.default_rng(config.seed)
    V = rng.normal(scale=0.1, size=(len(item_ids), r))
    b = np.zeros(len(item_ids))
    W = np.zeros((len(user_ids), k))
    W[:, :r] = rng.normal(scale=0.1, size=(len(user_ids), r))
    W[:, r] = 1.0
    w0 = W.mean(axis=0)
    lam_u = prior_precision_vector(config)
    user_reg = np.repeat(lam_u[None, :], len(user_ids), axis=0)
    scale = np.maximum(item_counts, 1.0) if config.weighted_reg else np.ones_like(item_counts)
    item_reg = np.repeat((config.reg * scale)[:, None], r + 1, axis=1)
    no_prior = np.zeros(r + 1)
    losses: list[float] = []
    sweeps = tqdm(range(config.iterations), desc="ALS", unit="sweep", disable=None if progress else True)
    for _ in sweeps:
        F = _features(V, b, mu)
        W, _, _, sse = _group_ridge(u_ptr, u_items, F, u_y, user_reg, lam_u * w0, False)
        loss = float(sse.sum() + ((W - w0) ** 2 @ lam_u).sum() + item_reg[:, 0] @ (V**2).sum(1) + item_reg[:, 0] @ b**2)
        losses.append(loss)
        sweeps.set_postfix(loss=f"{loss:.4g}", rmse=f"{np.sqrt(sse.sum() / len(y)):.4f}")
        w0 = W.mean(axis=0)
        target = (y - W[u, r] * mu - W[u, r + 1])[i_order]
        theta, _, _, _ = _group_ridge(
            i_ptr, i_users, np.ascontiguousarray(W[:, : r + 1]), target, item_reg, no_prior, False
        )
        V, b = theta[:, :r], theta[:, r]

    F = _features(V, b, mu)
    W, _, _, sse = _group_ridge(u_ptr, u_items, F, u_y, user_reg, lam_u * w0, False)
    train_rmse = float(np.sqrt(sse.sum() / len(y)))
    heldout_rmse, heldout_rows, skipped = _heldout_rmse(heldout, user_ids, item_ids, W, w0, F, link)
    arrays = {"item_ids": item_ids, "item_factors": V, "item_bias": b, "prior_mean": w0, "prior_precision": lam_u}
    arrays.update(solve_users(train if final_users is None else final_users, item_ids, F, lam_u, w0))
    return TrainedFactors(
        arrays, mu, train_rmse, heldout_rmse, heldout_rows, skipped, losses, time.perf_counter() - started
    )


def solve_users(
    ratings: Ratings, item_ids: np.ndarray, F: np.ndarray, prior_precision: np.ndarray, prior_mean: np.ndarray
) -> dict[str, np.ndarray]:
    """The served user state against a fixed θ: every user's exact ridge statistics
    A_u = Λ0 + F_u^T F_u, r_u = Λ0 w0 + F_u^T y, w_u = A_u^{-1} r_u, and the items each rated.
    Ratings of items outside `item_ids` are ignored (θ knows nothing of them)."""
    rows = np.searchsorted(item_ids, ratings.items)
    known = (rows < len(item_ids)) & (item_ids[np.minimum(rows, len(item_ids) - 1)] == ratings.items)
    user_ids, u = np.unique(ratings.users[known], return_inverse=True)
    order, indptr = _csr(u, len(user_ids))
    seen = rows[known][order].astype(np.int64)
    reg = np.repeat(prior_precision[None, :], len(user_ids), axis=0)
    W, grams, rhss, _ = _group_ridge(
        indptr,
        seen,
        np.ascontiguousarray(F),
        ratings.scores[known][order].astype(np.float64),
        reg,
        prior_precision * prior_mean,
        True,
    )
    return {
        "user_ids": user_ids,
        "user_weights": W,
        "user_gram": grams,
        "user_rhs": rhss,
        "user_counts": np.diff(indptr),
        "seen_indptr": indptr,
        "seen_items": seen,
    }


def theta_rmse(
    arrays: dict[str, np.ndarray],
    global_mean: float,
    train: Ratings,
    heldout: Ratings,
    link: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float | None, np.ndarray]:
    """Held-out RMSE of a version's θ and prior with users re-solved on `train`; the second value
    marks the held-out rows whose item θ knows. Compares two versions on the same data."""
    item_ids = arrays["item_ids"]
    F = _features(arrays["item_factors"], arrays["item_bias"], global_mean)
    users = solve_users(train, item_ids, F, arrays["prior_precision"], arrays["prior_mean"])
    rows = np.searchsorted(item_ids, heldout.items)
    known = (rows < len(item_ids)) & (item_ids[np.minimum(rows, len(item_ids) - 1)] == heldout.items)
    rmse, _, _ = _heldout_rmse(
        heldout, users["user_ids"], item_ids, users["user_weights"], arrays["prior_mean"], F, link
    )
    return rmse, known


def _heldout_rmse(heldout, user_ids, item_ids, W, w0, F, link) -> tuple[float | None, int, int]:
    """RMSE of the served model on held-out ratings; cold users get w0, unknown items are skipped."""
    if heldout is None or len(heldout) == 0:
        return None, 0, 0
    items = np.searchsorted(item_ids, heldout.items)
    known = (items < len(item_ids)) & (item_ids[np.minimum(items, len(item_ids) - 1)] == heldout.items)
    users = np.searchsorted(user_ids, heldout.users)
    warm = (users < len(user_ids)) & (user_ids[np.minimum(users, len(user_ids) - 1)] == heldout.users)
    weights = np.where(warm[:, None], W[np.minimum(users, len(user_ids) - 1)], w0)
    pred = np.einsum("ij,ij->i", weights[known], F[items[known]])
    if link is not None:
        pred = link(pred)
    rmse = float(np.sqrt(np.mean((heldout.scores[known] - pred) ** 2))) if known.any() else None
    return rmse, int(known.sum()), int((~known).sum())
