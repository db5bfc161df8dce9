"""Every user's online state for one model version, in contiguous arrays.

Row u holds P_u = A_u^{-1} (k×k), r_u, w_u, the observation count and the item rows the user has
rated. Contiguous arrays let the compiled kernels update a user in place and let batch predict
gather many users' weights with one fancy index. Users are added by doubling the arrays, so an
insert is amortised O(1).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

import numpy as np

from veloxserve.learning.kernels import (
    logistic_sgd_update,
    logistic_sgd_update_many,
    rls_update,
    rls_update_many,
)
from veloxserve.models.version import Link, TrainedUsers, UserPrior

_STATE_HEADER = struct.Struct("<4sqqq")  # magic, k, count, number of seen items
_MAGIC = b"VUS1"


def state_covariance(state: bytes, dim: int) -> np.ndarray:
    """P of a state written by `UserTable.encode`, without building a table (read-only view)."""
    return np.frombuffer(state, dtype=np.float64, offset=_STATE_HEADER.size, count=dim * dim).reshape(dim, dim)


def state_seen(state: bytes, dim: int) -> np.ndarray:
    """The seen item rows of a state written by `UserTable.encode`."""
    return np.frombuffer(state, dtype=np.int64, offset=_STATE_HEADER.size + 8 * (dim * dim + 2 * dim))


class UserTable:
    """Online ridge (or logistic SGD) state of all users of one model version."""

    def __init__(
        self,
        dim: int,
        prior: UserPrior,
        link: Link = Link.IDENTITY,
        *,
        learning_rate: float = 0.05,
        capacity: int = 1024,
    ) -> None:
        if prior.mean.shape != (dim,):
            raise ValueError(f"prior mean must have shape ({dim},), got {prior.mean.shape}")
        self.dim = dim
        self.prior = prior
        self.link = link
        self.learning_rate = learning_rate
        self._prior_P = np.diag(1.0 / prior.precision)
        self._prior_r = prior.precision * prior.mean
        # SGD (logistic link): the prior's precision spread over a typical user's history, a pull
        # towards w0 that does not swamp the data after a few dozen observations.
        self._sgd_reg = prior.precision / 100.0
        self.rows: dict[str, int] = {}
        self.ids: list[str] = []
        self.seen: list[set[int]] = []
        self.dirty: set[int] = set()
        capacity = max(capacity, 16)
        self.P = np.empty((capacity, dim, dim))
        self.r = np.empty((capacity, dim))
        self.W = np.empty((capacity, dim))
        self.counts = np.zeros(capacity, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    # ---- reading -------------------------------------------------------------------------
    def weights(self, user: str) -> np.ndarray:
        """w_u, or the prior mean for a user never seen (cold start)."""
        row = self.rows.get(user)
        return self.prior.mean if row is None else self.W[row]

    def weights_many(self, users: Iterable[str]) -> np.ndarray:
        rows = self.rows
        index = np.fromiter((rows.get(u, -1) for u in users), dtype=np.int64)
        out = self.W[np.maximum(index, 0)]
        out[index < 0] = self.prior.mean
        return out

    def covariance(self, user: str) -> np.ndarray:
        """P_u = A_u^{-1}, proportional to the posterior covariance of w_u."""
        row = self.rows.get(user)
        return self._prior_P if row is None else self.P[row]

    def seen_rows(self, user: str) -> np.ndarray:
        """The item rows a user has rated (empty for a user never seen)."""
        row = self.rows.get(user)
        if row is None:
            return np.empty(0, dtype=np.int64)
        seen = self.seen[row]
        return np.fromiter(seen, dtype=np.int64, count=len(seen))

    # ---- writing -------------------------------------------------------------------------
    def ensure(self, user: str) -> int:
        """The row of a user, allocating one at the prior if the user is new."""
        row = self.rows.get(user)
        if row is not None:
            return row
        row = len(self.ids)
        if row == self.W.shape[0]:
            self._grow(2 * row)
        self.P[row] = self._prior_P
        self.r[row] = self._prior_r
        self.W[row] = self.prior.mean
        self.counts[row] = 0
        self.rows[user] = row
        self.ids.append(user)
        self.seen.append(set())
        return row

    def observe(self, row: int, features: np.ndarray, item: int, y: float) -> None:
        """Learn one observation: exact ridge update (identity link) or an SGD step (logistic)."""
        if self.link is Link.IDENTITY:
            rls_update(self.P, self.r, self.W, row, features, item, y)
        else:
            logistic_sgd_update(self.W, self.prior.mean, row, features, item, y, self.learning_rate, self._sgd_reg)
        self.counts[row] += 1
        self.seen[row].add(item)
        self.dirty.add(row)

    def observe_many(self, rows: np.ndarray, features: np.ndarray, items: np.ndarray, ys: np.ndarray) -> None:
        """Learn a batch in order, in one compiled loop."""
        if self.link is Link.IDENTITY:
            rls_update_many(self.P, self.r, self.W, rows, features, items, ys)
        else:
            logistic_sgd_update_many(
                self.W, self.prior.mean, rows, features, items, ys, self.learning_rate, self._sgd_reg
            )
        np.add.at(self.counts, rows, 1)
        seen = self.seen
        for row, item in zip(rows.tolist(), items.tolist()):
            seen[row].add(item)
        self.dirty.update(rows.tolist())

    def load_trained(self, users: TrainedUsers) -> None:
        """Bulk-load the statistics a training run computed (P = A^{-1} by one batched inverse)."""
        n = len(users.ids)
        if n == 0:
            return
        start = len(self.ids)
        if start + n > self.W.shape[0]:
            self._grow(max(2 * self.W.shape[0], start + n))
        stop = start + n
        self.P[start:stop] = np.linalg.inv(users.gram)
        self.r[start:stop] = users.rhs
        self.W[start:stop] = users.weights
        self.counts[start:stop] = users.counts
        for offset, user in enumerate(users.ids.tolist()):
            user = str(user)
            if user in self.rows:
                raise ValueError(f"user {user!r} appears twice in the trained users")
            self.rows[user] = start + offset
            self.ids.append(user)
            self.seen.append(set(users.seen_rows(offset).tolist()))

    def remove(self, user: str) -> bool:
        """Forget a user: the row is reset to the prior and unlinked (rows are never reused)."""
        row = self.rows.pop(user, None)
        if row is None:
            return False
        self.P[row] = self._prior_P
        self.r[row] = self._prior_r
        self.W[row] = self.prior.mean
        self.counts[row] = 0
        self.seen[row] = set()
        self.dirty.discard(row)
        return True

    def _grow(self, capacity: int) -> None:
        for name in ("P", "r", "W", "counts"):
            old = getattr(self, name)
            new = np.zeros((capacity, *old.shape[1:]), dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, name, new)

    # ---- persistence (bytes in, bytes out: stores never see arrays of a model) -----------
    def encode(self, row: int) -> bytes:
        seen = np.fromiter(self.seen[row], dtype=np.int64, count=len(self.seen[row]))
        header = _STATE_HEADER.pack(_MAGIC, self.dim, int(self.counts[row]), seen.size)
        return b"".join((header, self.P[row].tobytes(), self.r[row].tobytes(), self.W[row].tobytes(), seen.tobytes()))

    def restore(self, user: str, state: bytes) -> None:
        """Overwrite (or create) a user's row from bytes written by `encode`."""
        magic, dim, count, n_seen = _STATE_HEADER.unpack_from(state)
        if magic != _MAGIC or dim != self.dim:
            raise ValueError(f"user state of {user!r} has dimension {dim}, expected {self.dim}")
        body = np.frombuffer(state, dtype=np.float64, offset=_STATE_HEADER.size, count=dim * dim + 2 * dim)
        row = self.ensure(user)
        self.P[row] = body[: dim * dim].reshape(dim, dim)
        self.r[row] = body[dim * dim : dim * dim + dim]
        self.W[row] = body[dim * dim + dim :]
        self.counts[row] = count
        seen_offset = _STATE_HEADER.size + body.nbytes
        self.seen[row] = set(np.frombuffer(state, dtype=np.int64, offset=seen_offset, count=n_seen).tolist())

    def take_dirty(self) -> dict[str, bytes]:
        """Encode and clear the users changed since the last call (for a checkpoint)."""
        ids = self.ids
        states = {ids[row]: self.encode(row) for row in self.dirty}
        self.dirty = set()
        return states

    def encode_all(self) -> dict[str, bytes]:
        self.dirty = set()
        return {user: self.encode(row) for user, row in self.rows.items()}
