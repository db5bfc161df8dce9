"""Oracle-MTL: train a shared basis f_1..f_k of black-box models by alternating minimisation.

The Shared Basis objective of the Velox papers (squared loss),

    L(θ, W) = Σ_(u,x,y) (y − w_u · [f_1(x), …, f_k(x), 1])² + Σ_u (w_u − w0)ᵀ Λ0 (w_u − w0),

is minimised in two alternating steps:

- θ-step, one basis function at a time with every user's weights held fixed: f_i's share of
  each rating is r = y − Σ_{j≠i} w_{u,j} f_j(x) − w_{u,bias}, and
  (y − w_u·f)² = w_{u,i}² (r / w_{u,i} − f_i(x))², so any solver that minimises a *weighted*
  squared loss — anything with `fit(X, y, sample_weight)` — is the oracle for f_i, handed the
  targets r / w_{u,i} with weights w_{u,i}². Rows with |w_{u,i}| ≈ 0 carry no information about
  f_i (and would divide by zero): they are dropped. Rows of one item are then merged (weighted
  mean target, summed weight) — the same minimiser for squared loss, one row per item.
- W-step: every user's exact ridge solve against the new basis, compiled and in parallel (the
  same solve the server maintains online, so served weights equal a replay of the data).

`train_first_order` is the variant for a differentiable f (a PyTorch module): gradient steps on
θ with the users' weights fixed, then the same exact W-step.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.utils.validation import has_fit_parameter

from veloxserve.errors import InvalidInput
from veloxserve.training.als import _csr, _group_ridge


@dataclass(frozen=True)
class OracleConfig:
    k: int = 8  # basis functions f_1..f_k
    iterations: int = 8  # alternating sweeps
    prior_precision: float = 1.0  # Λ0 = λ I around the mean user weights w0
    seed: int = 0
    min_weight: float = 1e-6  # |w_{u,i}| below this: the row says nothing about f_i
    constant: bool = True  # a constant 1 in the basis carries each user's bias
    steps: int = 50  # first-order: gradient steps on θ per sweep
    learning_rate: float = 0.01  # first-order: Adam's step size

    def __post_init__(self) -> None:
        for name, ok in (
            ("k", self.k >= 1),
            ("iterations", self.iterations >= 1),
            ("prior_precision", self.prior_precision > 0),
            ("min_weight", self.min_weight > 0),
            ("steps", self.steps >= 1),
            ("learning_rate", self.learning_rate > 0),
        ):
            if not ok:
                raise InvalidInput(f"Oracle-MTL's {name!r} is out of range: got {getattr(self, name)!r}.", field=name)


@dataclass
class IndexedRatings:
    """Ratings as integer rows: user row, item row (into the design matrix), score."""

    users: np.ndarray
    items: np.ndarray
    scores: np.ndarray
    n_users: int


@dataclass
class FittedBasis:
    models: list[Any]  # the fitted f_i (oracle) or [module] (first order)
    raw: np.ndarray  # (n_items, k): [f_1 .. f_k] of every design row
    weights: np.ndarray  # (n_users, d) w_u
    prior_mean: np.ndarray  # (d,) w0
    prior_precision: np.ndarray  # (d,)
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0


def check_solver(solver: Any) -> None:
    """InvalidInput before any training when `solver` cannot be the oracle: it must have
    `fit(X, y, sample_weight)` (a scikit-learn Pipeline does not; put the weighted step last
    and wrap it, or use an estimator that accepts sample weights)."""
    if not callable(getattr(solver, "fit", None)) or not has_fit_parameter(solver, "sample_weight"):
        raise InvalidInput(
            f"The basis solver {type(solver).__name__} does not accept sample weights: oracle-MTL hands each "
            "f_i a weighted data set and needs fit(X, y, sample_weight=...). Use an estimator that takes "
            "them (Ridge, SGDRegressor, DecisionTreeRegressor, GradientBoostingRegressor, ...).",
            field="basis",
        )


def layout(raw: np.ndarray, constant: bool) -> np.ndarray:
    """[f_1 .. f_k, 1]: the served layout (models/basis.py BlackBoxBasis.layout without passthrough)."""
    return np.hstack([raw, np.ones((raw.shape[0], 1))]) if constant else np.ascontiguousarray(raw)


def weighted_dataset(
    data: IndexedRatings, raw: np.ndarray, weights: np.ndarray, i: int, *, constant: bool, min_weight: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """f_i's data set with the users' weights fixed, one row per rating it informs:
    (item rows, targets (y − Σ_{j≠i} w_{u,j} f_j(x) − w_{u,bias}) / w_{u,i}, weights w_{u,i}²)."""
    k = raw.shape[1]
    W = weights[data.users]
    F = raw[data.items]
    others = np.einsum("ij,ij->i", W[:, :k], F) - W[:, i] * F[:, i]
    if constant:
        others += W[:, k]
    w = W[:, i]
    keep = np.abs(w) > min_weight
    return data.items[keep], (data.scores[keep] - others[keep]) / w[keep], w[keep] ** 2


def merge_by_item(items: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, ...]:
    """One row per item: (rows, weighted mean target, summed weight). For squared loss,
    Σ_r w_r (t_r − f)² = (Σ w)(t̄ − f)² + const, so the oracle's minimiser is unchanged."""
    rows, inverse = np.unique(items, return_inverse=True)
    total = np.bincount(inverse, weights=weights, minlength=rows.size)
    mean = np.bincount(inverse, weights=weights * targets, minlength=rows.size) / total
    return rows, mean, total


def solve_weights(
    data: IndexedRatings,
    features: np.ndarray,
    prior_mean: np.ndarray,
    prior_precision: np.ndarray,
    *,
    stats: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every user's exact ridge solve (W, grams, rhss, sse per user), compiled and parallel."""
    order, indptr = _csr(data.users, data.n_users)
    reg = np.repeat(prior_precision[None, :], data.n_users, axis=0)
    return _group_ridge(
        indptr,
        data.items[order].astype(np.int64),
        np.ascontiguousarray(features, dtype=np.float64),
        data.scores[order].astype(np.float64),
        reg,
        prior_precision * prior_mean,
        stats,
    )


def _initial(data: IndexedRatings, config: OracleConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d = config.k + (1 if config.constant else 0)
    rng = np.random.default_rng(config.seed)
    W = rng.normal(scale=1.0, size=(data.n_users, d))
    if config.constant:
        W[:, config.k] = float(data.scores.mean())
    return W, W.mean(axis=0), np.full(d, config.prior_precision)


def _loss(sse: np.ndarray, W: np.ndarray, w0: np.ndarray, lam: np.ndarray) -> float:
    return float(sse.sum() + ((W - w0) ** 2 @ lam).sum())


def train_oracle(
    design: Any, data: IndexedRatings, solver: Any | list[Any], config: OracleConfig, *, init: np.ndarray | None = None
) -> FittedBasis:
    """Alternating minimisation with a black-box oracle per basis function. `design` is the
    items' input matrix (sparse or dense, one row per item row of `data`); `solver` one template
    (cloned k times) or k estimators; `init` optional starting user weights."""
    started = time.perf_counter()
    solvers = list(solver) if isinstance(solver, list) else [clone(solver) for _ in range(config.k)]
    if len(solvers) != config.k:
        raise InvalidInput(f"Oracle-MTL with k={config.k} needs {config.k} solvers, got {len(solvers)}.", field="basis")
    for s in solvers:
        check_solver(s)
    W, w0, lam = _initial(data, config)
    if init is not None:
        W = np.array(init, dtype=np.float64)
        w0 = W.mean(axis=0)
    raw = np.zeros((design.shape[0], config.k))
    losses: list[float] = []
    for _ in range(config.iterations):
        for i, s in enumerate(solvers):  # Gauss–Seidel: f_i sees f_1..f_{i-1} already refitted
            items, targets, weights = weighted_dataset(
                data, raw, W, i, constant=config.constant, min_weight=config.min_weight
            )
            if items.size == 0:
                continue  # every user ignores f_i: nothing to fit it to
            rows, mean, total = merge_by_item(items, targets, weights)
            s.fit(design[rows], mean, sample_weight=total)
            raw[:, i] = _checked(s.predict(design), i, s, design.shape[0])
        W, _, _, sse = solve_weights(data, layout(raw, config.constant), w0, lam)
        losses.append(_loss(sse, W, w0, lam))
        w0 = W.mean(axis=0)
    return FittedBasis(solvers, raw, W, w0, lam, losses, time.perf_counter() - started)


def _checked(output: Any, i: int, solver: Any, n: int) -> np.ndarray:
    """f_i's predictions on the design, or InvalidInput naming it when they are not n finite floats."""
    values = np.asarray(output, dtype=np.float64)
    if values.size != n:
        raise InvalidInput(
            f"Feature model f_{i + 1} ({type(solver).__name__}) returned {values.shape} for {n} inputs after "
            "fitting; a basis function returns one float per input.",
            field="basis",
        )
    if not np.isfinite(values).all():
        raise InvalidInput(
            f"Feature model f_{i + 1} ({type(solver).__name__}) returned non-finite values (NaN or inf) after "
            "fitting on its weighted data set; the oracle stopped before writing a version.",
            field="basis",
        )
    return values.reshape(-1)


def basis_loss(module: Any, design: Any, data: IndexedRatings, weights: np.ndarray, constant: bool) -> Any:
    """The squared loss Σ (y − w_u · [f(x; θ), 1])² as a differentiable torch scalar of θ
    (the users' weights fixed), in the module's dtype."""
    import torch

    dtype = next(module.parameters()).dtype
    X = design if isinstance(design, torch.Tensor) else _dense_tensor(design, dtype)
    W = torch.as_tensor(weights[data.users], dtype=dtype)
    y = torch.as_tensor(data.scores, dtype=dtype)
    F = module(X)
    k = F.shape[1]
    pred = (F[torch.as_tensor(data.items)] * W[:, :k]).sum(dim=1)
    if constant:
        pred = pred + W[:, k]
    return ((y - pred) ** 2).sum()


def train_first_order(
    module: Any, design: Any, data: IndexedRatings, config: OracleConfig, *, warm: bool = False
) -> FittedBasis:
    """The first-order variant for a differentiable f (a torch module mapping (n, p) to (n, k)):
    `config.steps` Adam steps on θ per sweep with the users' weights fixed, then the exact W-step.
    The module is copied, not changed. With `warm`, the first W-step uses the module as given."""
    import torch

    started = time.perf_counter()
    module = copy.deepcopy(module)
    torch.manual_seed(config.seed)
    X = _dense_tensor(design, next(module.parameters()).dtype)

    def raw_now() -> np.ndarray:
        with torch.no_grad():
            out = module(X).detach().cpu().numpy().astype(np.float64)
        if out.ndim != 2 or out.shape[1] != config.k:
            raise InvalidInput(
                f"The basis module returns shape {tuple(out.shape)} for {X.shape[0]} inputs; k={config.k} declared.",
                field="basis",
            )
        if not np.isfinite(out).all():
            raise InvalidInput(
                f"The basis module {type(module).__name__} returned non-finite values (NaN or inf) during "
                "training: lower the learning rate or check the inputs.",
                field="basis",
            )
        return out

    W, w0, lam = _initial(data, config)
    if warm:
        W, _, _, _ = solve_weights(data, layout(raw_now(), config.constant), w0, lam)
        w0 = W.mean(axis=0)
    optimiser = torch.optim.Adam(module.parameters(), lr=config.learning_rate)
    scale = 1.0 / max(1, data.scores.size)
    losses: list[float] = []
    for _ in range(config.iterations):
        for _ in range(config.steps):
            optimiser.zero_grad()
            loss = basis_loss(module, X, data, W, config.constant) * scale
            loss.backward()
            optimiser.step()
        W, _, _, sse = solve_weights(data, layout(raw_now(), config.constant), w0, lam)
        losses.append(_loss(sse, W, w0, lam))
        w0 = W.mean(axis=0)
    return FittedBasis([module], raw_now(), W, w0, lam, losses, time.perf_counter() - started)


def _dense_tensor(design: Any, dtype: Any) -> Any:
    import torch

    return torch.as_tensor(np.asarray(design.toarray() if hasattr(design, "toarray") else design), dtype=dtype)
