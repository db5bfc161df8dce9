"""A model version as served: a feature model, the trained users' statistics, and the prior."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np

from veloxserve.models.basis import KIND as BLACK_BOX
from veloxserve.models.basis import BasisFeatures, BlackBoxBasis
from veloxserve.models.catalog import ItemCatalog
from veloxserve.models.content import HashedTextFeatures
from veloxserve.models.features import MatrixFactorizationFeatures
from veloxserve.models.reference import TrainingReference

# The accepted |score| of versions whose meta.json predates `score_range`: generous for any rating
# or value scale in use, and far from where w_u's ridge updates lose precision or overflow.
DEFAULT_SCORE_LIMIT = 1e6


class Link(str, enum.Enum):
    """σ in score = σ(w · f(x)): identity for regression, logistic for classification."""

    IDENTITY = "identity"
    LOGISTIC = "logistic"


def sigmoid(z: Any) -> Any:
    """σ(z) = 1 / (1 + e^-z) of a float or an array, written as ½(1 + tanh(z/2)), which never
    overflows for large |z|. The one copy: serving, learning (compiled by numba in kernels.py)
    and training all call it."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


@dataclass(frozen=True)
class UserPrior:
    """Where a new user starts: the mean trained weights w0, held with diagonal precision Λ0."""

    mean: np.ndarray
    precision: np.ndarray  # diagonal of Λ0, shape (k,)

    def __post_init__(self) -> None:
        if self.precision.shape != self.mean.shape or not (self.precision > 0).all():
            raise ValueError(f"prior precision must be {self.mean.shape} and > 0, got {self.precision}")

    @classmethod
    def isotropic(cls, mean: np.ndarray, precision: float) -> UserPrior:
        return cls(mean, np.full(mean.shape, float(precision)))


@dataclass(frozen=True)
class TrainedUsers:
    """Sufficient statistics of every user in the training data, against this version's θ."""

    ids: np.ndarray  # (n,) unicode
    gram: np.ndarray  # (n, k, k) A_u = Λ0 + F_u^T F_u
    rhs: np.ndarray  # (n, k)    r_u = Λ0 w0 + F_u^T y
    weights: np.ndarray  # (n, k) w_u = A_u^{-1} r_u
    counts: np.ndarray  # (n,)
    seen_indptr: np.ndarray  # (n + 1,) CSR of item rows each user rated
    seen_items: np.ndarray

    def seen_rows(self, index: int) -> np.ndarray:
        return self.seen_items[self.seen_indptr[index] : self.seen_indptr[index + 1]]


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    link: Link
    features: MatrixFactorizationFeatures | BasisFeatures
    catalog: ItemCatalog
    prior: UserPrior
    users: TrainedUsers
    meta: dict[str, Any]
    # f of items known only by their inputs (text): the hashed-text basis, or a black-box basis
    # (models/basis.py) that whoever loads the version attaches (training/basis_files.py).
    content: HashedTextFeatures | BlackBoxBasis | None = None
    reference: TrainingReference | None = None  # a sample of the training data (models/reference.py)

    @property
    def dim(self) -> int:
        return self.features.dim

    @property
    def score_range(self) -> tuple[float, float]:
        """[lo, hi] of the scores this version accepts from observations (see `score_range_of`)."""
        return score_range_of(self.meta)

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> ModelVersion:
        """Assemble a version from the arrays and meta.json of the version-directory contract.
        A black-box version (meta kind "black_box") serves its catalogue from `item_features`,
        f(x) computed at training; its basis, for new items, is attached by the loader."""
        features: MatrixFactorizationFeatures | BasisFeatures
        if meta.get("kind") == BLACK_BOX:
            features = BasisFeatures(arrays["item_features"])
        else:
            features = MatrixFactorizationFeatures(
                np.asarray(arrays["item_factors"], dtype=np.float64),
                np.asarray(arrays["item_bias"], dtype=np.float64),
                float(meta["global_mean"]),
            )
        users = TrainedUsers(
            ids=np.asarray(arrays["user_ids"]),
            gram=np.asarray(arrays["user_gram"], dtype=np.float64),
            rhs=np.asarray(arrays["user_rhs"], dtype=np.float64),
            weights=np.asarray(arrays["user_weights"], dtype=np.float64),
            counts=np.asarray(arrays["user_counts"], dtype=np.int64),
            seen_indptr=np.asarray(arrays["seen_indptr"], dtype=np.int64),
            seen_items=np.asarray(arrays["seen_items"], dtype=np.int64),
        )
        return cls(
            name=str(meta["model"]),
            version=str(meta["version"]),
            link=Link(meta.get("link", Link.IDENTITY.value)),
            features=features,
            catalog=ItemCatalog(np.asarray(arrays["item_ids"])),
            prior=UserPrior(
                np.asarray(arrays["prior_mean"], dtype=np.float64),
                np.asarray(arrays["prior_precision"], dtype=np.float64),
            ),
            users=users,
            meta=dict(meta),
            content=None if meta.get("kind") == BLACK_BOX else HashedTextFeatures.from_version(arrays, meta),
            reference=TrainingReference.from_arrays(arrays),
        )


# The arrays of the version-directory contract that hold per-user data (one row per trained user,
# plus the CSR of the item rows each user rated): what forgetting a user rewrites.
USER_ARRAYS = ("user_ids", "user_weights", "user_gram", "user_rhs", "user_counts", "seen_indptr", "seen_items")


def without_user(arrays: dict[str, np.ndarray], user: str) -> tuple[dict[str, np.ndarray], int] | None:
    """`arrays` (the USER_ARRAYS of a version) with `user`'s trained statistics and rated items
    removed, and the number of ratings those summarised; None if the user is not in them."""
    matches = np.flatnonzero(arrays["user_ids"] == user)
    if matches.size == 0:
        return None
    index = int(matches[0])
    indptr, seen = arrays["seen_indptr"], arrays["seen_items"]
    start, stop = int(indptr[index]), int(indptr[index + 1])
    updated = {
        name: np.delete(arrays[name], index, axis=0)
        for name in ("user_ids", "user_weights", "user_gram", "user_rhs", "user_counts")
    }
    updated["seen_items"] = np.concatenate([seen[:start], seen[stop:]])
    updated["seen_indptr"] = np.concatenate([indptr[: index + 1], indptr[index + 2 :] - (stop - start)])
    return updated, int(arrays["user_counts"][index])


def score_range_of(meta: dict[str, Any]) -> tuple[float, float]:
    """[lo, hi] of the scores a version accepts: meta.json `score_range` (set at training from the
    data, or overridden). Versions trained before it was recorded accept |score| <=
    DEFAULT_SCORE_LIMIT, or [0, 1] under the logistic link."""
    if Link(meta.get("link", Link.IDENTITY.value)) is Link.LOGISTIC:
        lo, hi = meta.get("score_range", (0.0, 1.0))
        return max(0.0, float(lo)), min(1.0, float(hi))
    lo, hi = meta.get("score_range", (-DEFAULT_SCORE_LIMIT, DEFAULT_SCORE_LIMIT))
    return float(lo), float(hi)
