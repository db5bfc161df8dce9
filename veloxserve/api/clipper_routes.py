"""The handlers of Clipper's model containers and applications (their routes are in routes.py).

The runtime lives on the server's event loop and starts there on the first request (or at
lifespan startup), restoring what the home's registry says is deployed. The app factory builds it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import msgspec
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from veloxserve.api import requests as rq
from veloxserve.clipper.runtime import ClipperRuntime

DEFAULT_USER = "anonymous"


def _fields(body: msgspec.Struct) -> dict[str, Any]:
    """The fields a request set (absent ones keep the runtime's defaults)."""
    return {f: v for f in body.__struct_fields__ if (v := getattr(body, f)) is not msgspec.UNSET}


class ClipperRoutes:
    """The handlers of the /containers and /apps routes (routes.py), over a ClipperRuntime that
    lives on the serving loop and starts there on the first request or at lifespan startup."""

    def __init__(self, runtime: ClipperRuntime) -> None:
        self.runtime = runtime
        self._started: asyncio.Task | None = None

    async def start(self) -> None:
        """Start the runtime once (concurrent first requests share the start)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self.runtime.start())
        await asyncio.shield(self._started)

    async def close(self) -> None:
        if self._started is not None:
            await self.runtime.close()
            self._started = None

    def collector(self) -> Collector:
        return _ClipperState(self.runtime)

    # ---- models --------------------------------------------------------------------------
    async def list_containers(self) -> dict[str, Any]:
        return {"models": self.runtime.list_models()}

    async def deploy(self, body: rq.DeployRequest) -> dict[str, Any]:
        options = {k: v for k, v in _fields(body).items() if k not in ("name", "framework", "model") and v is not None}
        if "approximate" in options:
            options["approximate"] = _fields(options["approximate"])
        return await self.runtime.deploy(body.name, body.framework, body.model, **options)

    async def describe_container(self, name: str) -> dict[str, Any]:
        return self.runtime.describe_model(name)

    async def scale(self, name: str, body: rq.ScaleRequest) -> dict[str, Any]:
        return await self.runtime.scale(name, body.replicas)

    async def rollback(self, name: str, body: rq.RollbackRequest | None) -> dict[str, Any]:
        version = None if body is None or body.version is msgspec.UNSET else body.version
        return await self.runtime.rollback(name, version)

    async def remove_container(self, name: str) -> dict[str, Any]:
        return await self.runtime.remove(name)

    # ---- applications --------------------------------------------------------------------
    async def list_apps(self) -> dict[str, Any]:
        return {"apps": self.runtime.list_apps()}

    async def create_app(self, body: rq.CreateAppRequest) -> dict[str, Any]:
        fields = _fields(body)
        if "params" in fields:
            fields["params"] = _fields(fields["params"])
        return await self.runtime.create_app(**fields)

    async def describe_app(self, name: str) -> dict[str, Any]:
        return self.runtime.app(name).describe()

    async def remove_app(self, name: str) -> dict[str, Any]:
        return await self.runtime.remove_app(name)

    async def app_predict(self, name: str, body: rq.AppPredictRequest) -> dict[str, Any]:
        self.runtime.app(name)
        user = DEFAULT_USER if body.user is msgspec.UNSET else body.user
        return {"app": name, **await self.runtime.predict(name, user, body.input)}

    async def app_observe(self, name: str, body: rq.AppObserveRequest) -> dict[str, Any]:
        self.runtime.app(name)
        user = DEFAULT_USER if body.user is msgspec.UNSET else body.user
        return {"app": name, **await self.runtime.observe(name, user, body.input, body.label)}


class _ClipperState(Collector):
    """Batch sizes, queue lengths, batch latency, restarts and cache figures, read at scrape time."""

    def __init__(self, runtime: ClipperRuntime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator:
        labels = ["model", "version", "replica"]
        batch = GaugeMetricFamily("veloxserve_clipper_batch_size", "AIMD batch size limit", labels=labels)
        last = GaugeMetricFamily("veloxserve_clipper_last_batch", "Queries in the last batch", labels=labels)
        queue = GaugeMetricFamily("veloxserve_clipper_queue_length", "Queries waiting", labels=labels)
        latency = GaugeMetricFamily(
            "veloxserve_clipper_batch_latency_seconds",
            "Batch latency over the last 256 batches",
            labels=[*labels, "quantile"],
        )
        restarts = GaugeMetricFamily("veloxserve_clipper_restarts", "Container restarts", labels=labels)
        dropped = GaugeMetricFamily("veloxserve_clipper_dropped", "Queries dropped past their deadline", labels=labels)
        cache = GaugeMetricFamily("veloxserve_clipper_cache", "Prediction cache", labels=["figure"])
        for name, deployment in list(self._runtime.deployments.items()):
            for index, replica in enumerate(deployment.describe()["replicas"]):
                key = [name, deployment.version, str(index)]
                batch.add_metric(key, replica["batch_size"])
                last.add_metric(key, replica["last_batch"] or 0)
                queue.add_metric(key, replica["queue_length"])
                restarts.add_metric(key, replica["restarts"])
                dropped.add_metric(key, replica["dropped"])
                for quantile, ms in (replica["batch_latency_ms"] or {}).items():
                    latency.add_metric([*key, quantile], ms / 1e3)
        for figure, value in self._runtime.cache.describe().items():
            cache.add_metric([figure], value)
        yield from (batch, last, queue, latency, restarts, dropped, cache)
