"""The web pages' handlers: the dashboard, the API documentation page, their assets, and /stats.

`/stats` is the one JSON document the dashboard polls. It computes nothing of its own: it is the
other routes' answers in one snapshot (each model's /models/{name} and /models/{name}/metrics,
/containers and /apps, through the same handlers), plus what only the Prometheus registry holds —
requests by route and status and the latency histogram — read from the registry (metrics.py)
rather than counted twice. Rates and windowed quantiles are differences of two snapshots, so the
page computes them from successive polls (`histogram_quantile` here, its twin in dashboard.js,
is Prometheus's interpolation within the bucket that holds the rank).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, Protocol

from veloxserve.api.handlers import VeloxHandlers
from veloxserve.api.metrics import Metrics
from veloxserve.api.static import Asset, asset, page

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
SHED = "503"  # the status of a request refused by admission control (or an unavailable store / container)


class ClipperViews(Protocol):
    """What /stats reads of Clipper (api/clipper_routes.py's handlers)."""

    async def list_containers(self) -> dict[str, Any]: ...

    async def list_apps(self) -> dict[str, Any]: ...


def histogram_quantile(bounds: Sequence[float], cumulative: Sequence[float], q: float) -> float | None:
    """The q-quantile of a histogram with upper bounds `bounds` (the last one +inf) and cumulative
    counts `cumulative`, interpolated linearly inside the bucket holding rank q·n (Prometheus's
    histogram_quantile). None for an empty histogram; the largest finite bound if the rank falls
    in the +inf bucket."""
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in zip(bounds, cumulative):
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def request_figures(metrics: Metrics) -> dict[str, dict[str, Any]]:
    """Per route label: requests by status, the shed (503) count, the latency histogram (bounds
    in ms, cumulative counts) and its quantiles since the server started."""
    routes: dict[str, dict[str, Any]] = {}
    families = list(metrics.request_families())
    for family in families:
        for sample in family.samples:
            if family.name == "veloxserve_requests" and sample.name.endswith("_total"):
                route = routes.setdefault(sample.labels["route"], _empty())
                route["statuses"][sample.labels["status"]] = int(sample.value)
    for family in families:
        if family.name != "veloxserve_request_seconds":
            continue
        for sample in family.samples:
            route = routes.setdefault(sample.labels["route"], _empty())
            if sample.name.endswith("_bucket"):
                bound = float(sample.labels["le"])
                route["buckets"]["le_ms"].append(bound * 1000 if math.isfinite(bound) else None)
                route["buckets"]["counts"].append(int(sample.value))
            elif sample.name.endswith("_sum"):
                route["seconds"] = sample.value
    for route in routes.values():
        statuses = route["statuses"]
        route["requests"] = sum(statuses.values())
        route["shed"] = statuses.get(SHED, 0)
        route["errors"] = sum(n for status, n in statuses.items() if int(status) >= 400)
        bounds = [math.inf if b is None else b for b in route["buckets"]["le_ms"]]
        counts = route["buckets"]["counts"]
        route["latency_ms"] = {name: histogram_quantile(bounds, counts, q) for name, q in QUANTILES.items()}
    return routes


def _empty() -> dict[str, Any]:
    return {"statuses": {}, "buckets": {"le_ms": [], "counts": []}, "seconds": 0.0}


class PageHandlers:
    """The handlers of /dashboard, /docs, /assets/{asset} and /stats (routes.py names them)."""

    def __init__(self, handlers: VeloxHandlers, clipper: ClipperViews, metrics: Metrics) -> None:
        self.handlers, self.clipper, self.metrics = handlers, clipper, metrics
        self.started = time.time()

    async def dashboard(self) -> Asset:
        return page("dashboard")

    async def docs(self) -> Asset:
        return page("docs")

    async def asset(self, name: str) -> Asset:
        return asset(name)

    async def stats(self) -> dict[str, Any]:
        velox = self.handlers.velox
        models = []
        for name in velox.model_names():
            models.append(
                {
                    **await self.handlers.show_model(name),
                    "metrics": await self.handlers.model_metrics(name),
                    "drift_alarms": velox.retrainer.drift_alarms(name),
                }
            )
        return {
            "time": time.time(),
            "started": self.started,
            "health": await self.handlers.healthz(),
            "requests": request_figures(self.metrics),
            "models": models,
            "containers": (await self.clipper.list_containers())["models"],
            "apps": (await self.clipper.list_apps())["apps"],
        }
