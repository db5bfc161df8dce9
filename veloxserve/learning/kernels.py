"""Compiled per-observation updates of a user's weights.

Sherman–Morrison keeps P = A^{-1} of the ridge system A w = r, so one observation (f, y) costs
O(k^2): P' = P - (P f)(P f)^T / (1 + f^T P f), r' = r + y f, w' = P' r'. Recomputing w from
P' r' (rather than the O(k) gain form w + g (y - w·f)) keeps w from drifting away from the exact
solve over long streams. Plain numpy spends ~15 µs of interpreter and allocation overhead on this
at rank 50; compiled it is ~2 µs (bench/bench_core.py measures both, and a Cholesky re-solve).
The arrays are the whole user table and `row` selects the user, so no slice objects are built.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from veloxserve.models.version import sigmoid

_sigmoid = njit(cache=True, nogil=True)(sigmoid)  # the one σ, compiled so the kernels below can call it


@njit(cache=True, nogil=True)
def rls_update(P: np.ndarray, r: np.ndarray, W: np.ndarray, row: int, F: np.ndarray, item: int, y: float) -> None:
    k = F.shape[1]
    pf = np.empty(k)
    denom = 1.0
    for i in range(k):
        s = 0.0
        for j in range(k):
            s += P[row, i, j] * F[item, j]
        pf[i] = s
        denom += F[item, i] * s
    inv = 1.0 / denom
    for i in range(k):
        a = pf[i] * inv
        for j in range(k):
            P[row, i, j] -= a * pf[j]
        r[row, i] += y * F[item, i]
    for i in range(k):
        s = 0.0
        for j in range(k):
            s += P[row, i, j] * r[row, j]
        W[row, i] = s


@njit(cache=True, nogil=True)
def rls_update_many(
    P: np.ndarray, r: np.ndarray, W: np.ndarray, rows: np.ndarray, F: np.ndarray, items: np.ndarray, ys: np.ndarray
) -> None:
    for t in range(rows.shape[0]):
        rls_update(P, r, W, rows[t], F, items[t], ys[t])


@njit(cache=True, nogil=True)
def logistic_sgd_update(
    W: np.ndarray, prior: np.ndarray, row: int, F: np.ndarray, item: int, y: float, rate: float, reg: np.ndarray
) -> None:
    """One SGD step on log-loss + ½ Σ reg_j (w_j - w0_j)^2: the alternative learner for the logistic link."""
    k = F.shape[1]
    z = 0.0
    for j in range(k):
        z += W[row, j] * F[item, j]
    p = _sigmoid(z)
    g = p - y
    for j in range(k):
        W[row, j] -= rate * (g * F[item, j] + reg[j] * (W[row, j] - prior[j]))


@njit(cache=True, nogil=True)
def logistic_sgd_update_many(
    W: np.ndarray,
    prior: np.ndarray,
    rows: np.ndarray,
    F: np.ndarray,
    items: np.ndarray,
    ys: np.ndarray,
    rate: float,
    reg: np.ndarray,
) -> None:
    for t in range(rows.shape[0]):
        logistic_sgd_update(W, prior, rows[t], F, items[t], ys[t], rate, reg)
