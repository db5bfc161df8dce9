"""Drift detection on the prequential error: the Page–Hinkley test for an increase in the mean.

The detector watches each observation's squared error (predicted before learned). Page–Hinkley
accumulates how far each value sits above the running mean, minus a tolerance δ, with fading
factor α; when that cumulative sum rises more than λ (`threshold`) above its minimum, the error's
mean has shifted up: the user weights can no longer absorb the change and θ needs retraining.
Semantics match river's `drift.PageHinkley(mode="up")` (tests/serving/test_drift.py checks it
value by value); the update is compiled so a batch of observations costs no Python loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np
from numba import njit

# state vector: [n, mean, sum_increase, min_increase]
_N, _MEAN, _SUM, _MIN = range(4)


@njit(cache=True, nogil=True)
def _page_hinkley(
    state: np.ndarray, xs: np.ndarray, delta: float, alpha: float, threshold: float, min_instances: int
) -> int:
    """Feed xs in order; returns the index at which drift is detected (state then reset), or -1."""
    for t in range(xs.shape[0]):
        x = xs[t]
        state[_N] += 1.0
        state[_MEAN] += (x - state[_MEAN]) / state[_N]
        state[_SUM] = alpha * state[_SUM] + (x - state[_MEAN]) - delta
        if state[_SUM] < state[_MIN]:
            state[_MIN] = state[_SUM]
        if state[_N] >= min_instances and state[_SUM] - state[_MIN] > threshold:
            state[_N] = 0.0
            state[_MEAN] = 0.0
            state[_SUM] = 0.0
            state[_MIN] = np.inf
            return t
    return -1


@dataclass(frozen=True)
class PageHinkleyConfig:
    delta: float = 0.005
    threshold: float = 50.0
    alpha: float = 1 - 0.0001
    min_instances: int = 30

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.delta < 0 or not 0 < self.alpha <= 1 or self.min_instances < 1:
            raise ValueError(
                f"Page-Hinkley needs threshold > 0, delta >= 0, 0 < alpha <= 1, min_instances >= 1; got {self}"
            )


class PageHinkley:
    """Page–Hinkley change detector for an upward shift in a stream's mean."""

    def __init__(self, config: PageHinkleyConfig | None = None) -> None:
        self.config = config or PageHinkleyConfig()
        self._state = np.array([0.0, 0.0, 0.0, np.inf])
        self._lock = threading.Lock()
        self.detections = 0

    def update(self, values: np.ndarray) -> np.ndarray:
        """Feed a batch; returns the indices of the values at which drift was detected (empty if
        none). After a detection the detector starts afresh with the values after it, as river does."""
        c = self.config
        xs = np.ascontiguousarray(values, dtype=np.float64)
        hits: list[int] = []
        with self._lock:
            offset = 0
            while offset < xs.size:
                hit = _page_hinkley(self._state, xs[offset:], c.delta, c.alpha, c.threshold, c.min_instances)
                if hit < 0:
                    break
                hits.append(offset + hit)
                offset += hit + 1
            self.detections += len(hits)
        return np.asarray(hits, dtype=np.int64)
