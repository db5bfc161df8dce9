"""UserStates: what serving reads of users' online state, wherever it lives.

Two tables implement it: UserTable (every user in this process's memory, learning/user_table.py)
and SharedUserTable (in Redis, shared by several processes, learning/shared_table.py). Predict and
top-k read through this protocol only, so they do not know which one serves them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np


class UserStates(Protocol):
    def __len__(self) -> int:
        """Users with a state (trained or learned online)."""
        ...

    def weights(self, user: str) -> np.ndarray:
        """w_u, or the prior mean for a user never seen."""
        ...

    def weights_many(self, users: Sequence[str]) -> np.ndarray:
        """w_u of each user, one row per user."""
        ...

    def covariance(self, user: str) -> np.ndarray:
        """P_u = A_u^{-1}, proportional to the posterior covariance of w_u."""
        ...

    def seen_rows(self, user: str) -> np.ndarray:
        """The item rows a user has rated."""
        ...
