"""Continuous evaluation: prequential error, each observation predicted first and then learned.

The error a model makes on feedback it has not yet learned from is an honest estimate of its live
error (no held-out set needed) and the signal a drift detector watches. Squared and absolute
errors go into one ring buffer, so every sliding window is a slice sum, not a loop.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

WINDOWS = (100, 1_000, 10_000)


class PrequentialError:
    """Running and sliding-window RMSE / MAE of predictions made before learning."""

    def __init__(self, windows: tuple[int, ...] = WINDOWS) -> None:
        self.windows = windows
        self._capacity = max(windows)
        self._squared = np.zeros(self._capacity)
        self._absolute = np.zeros(self._capacity)
        self._count = 0
        self._sum_squared = 0.0
        self._sum_absolute = 0.0
        self._lock = threading.Lock()

    def update(self, error: np.ndarray) -> None:
        """Record the errors (observed − predicted before learning) of a batch."""
        squared, absolute = error * error, np.abs(error)
        n = error.size
        with self._lock:
            if n >= self._capacity:
                squared, absolute = squared[-self._capacity :], absolute[-self._capacity :]
            positions = (self._count + np.arange(n - squared.size, n)) % self._capacity
            self._squared[positions] = squared
            self._absolute[positions] = absolute
            self._count += n
            self._sum_squared += float(error @ error)
            self._sum_absolute += float(np.abs(error).sum())

    @property
    def count(self) -> int:
        return self._count

    def report(self) -> dict[str, Any]:
        with self._lock:
            count = self._count
            out: dict[str, Any] = {
                "observations": count,
                "rmse": float(np.sqrt(self._sum_squared / count)) if count else None,
                "mae": self._sum_absolute / count if count else None,
                "windows": {},
            }
            for window in self.windows:
                n = min(window, count)
                if n == 0:
                    out["windows"][str(window)] = {"observations": 0, "rmse": None, "mae": None}
                    continue
                last = (count - 1 - np.arange(n)) % self._capacity
                out["windows"][str(window)] = {
                    "observations": n,
                    "rmse": float(np.sqrt(self._squared[last].mean())),
                    "mae": float(self._absolute[last].mean()),
                }
        return out
