"""What the client's verbs answer: small frozen values read from the server's JSON.

Each result keeps the fields a program branches on as typed attributes and the whole answer in
`raw` (the server's JSON as it came, for printing or for fields added later). The values mirror
the in-process API's: `RetrainPolicy` and `RetrainJob` have the fields of
`veloxserve.serving.retraining`'s (a test keeps them equal), a `Recommendation` has the items,
scores and propensities of `Velox.recommend`'s. They are built here from plain JSON so the
client imports nothing of the server (numba, LMDB, FAISS stay out of a client's process).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

Id = str | int
R = TypeVar("R")


def _raw() -> Any:
    return field(default_factory=dict, repr=False, compare=False)


def _known(cls: type[R], data: Mapping[str, Any], **extra: Any) -> R:
    """`cls` from the keys of `data` that are its fields (a newer server may send more)."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in data.items() if k in names}
    return cls(**{**values, **extra, "raw": data})


@dataclass(frozen=True)
class Prediction:
    """One score: of (user, item), or of (user, text) for an item known by its text."""

    score: float
    model_version: str
    user: Id | None = None
    item: Id | None = None
    text: str | None = None
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Prediction:
        return _known(cls, data)


@dataclass(frozen=True)
class Scores:
    """A batch's scores, in the order of its queries."""

    scores: tuple[float, ...]
    model_version: str
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Scores:
        return cls(tuple(data["scores"]), data["model_version"], data)


@dataclass(frozen=True)
class RankedItem:
    item: Id
    score: float
    propensity: float | None = None  # the policy's probability of putting the item in its slot


@dataclass(frozen=True)
class Recommendation:
    """A served top-k list, best first; pass `decision` with the observations that answer it."""

    user: Id
    items: tuple[RankedItem, ...]
    model_version: str
    policy: Mapping[str, Any]
    decision: str | None
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Recommendation:
        items = tuple(RankedItem(e["item"], e["score"], e.get("propensity")) for e in data["items"])
        return cls(
            data.get("user", ""), items, data["model_version"], data.get("policy", {}), data.get("decision"), data
        )

    def pairs(self) -> list[tuple[Id, float]]:
        """(item, score) pairs, as `Velox.top_k` answers."""
        return [(e.item, e.score) for e in self.items]

    @property
    def propensities(self) -> list[float] | None:
        values = [e.propensity for e in self.items]
        return None if any(p is None for p in values) else values  # type: ignore[return-value]


@dataclass(frozen=True)
class Observed:
    """Acknowledged only once durable. `duplicates`: rows whose idempotency key was already
    logged (acknowledged with the original, not learned again); `duplicate` for one row."""

    observed: int
    lsn: int
    duplicates: int = 0
    duplicate: bool | None = None
    model_version: str | None = None
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Observed:
        return _known(cls, data)


@dataclass(frozen=True)
class Version:
    """One model version: its status (training, ready, active, retired, failed) and meta.json
    (lineage: parent, reason, data range; the figures: heldout_rmse, rows_trained, ...) in `raw`."""

    version: str
    status: str
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Version:
        return cls(data["version"], data.get("status", "ready"), data)

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)


@dataclass(frozen=True)
class Versions:
    active_version: str
    versions: tuple[Version, ...]
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Versions:
        return cls(data["active_version"], tuple(Version.from_json(v) for v in data["versions"]), data)


@dataclass(frozen=True)
class RetrainJob:
    """A retrain: state is running, promoted, ready (trained, not promoted) or failed."""

    model: str
    version: str
    parent: str
    reason: str
    promote: str
    upto_lsn: int
    started_at: str
    engine: str = "local"
    spark_master: str | None = None
    state: str = "running"
    finished_at: str | None = None
    detail: str | None = None
    seconds: float | None = None
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RetrainJob:
        return _known(cls, data)


def _job(data: Any) -> RetrainJob | None:
    return None if data is None else RetrainJob.from_json(data)


@dataclass(frozen=True)
class RetrainPolicy:
    """When a model retrains by itself (serving/retraining.py's RetrainPolicy, as the server sends it)."""

    every_observations: int | None = None
    every_seconds: float | None = None
    drift: bool = False
    drift_threshold: float = 100.0
    drift_delta: float = 0.2
    drift_min_instances: int = 30
    promote: str = "if_better"
    drift_detector: str = "page_hinkley"
    engine: str = "local"
    spark_master: str = "local[2]"
    spark_start_timeout: float = 60.0
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RetrainPolicy:
        return _known(cls, data)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "raw"}


@dataclass(frozen=True)
class ModelInfo:
    name: str
    active_version: str
    link: str
    n_items: int
    n_users: int
    dim: int
    versions: tuple[Version, ...]
    retrain: RetrainJob | None
    policy: RetrainPolicy
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelInfo:
        return _known(
            cls,
            data,
            versions=tuple(Version.from_json(v) for v in data["versions"]),
            retrain=_job(data.get("retrain")),
            policy=RetrainPolicy.from_json(data["policy"]),
        )


@dataclass(frozen=True)
class ModelMetrics:
    """The prequential error of the active version (each observation predicted, then learned),
    the feature cache's and admission control's figures."""

    model: str
    model_version: str
    prequential: Mapping[str, Any]
    feature_cache: Mapping[str, Any]
    admission: Mapping[str, Any]
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ModelMetrics:
        return _known(cls, data)


@dataclass(frozen=True)
class Health:
    status: str  # ok or degraded
    models: tuple[str, ...]
    degraded: Mapping[str, list[str]]  # per model, what to fix
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Health:
        return cls(data["status"], tuple(data["models"]), data.get("degraded", {}), data)


@dataclass(frozen=True)
class ForgetReceipt:
    """What was removed of a user, per model."""

    user: str
    models: Mapping[str, Any]
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ForgetReceipt:
        return _known(cls, data)


# ---- Clipper ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Deployment:
    """A deployed model: its serving version and replicas (batch sizes, queues) in `raw`."""

    model: str
    version: str
    framework: str
    method: str | None
    input_shape: list[int] | None
    output_shape: list[int] | None
    replicas: tuple[Mapping[str, Any], ...]
    versions: tuple[Mapping[str, Any], ...]
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Deployment:
        return _known(
            cls,
            data,
            replicas=tuple(data.get("replicas", ())),
            versions=tuple(data.get("versions", ())),
            method=data.get("method"),
            input_shape=data.get("input_shape"),
            output_shape=data.get("output_shape"),
        )


@dataclass(frozen=True)
class App:
    """A Clipper application: its models, policy and objective; the policy's state in `raw`."""

    name: str
    models: tuple[str, ...]
    policy: str
    objective_ms: float
    default: Any
    loss: str
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> App:
        return _known(cls, data, models=tuple(data["models"]))


@dataclass(frozen=True)
class AppPrediction:
    """`default` is true when no model answered within the objective (`reason` says why)."""

    app: str
    output: Any
    default: bool
    models: tuple[Mapping[str, Any], ...]
    reason: str | None = None
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AppPrediction:
        return _known(cls, data, models=tuple(data.get("models", ())))


@dataclass(frozen=True)
class AppObserved:
    app: str
    observed: int
    models: tuple[str, ...]
    losses: tuple[float, ...]
    raw: Mapping[str, Any] = _raw()

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AppObserved:
        return _known(cls, data, models=tuple(data.get("models", ())), losses=tuple(data.get("losses", ())))


def removed(data: Mapping[str, Any]) -> str:
    """The name a DELETE removed."""
    return str(data["removed"])
