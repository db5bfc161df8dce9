"""What a stage costs: its measured service time per batch size on one replica of one resource kind.

The profiler (serving side) measures; everything here only reads. Service time between measured batch
sizes is interpolated linearly, below the smallest it is the smallest's, above the largest it is
extrapolated along the last measured slope (a batch of twice the size costs at most twice as much and
at least as much). Throughput of one replica at batch size b is b / service_time(b).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from veloxserve.errors import invalid_parameter

QUANTILES = ("mean", "p50", "p99")


def _number(value: Any, field: str, where: str, *, positive: bool = True) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0) or (not positive and value < 0):
        raise invalid_parameter(field, where, "a finite number > 0" if positive else "a finite number >= 0", value)
    return float(value)


def _batch_size(value: Any, field: str, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid_parameter(field, where, "an int >= 1", value)
    return value


@dataclass(frozen=True)
class BatchTiming:
    """One measured batch size: the service time of a whole batch on one replica, in seconds."""

    batch_size: int
    p50_s: float
    p99_s: float
    mean_s: float

    def __post_init__(self) -> None:
        where = "a batch timing"
        _batch_size(self.batch_size, "batch_size", where)
        for name in ("p50_s", "p99_s", "mean_s"):
            object.__setattr__(self, name, _number(getattr(self, name), name, where))
        if self.p99_s < self.p50_s:
            raise invalid_parameter("p99_s", where, f"at least p50_s ({self.p50_s})", self.p99_s)

    def to_json(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "p50_s": self.p50_s, "p99_s": self.p99_s, "mean_s": self.mean_s}

    @classmethod
    def from_json(cls, data: Any) -> BatchTiming:
        if not isinstance(data, Mapping):
            raise invalid_parameter("timings", "a stage profile", "a list of objects", data)
        fields = ("batch_size", "p50_s", "p99_s", "mean_s")
        for name in fields:
            if name not in data:
                raise invalid_parameter(name, "a batch timing", "present", None)
        return cls(**{name: data[name] for name in fields})


@dataclass(frozen=True)
class StageProfile:
    """A stage's measured service times on one resource kind ("threads=1"), and that kind's price per
    replica-second. `timings` are sorted by batch size, one per size."""

    stage: str
    kind: str
    price_per_replica_s: float
    timings: tuple[BatchTiming, ...]

    def __post_init__(self) -> None:
        where = "a stage profile"
        for name in ("stage", "kind"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise invalid_parameter(name, where, "a non-empty string", value)
        object.__setattr__(self, "price_per_replica_s", _number(self.price_per_replica_s, "price_per_replica_s", where))
        timings = tuple(self.timings)
        if not timings or not all(isinstance(t, BatchTiming) for t in timings):
            raise invalid_parameter("timings", f"the profile of stage {self.stage!r}", "at least one timing", timings)
        timings = tuple(sorted(timings, key=lambda t: t.batch_size))
        sizes = [t.batch_size for t in timings]
        if len(set(sizes)) != len(sizes):
            raise invalid_parameter(
                "timings", f"the profile of stage {self.stage!r}", "one timing per batch size", sizes
            )
        object.__setattr__(self, "timings", timings)

    @property
    def batch_sizes(self) -> tuple[int, ...]:
        return tuple(t.batch_size for t in self.timings)

    @property
    def max_batch_size(self) -> int:
        return self.timings[-1].batch_size

    def service_time(self, batch_size: int, quantile: str = "mean") -> float:
        """Seconds one replica takes for a batch of `batch_size` (quantile "mean", "p50" or "p99")."""
        if quantile not in QUANTILES:
            raise invalid_parameter("quantile", "service_time", " or ".join(map(repr, QUANTILES)), quantile)
        _batch_size(batch_size, "batch_size", "service_time")
        attr = "mean_s" if quantile == "mean" else f"{quantile}_s"
        sizes = self.batch_sizes
        values = [getattr(t, attr) for t in self.timings]
        if batch_size <= sizes[0]:
            return float(values[0])
        if batch_size >= sizes[-1]:
            if len(sizes) == 1:
                return float(values[0] * batch_size / sizes[0])  # linear from the origin
            slope = max(0.0, (values[-1] - values[-2]) / (sizes[-1] - sizes[-2]))
            return float(values[-1] + slope * (batch_size - sizes[-1]))
        hi = next(i for i, s in enumerate(sizes) if s >= batch_size)
        if sizes[hi] == batch_size:
            return float(values[hi])
        lo = hi - 1
        frac = (batch_size - sizes[lo]) / (sizes[hi] - sizes[lo])
        return float(values[lo] + frac * (values[hi] - values[lo]))

    def throughput(self, batch_size: int) -> float:
        """Queries per second one replica sustains at `batch_size` (batches always full)."""
        return batch_size / self.service_time(batch_size, "mean")

    def to_json(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "kind": self.kind,
            "price_per_replica_s": self.price_per_replica_s,
            "timings": [t.to_json() for t in self.timings],
        }

    @classmethod
    def from_json(cls, data: Any) -> StageProfile:
        if not isinstance(data, Mapping):
            raise invalid_parameter("profile", "a stage profile", "an object", data)
        for name in ("stage", "kind", "price_per_replica_s", "timings"):
            if name not in data:
                raise invalid_parameter(name, "a stage profile", "present", None)
        timings = data["timings"]
        if not isinstance(timings, Sequence) or isinstance(timings, (str, bytes)):
            raise invalid_parameter("timings", "a stage profile", "a list of objects", timings)
        return cls(
            stage=data["stage"],
            kind=data["kind"],
            price_per_replica_s=data["price_per_replica_s"],
            timings=tuple(BatchTiming.from_json(t) for t in timings),
        )


ProfileSet = Mapping[str, "StageProfile | Sequence[StageProfile]"]


def by_stage_and_kind(profiles: ProfileSet) -> dict[str, dict[str, StageProfile]]:
    """{stage: {kind: profile}} from {stage: profile} or {stage: [profile per kind, ...]}."""
    out: dict[str, dict[str, StageProfile]] = {}
    for stage, value in profiles.items():
        items = [value] if isinstance(value, StageProfile) else list(value)
        if not items:
            raise invalid_parameter("profiles", "a pipeline", f"at least one profile for stage {stage!r}", items)
        kinds: dict[str, StageProfile] = {}
        for p in items:
            if not isinstance(p, StageProfile) or p.stage != stage:
                raise invalid_parameter("profiles", "a pipeline", f"profiles of stage {stage!r}", p)
            if p.kind in kinds:
                raise invalid_parameter("profiles", "a pipeline", f"one profile per kind of stage {stage!r}", p.kind)
            kinds[p.kind] = p
        out[stage] = kinds
    return out
