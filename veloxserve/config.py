"""Configuration value objects: read once by the entry point, passed down by constructors."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veloxserve.errors import invalid_parameter

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
NAME_RULE = "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"


def _help(text: str) -> dict[str, str]:
    """A setting's documentation, kept with its field: `veloxserve serve --config` files are
    checked against the fields, and the configuration reference is generated from them."""
    return {"help": text}


def is_name(name: object) -> bool:
    """Whether `name` may name a model or a server instance in a home (it becomes a directory)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def check_model_name(name: Any, where: str = "train") -> str:
    if not is_name(name):
        raise invalid_parameter("model", where, NAME_RULE, name)
    return str(name)


FAMILIES = ("cosine", "euclidean", "grid")


@dataclass(frozen=True)
class ApproximateSettings:
    """How an approximate cache (veloxserve/approximate_cache.py) groups near-identical inputs.

    `family`: "cosine" (random hyperplanes: `bits` sign bits per table, P[collide] = (1 - θ/π)^bits),
    "euclidean" (p-stable: `bits` Gaussian projections per table floored to buckets of `width`) or
    "grid" (every coordinate floored to cells of `width`, one table). More tables raise the hit
    rate (a hit in any table), more bits or a smaller width lower it and the accuracy loss; `radius`
    (radians for cosine, distance otherwise) refuses a hit farther than that from the cached input.
    docs/approximate-caching.md measures the trade-off."""

    family: str = "cosine"
    tables: int = 1
    bits: int = 16
    width: float = 1.0
    radius: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        where = "approximate caching"
        if self.family not in FAMILIES:
            raise invalid_parameter("approximate.family", where, " or ".join(map(repr, FAMILIES)), self.family)
        if not isinstance(self.tables, int) or isinstance(self.tables, bool) or not 1 <= self.tables <= 64:
            raise invalid_parameter("approximate.tables", where, "an integer in [1, 64]", self.tables)
        if not isinstance(self.bits, int) or isinstance(self.bits, bool) or not 1 <= self.bits <= 64:
            raise invalid_parameter("approximate.bits", where, "an integer in [1, 64]", self.bits)
        if not _positive(self.width):
            raise invalid_parameter("approximate.width", where, "a finite number > 0", self.width)
        if self.radius is not None and not (_positive(self.radius) or self.radius == 0):
            raise invalid_parameter("approximate.radius", where, "a finite number >= 0, or null", self.radius)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise invalid_parameter("approximate.seed", where, "an integer >= 0", self.seed)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, data: Any) -> ApproximateSettings:
        """Settings from a JSON object (a deploy option, a version's meta.json); unknown keys are refused."""
        if isinstance(data, ApproximateSettings):
            return data
        if not isinstance(data, dict):
            raise invalid_parameter("approximate", "approximate caching", "an object of LSH settings", data)
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise invalid_parameter(
                f"approximate.{unknown[0]}", "approximate caching", f"one of {sorted(cls.__dataclass_fields__)}", data
            )
        return cls(**data)


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass(frozen=True)
class MonitoringConfig:
    """When a served model's monitoring raises an alert (serving/monitoring.py, docs/monitoring.md).

    Deviations compare the most recent `window` requests with the reference the trainer stored in
    the version; they are judged once `min_requests` arrived (fewer say nothing reliable). An alert
    that fired is not raised again within `suppress_seconds` (alerts that fire too often are ignored)."""

    window: int = field(default=10_000, metadata=_help("recent requests the shares are computed over (ring buffers)"))
    sample: int = field(
        default=2_000, metadata=_help("recent served scores and item rows kept for the distribution tests")
    )
    min_requests: int = field(default=200, metadata=_help("requests in the window before a deviation is judged"))
    unknown_items_share: float = field(
        default=0.2, metadata=_help("alert above this share of requested items not in the catalogue")
    )
    new_users_share: float = field(
        default=0.5, metadata=_help("alert above this share of requests by users the version was not trained on")
    )
    score_psi: float = field(
        default=0.25, metadata=_help("alert above this population stability index of served scores")
    )
    feature_ks_p: float = field(
        default=0.01, metadata=_help("alert below this Bonferroni-adjusted KS p-value on a feature dimension")
    )
    suppress_seconds: float = field(default=3_600.0, metadata=_help("an alert raised is not raised again within this"))
    drift_detectors: tuple[str, ...] = field(
        default=("adwin", "ddm", "kswin", "page_hinkley"),
        metadata=_help("drift detectors run on the prequential error: adwin, ddm, kswin, page_hinkley"),
    )
    drift_miss: float = field(
        default=1.0, metadata=_help("DDM counts |error| > this as a miss (0.5 with a logistic link: a wrong side)")
    )
    drift_quiet: int = field(
        default=1_000, metadata=_help("a drift alert resolves after this many observations without a detection")
    )

    def __post_init__(self) -> None:
        if self.window < 1 or self.sample < 10 or self.min_requests < 1 or self.drift_quiet < 1:
            raise ValueError(
                f"monitoring needs window >= 1, sample >= 10, min_requests >= 1, drift_quiet >= 1; got "
                f"{self.window}, {self.sample}, {self.min_requests}, {self.drift_quiet}"
            )
        for name in ("unknown_items_share", "new_users_share", "feature_ks_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"monitoring {name} must be in [0, 1], got {getattr(self, name)}")
        if self.score_psi < 0 or self.suppress_seconds < 0 or self.drift_miss <= 0:
            raise ValueError(
                "monitoring score_psi and suppress_seconds must be >= 0 and drift_miss > 0, got "
                f"{self.score_psi}, {self.suppress_seconds}, {self.drift_miss}"
            )


@dataclass(frozen=True)
class ServingConfig:
    """How a served model learns, persists and bounds its requests (`[serving]` of a config file)."""

    max_batch: int = field(default=10_000, metadata=_help("most queries or observations in one request"))
    checkpoint_every: int = field(
        default=50_000, metadata=_help("observations between checkpoints of users' state to the user store")
    )
    checkpoint_seconds: float = field(default=30.0, metadata=_help("seconds between checkpoints at the latest"))
    fsync: bool = field(
        default=True, metadata=_help("fsync the observation log before acknowledging (false: tests and benchmarks)")
    )
    commit_delay: float = field(
        default=0.001, metadata=_help("seconds the log lingers so concurrent appends share one fsync")
    )
    learning_rate: float = field(default=0.05, metadata=_help("step size of the logistic link's online SGD"))
    index_min_items: int = field(
        default=100_000, metadata=_help("catalogues at least this large get a MIPS index (FAISS HNSW) for top-k")
    )
    index_ef_search: int = field(
        default=200, metadata=_help("HNSW search breadth: recall@100 >= 0.99 in bench/bench_topk.py")
    )
    feature_cache_bytes: int = field(
        default=64 << 20, metadata=_help("bytes of content features cached, shared by every model; 0 turns it off")
    )
    idempotency_seconds: float = field(
        default=86_400.0, metadata=_help("how long an observation's `id` makes its retries duplicates")
    )
    idempotency_keys: int = field(
        default=1_000_000, metadata=_help("and at most this many ids per model (the newest); 0 turns it off")
    )
    decision_memory: int = field(
        default=100_000, metadata=_help("recent top-k lists per model that observe checks `decision` against")
    )
    approximate_features: ApproximateSettings | None = field(
        default=None,
        metadata=_help(
            "feature coarsening of content inputs: a table of LSH settings (docs/approximate-caching.md); omitted: exact"
        ),
    )
    feature_deadline_ms: float | None = field(
        default=None, metadata=_help("content features later than this are E[f(x)] instead (anytime); omitted: wait")
    )
    heartbeat_seconds: float = field(
        default=0.5,
        metadata=_help(
            "with several servers over Redis: seconds between heartbeats; one missing 3 in a row is no longer waited for"
        ),
    )
    lifecycle_timeout: float = field(
        default=30.0,
        metadata=_help("seconds a version switch, forget or promotion waits for every live server to apply it (504)"),
    )
    lease_seconds: float = field(
        default=30.0, metadata=_help("the training lease's expiry, renewed every third of it while a retrain runs")
    )
    monitoring: MonitoringConfig = field(
        default_factory=MonitoringConfig,
        metadata=_help("deviations, drift detectors and alerts: a table of MonitoringConfig (docs/monitoring.md)"),
    )

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if self.feature_cache_bytes < 0:
            raise ValueError(f"feature_cache_bytes must be >= 0, got {self.feature_cache_bytes}")
        if self.idempotency_seconds < 0 or self.idempotency_keys < 0 or self.decision_memory < 0:
            raise ValueError(
                "idempotency_seconds, idempotency_keys and decision_memory must be >= 0, got "
                f"{self.idempotency_seconds}, {self.idempotency_keys}, {self.decision_memory}"
            )
        if self.feature_deadline_ms is not None and not _positive(self.feature_deadline_ms):
            raise ValueError(f"feature_deadline_ms must be a number > 0 or None, got {self.feature_deadline_ms}")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        for name in ("heartbeat_seconds", "lifecycle_timeout", "lease_seconds"):
            if not _positive(getattr(self, name)):
                raise ValueError(f"{name} must be a number > 0, got {getattr(self, name)!r}")
        if self.lease_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"lease_seconds must be > heartbeat_seconds, got {self.lease_seconds} <= {self.heartbeat_seconds}"
            )


@dataclass(frozen=True)
class HomeLayout:
    """Where everything lives under one home directory."""

    root: Path

    @property
    def state_db(self) -> Path:
        return self.root / "state.lmdb"

    @property
    def tokens_file(self) -> Path:
        """API tokens, hashed (`veloxserve token create`)."""
        return self.root / "auth" / "tokens.json"

    def model_dir(self, name: str) -> Path:
        return self.root / "models" / name

    def versions_dir(self, name: str) -> Path:
        return self.model_dir(name) / "versions"

    def log_dir(self, name: str) -> Path:
        return self.model_dir(name) / "log"

    def lock_file(self, instance: str | None) -> Path:
        """The home's lock: one process per home, or per instance when several share it over Redis."""
        return self.root / (".lock" if instance is None else f".lock-{instance}")

    def decision_log_dir(self, name: str, instance: str | None) -> Path:
        """The served lists one server process logs (storage/decision_log.py)."""
        directory = self.model_dir(name) / "decisions"
        return directory if instance is None else directory / "instances" / instance

    def instance_log_dir(self, name: str, instance: str | None) -> Path:
        """The log one server process writes: the model's log, or its own beside it when several
        processes share the home (`serve --instance ID`; storage.observation_log.instance_logs)."""
        return self.log_dir(name) if instance is None else self.log_dir(name) / "instances" / instance

    def active_file(self, name: str) -> Path:
        return self.model_dir(name) / "ACTIVE"

    def base_data(self, name: str) -> Path:
        """The ratings the model was last trained on from a file; retraining adds the log to them."""
        return self.model_dir(name) / "data" / "base.parquet"

    def items_file(self, name: str) -> Path:
        """Item attributes for top-k filters."""
        return self.model_dir(name) / "items.parquet"

    def policy_file(self, name: str) -> Path:
        return self.model_dir(name) / "policy.json"

    def model_names(self) -> list[str]:
        models = self.root / "models"
        if not models.is_dir():
            return []
        return sorted(p.name for p in models.iterdir() if (p / "versions").is_dir())
