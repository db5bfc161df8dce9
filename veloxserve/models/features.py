"""Feature models f(x; θ): shared by all users, trained offline, versioned.

The matrix-factorisation feature model maps an item id to f(x) = [v_x, μ + b_x, 1]. Putting the
item baseline μ + b_x and a constant into the basis means the per-user weights [u, c, d] carry
taste, trust in the baseline, and the user's bias — and that a user with no data (the prior)
still ranks items sensibly by popularity-adjusted quality.
"""

from __future__ import annotations

import numpy as np


class MatrixFactorizationFeatures:
    """f(x; θ) for every catalogue item, materialised once per version as a C-contiguous matrix."""

    kind = "matrix_factorization"

    def __init__(self, item_factors: np.ndarray, item_bias: np.ndarray, global_mean: float) -> None:
        n_items, rank = item_factors.shape
        if item_bias.shape != (n_items,):
            raise ValueError(f"item_bias must have shape ({n_items},), got {item_bias.shape}")
        self.rank = rank
        self.dim = rank + 2
        self.global_mean = float(global_mean)
        matrix = np.empty((n_items, self.dim), dtype=np.float64)
        matrix[:, :rank] = item_factors
        matrix[:, rank] = global_mean + item_bias
        matrix[:, rank + 1] = 1.0
        matrix.setflags(write=False)
        self.matrix = matrix

    def __len__(self) -> int:
        return self.matrix.shape[0]

    def of_rows(self, rows: np.ndarray) -> np.ndarray:
        """f(x) for the given catalogue rows, shape (len(rows), dim)."""
        return self.matrix[rows]
