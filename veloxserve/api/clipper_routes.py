"""HTTP routes of Clipper's model containers and applications, hooked into the raw ASGI app.

    GET    /containers                    deployed models: versions, replicas, batch sizes, queues
    POST   /containers                    deploy a model file as a new version          (admin: it runs the
                                          file's code; files only from <home>/models-in and --model-dir)
    GET    /containers/{name}             one deployed model
    POST   /containers/{name}/scale       {"replicas": n}                               (admin)
    POST   /containers/{name}/rollback    {"version"?}: the previous or a named version (admin)
    DELETE /containers/{name}             stop and delete a model                       (admin)
    GET    /apps                          applications and their policies' state
    POST   /apps                          create an application                         (admin)
    GET    /apps/{app}                    one application
    DELETE /apps/{app}                    remove an application                         (admin)
    POST   /apps/{app}/predict            {"user"?, "input"}: a deadline-bounded answer
    POST   /apps/{app}/observe            {"user"?, "input", "label"}: feedback

The runtime lives on the server's event loop and starts there on the first request (or at
lifespan startup), restoring what the home's registry says is deployed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from veloxserve.clipper.runtime import ClipperRuntime
from veloxserve.errors import invalid_parameter, no_route

PREFIXES = ("/containers", "/apps")
# (method, route label) of the routes that change what is deployed: the ones to authenticate.
ADMIN_ROUTES = frozenset({
    ("POST", "/containers"), ("POST", "/containers/{name}/scale"), ("POST", "/containers/{name}/rollback"),
    ("DELETE", "/containers/{name}"), ("POST", "/apps"), ("DELETE", "/apps/{app}"),
})
_DEPLOY_FIELDS = {"name", "framework", "model", "method", "replicas", "objective_ms", "delay_ms", "adaptive",
                  "max_batch", "hang_timeout_s", "sample"}
_APP_FIELDS = {"name", "models", "policy", "objective_ms", "default", "loss", "params", "seed"}
DEFAULT_USER = "anonymous"

ReadBody = Callable[[], Awaitable[Any]]


def route_label(path: str) -> str:
    """A bounded label per route: never a model or application name."""
    parts = path.rstrip("/").split("/")
    if len(parts) == 2:
        return parts[0] + "/" + parts[1]
    name = "{name}" if parts[1] == "containers" else "{app}"
    return "/".join(["", parts[1], name, *parts[3:4]]) if len(parts) in (3, 4) else "other"


class ClipperRoutes:
    """Dispatches /containers and /apps requests to a ClipperRuntime on the serving loop."""

    def __init__(self, home: Path, model_dirs: Iterable[Path] = ()) -> None:
        self.runtime = ClipperRuntime(home, model_dirs=model_dirs)
        self._started: asyncio.Task | None = None
        self._routes: dict[tuple[str, str], Callable[..., Awaitable[Any]]] = {
            ("GET", "/containers"): self._list_models,
            ("POST", "/containers"): self._deploy,
            ("GET", "/containers/{name}"): self._describe_model,
            ("POST", "/containers/{name}/scale"): self._scale,
            ("POST", "/containers/{name}/rollback"): self._rollback,
            ("DELETE", "/containers/{name}"): self._remove,
            ("GET", "/apps"): self._list_apps,
            ("POST", "/apps"): self._create_app,
            ("GET", "/apps/{app}"): self._describe_app,
            ("DELETE", "/apps/{app}"): self._remove_app,
            ("POST", "/apps/{app}/predict"): self._predict,
            ("POST", "/apps/{app}/observe"): self._observe,
        }

    async def start(self) -> None:
        """Start the runtime once (concurrent first requests share the start)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self.runtime.start())
        await asyncio.shield(self._started)

    async def close(self) -> None:
        if self._started is not None:
            await self.runtime.close()
            self._started = None

    async def dispatch(self, method: str, path: str, read_body: ReadBody) -> Any:
        label = route_label(path)
        handler = self._routes.get((method, label))
        if handler is None:
            raise no_route(path, method, sorted(m for m, route in self._routes if route == label))
        await self.start()
        body = await read_body() if method == "POST" else None
        name = path.rstrip("/").split("/")[2] if "{" in label else None
        return await (handler(name, body) if name is not None else handler(body))

    def collector(self) -> Collector:
        return _ClipperState(self.runtime)

    # ---- models --------------------------------------------------------------------------
    async def _list_models(self, body: Any) -> dict[str, Any]:
        return {"models": self.runtime.list_models()}

    async def _deploy(self, body: Any) -> dict[str, Any]:
        fields = _object(body, "deploy", _DEPLOY_FIELDS)
        for field in ("name", "framework", "model"):
            if field not in fields:
                raise invalid_parameter(field, "deploy", "present in the body", None)
        options = {k: v for k, v in fields.items() if k not in ("name", "framework", "model") and v is not None}
        return await self.runtime.deploy(fields["name"], fields["framework"], fields["model"], **options)

    async def _describe_model(self, name: str, body: Any) -> dict[str, Any]:
        return self.runtime.describe_model(name)

    async def _scale(self, name: str, body: Any) -> dict[str, Any]:
        fields = _object(body, "scale", {"replicas"})
        if "replicas" not in fields:
            raise invalid_parameter("replicas", "scale", "present in the body", None)
        return await self.runtime.scale(name, fields["replicas"])

    async def _rollback(self, name: str, body: Any) -> dict[str, Any]:
        fields = _object(body if body is not None else {}, "rollback", {"version"})
        return await self.runtime.rollback(name, fields.get("version"))

    async def _remove(self, name: str, body: Any) -> dict[str, Any]:
        return await self.runtime.remove(name)

    # ---- applications --------------------------------------------------------------------
    async def _list_apps(self, body: Any) -> dict[str, Any]:
        return {"apps": self.runtime.list_apps()}

    async def _create_app(self, body: Any) -> dict[str, Any]:
        fields = _object(body, "create_app", _APP_FIELDS)
        for field in ("name", "models"):
            if field not in fields:
                raise invalid_parameter(field, "create_app", "present in the body", None)
        return await self.runtime.create_app(**fields)

    async def _describe_app(self, name: str, body: Any) -> dict[str, Any]:
        return self.runtime.app(name).describe()

    async def _remove_app(self, name: str, body: Any) -> dict[str, Any]:
        return await self.runtime.remove_app(name)

    async def _predict(self, name: str, body: Any) -> dict[str, Any]:
        fields = _object(body, "predict", {"user", "input"})
        if "input" not in fields:
            raise invalid_parameter("input", "predict", "present in the body", None)
        self.runtime.app(name)
        answer = await self.runtime.predict(name, fields.get("user", DEFAULT_USER), fields["input"])
        return {"app": name, **answer}

    async def _observe(self, name: str, body: Any) -> dict[str, Any]:
        fields = _object(body, "observe", {"user", "input", "label"})
        for field in ("input", "label"):
            if field not in fields:
                raise invalid_parameter(field, "observe", "present in the body", None)
        self.runtime.app(name)
        return {"app": name, **await self.runtime.observe(name, fields.get("user", DEFAULT_USER), fields["input"],
                                                          fields["label"])}


def _object(body: Any, where: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid_parameter("body", where, "a JSON object", type(body).__name__)
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise invalid_parameter(unknown[0], where, f"one of the fields {sorted(allowed)}", body[unknown[0]])
    return body


class _ClipperState(Collector):
    """Batch sizes, queue lengths, batch latency, restarts and cache figures, read at scrape time."""

    def __init__(self, runtime: ClipperRuntime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator:
        labels = ["model", "version", "replica"]
        batch = GaugeMetricFamily("veloxserve_clipper_batch_size", "AIMD batch size limit", labels=labels)
        last = GaugeMetricFamily("veloxserve_clipper_last_batch", "Queries in the last batch", labels=labels)
        queue = GaugeMetricFamily("veloxserve_clipper_queue_length", "Queries waiting", labels=labels)
        latency = GaugeMetricFamily("veloxserve_clipper_batch_latency_seconds", "Batch latency over the last 256 "
                                    "batches", labels=[*labels, "quantile"])
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
