"""Multilevel Regression: score(u, x) = σ(f(x; θ) + w_u · [x, 1]), the seed paper's second formulation.

A shared model f (any black-box regressor with sample weights) plus a per-user linear correction
on the item's own numeric inputs x. Trained by alternating minimisation of the squared loss:

- W-step: w_u = the exact ridge solve of y − f(x) on [x, 1] around the mean user (vectorised);
- θ-step: f is fitted to y − w_u · [x, 1] with weight 1 per rating (merged by item: mean target,
  count weight — the same minimiser for squared loss).

How it is served: as a black-box basis [f(x; θ), x, 1] (models/basis.py with passthrough), so it
needs no serving form of its own. The weight of f must stay 1; the online ridge cannot pin a weight,
so the served prior holds it at 1 with precision `anchor_precision` (1e6) — an approximation: a
user's weight on f moves by about Σ f(x)·residual / 1e6, i.e. a few parts per million after
hundreds of observations, and their other weights are then the exact ridge solution given it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.base import clone

from veloxserve.errors import InvalidInput
from veloxserve.training.oracle_mtl import (
    FittedBasis,
    IndexedRatings,
    _checked,
    check_solver,
    merge_by_item,
    solve_weights,
)

ANCHOR_PRECISION = 1e6


@dataclass(frozen=True)
class MultilevelConfig:
    iterations: int = 8
    prior_precision: float = 1.0  # λ on each user's w_u around the mean user
    anchor_precision: float = ANCHOR_PRECISION  # served prior precision holding f's weight at 1

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.prior_precision <= 0 or self.anchor_precision <= 0:
            raise InvalidInput(f"Multilevel regression's settings are out of range: {self}.", field="multilevel")


def train_multilevel(design: np.ndarray, data: IndexedRatings, solver: Any, config: MultilevelConfig) -> FittedBasis:
    """Alternate the users' exact ridge solves and a black-box fit of f. `design` is the items'
    numeric inputs x (n_items, p). The returned weights and prior are in the served layout
    [f, x, 1]: f's weight exactly 1, its prior mean 1 with precision `anchor_precision`."""
    check_solver(solver)
    started = time.perf_counter()
    solver = clone(solver)
    x = np.asarray(design, dtype=np.float64)
    linear = np.hstack([x, np.ones((x.shape[0], 1))])  # [x, 1]
    d = linear.shape[1]
    f = np.zeros(x.shape[0])
    mean, lam = np.zeros(d), np.full(d, config.prior_precision)
    losses: list[float] = []
    residual = IndexedRatings(data.users, data.items, data.scores.copy(), data.n_users)
    for _ in range(config.iterations):
        residual.scores = data.scores - f[data.items]
        W, _, _, sse = solve_weights(residual, linear, mean, lam)
        losses.append(float(sse.sum() + ((W - mean) ** 2 @ lam).sum()))
        mean = W.mean(axis=0)
        target = data.scores - np.einsum("ij,ij->i", W[data.users], linear[data.items])
        rows, avg, count = merge_by_item(data.items, target, np.ones(target.size))
        solver.fit(x[rows], avg, sample_weight=count)
        f = _checked(solver.predict(x), 0, solver, x.shape[0])
    residual.scores = data.scores - f[data.items]
    W, _, _, sse = solve_weights(residual, linear, mean, lam)
    losses.append(float(sse.sum() + ((W - mean) ** 2 @ lam).sum()))
    mean = W.mean(axis=0)
    served_W = np.hstack([np.ones((W.shape[0], 1)), W])
    return FittedBasis(
        [solver],
        f[:, None],
        served_W,
        np.concatenate([[1.0], mean]),
        np.concatenate([[config.anchor_precision], lam]),
        losses,
        time.perf_counter() - started,
    )
