"""The Clipper runtime: deployed models and applications in one home, as one async core.

Everything here runs on one asyncio event loop (the HTTP server's, or the sync wrapper's thread).
Deploying a version starts its containers, and only once they are ready swaps it in and stops
the old version's containers: queries never see a model with no replica. Rollback is the same
swap to an older version. Admin operations are serialised by one lock. With several frontend
processes over one home (`serve --workers N`), one owns the containers and the others attach to
them (frontends.py).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import math
import re
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq.asyncio

from veloxserve.clipper.adapters import Framework, missing_framework
from veloxserve.clipper.application import AppConfig, Application, normalise_input
from veloxserve.clipper.batching import BatchingConfig
from veloxserve.clipper.cache import PredictionCache
from veloxserve.clipper.deployment import ModelDeployment
from veloxserve.clipper.feedback_log import FeedbackLog
from veloxserve.clipper.frontends import Coordinator, Frontend
from veloxserve.clipper.model_files import ModelDirectories
from veloxserve.clipper.policies import Loss, PolicyKind
from veloxserve.clipper.registry import ModelRegistry
from veloxserve.clipper.shapes import check_replacement, example_input, method_label, shape_of, show
from veloxserve.config import ApproximateSettings
from veloxserve.errors import (
    Conflict,
    ContainerUnavailable,
    InvalidInput,
    ModelNotFound,
    NotFound,
    VeloxError,
    invalid_parameter,
)
from veloxserve.ids import canonical_id

log = logging.getLogger(__name__)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_REPLICAS = 64
_POLICY_PARAMS = {
    PolicyKind.SINGLE: set(),
    PolicyKind.EXP3: {"eta", "gamma"},
    PolicyKind.EXP4: {"eta"},
    PolicyKind.PERSONALISED: {"prior_precision"},
}


def check_name(name: Any, field: str, where: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise invalid_parameter(field, where, "1-64 letters, digits, '_', '.' or '-', not starting with '_.-'", name)
    return name


@dataclass(frozen=True)
class _LoopState:
    """What belongs to the event loop that serves: made by `start`, on that loop."""

    context: zmq.asyncio.Context
    lock: asyncio.Lock  # serialises admin operations


class ClipperRuntime:
    """Model deployments and applications under `<home>/clipper`. Call `start` on the loop first.
    Model files are deployed only from `<home>/models-in/` and `model_dirs` (model_files.py);
    `frontend`: which of several frontend processes over the home this is (frontends.py)."""

    def __init__(
        self,
        home: Path | str,
        cache_bytes: int = 64 << 20,
        model_dirs: Iterable[Path | str] = (),
        frontend: Frontend | None = None,
    ) -> None:
        self.registry = ModelRegistry(Path(home) / "clipper")
        self.model_files = ModelDirectories(home, model_dirs)
        self.cache = PredictionCache(cache_bytes)
        self.deployments: dict[str, ModelDeployment] = {}
        self.apps: dict[str, Application] = {}
        self._loop_state: _LoopState | None = None  # set by start(), on the loop that serves
        self.frontend = frontend or Frontend()
        self.coordinator = Coordinator(self, self.frontend)

    def _started(self) -> _LoopState:
        if self._loop_state is None:
            raise RuntimeError("ClipperRuntime.start() must be awaited (on the serving loop) first.")
        return self._loop_state

    @property
    def context(self) -> zmq.asyncio.Context:
        return self._started().context

    @property
    def owner(self) -> bool:
        """Whether this frontend owns the containers and runs admin operations (frontends.py)."""
        return self.coordinator.owner

    def admin_lock(self) -> asyncio.Lock:
        return self._started().lock

    @asynccontextmanager
    async def _admin(self, operation: str) -> AsyncIterator[None]:
        """Run an admin operation: on the owner frontend only, one at a time, then published."""
        self.coordinator.check_admin(operation)
        async with self._started().lock:
            try:
                yield
            finally:
                self.coordinator.publish()

    async def start(self) -> None:
        """Serve what the registry says: each model's active version with its replicas, every app
        (or, on a frontend that attaches, what the owner frontend serves)."""
        self._loop_state = _LoopState(zmq.asyncio.Context(), asyncio.Lock())
        self.model_files.ensure_incoming()
        await self.coordinator.start()

    async def restore_models(self) -> None:
        for name in self.registry.model_names():
            try:
                self.deployments[name] = await self._start_version(
                    name, self.registry.active(name), self.registry.replicas(name)
                )
            except ContainerUnavailable as exc:  # serve the rest; its apps answer without it
                log.error("cannot restore model %s: %s", name, exc.message)

    def restore_apps(self) -> None:
        for config in self.registry.app_configs():
            self.apps[config.name] = self.application(config)

    async def close(self) -> None:
        await self.coordinator.close()
        await asyncio.gather(*(d.stop() for d in self.deployments.values()))
        self.deployments.clear()
        for app in self.apps.values():
            app.log.close()
        self.apps.clear()
        if self._loop_state is not None:
            self._loop_state.context.term()

    # ---- models --------------------------------------------------------------------------
    def deployment(self, name: str) -> ModelDeployment:
        deployment = self.deployments.get(name)
        if deployment is None:
            raise ModelNotFound(f"No model {name!r} is deployed; see GET /containers.")
        return deployment

    async def deploy(
        self,
        name: str,
        framework: str,
        model: str | Path,
        *,
        method: str | None = None,
        replicas: int = 1,
        objective_ms: float = 20.0,
        delay_ms: float = 0.0,
        adaptive: bool = True,
        max_batch: int = 1024,
        hang_timeout_s: float = 5.0,
        sample: Any = None,
        approximate: dict[str, Any] | ApproximateSettings | None = None,
    ) -> dict[str, Any]:
        """A new version of `name` (v1 for a new model), started, probed and then swapped in.

        Without `method`, a new version calls the serving version's method (same framework), so
        redeploying a retrained predict_proba model keeps answering probabilities. `sample` is an
        example input: each replica runs it once (warming it) and its shape becomes the input shape
        queries are checked against; without it, the shape the model declares (scikit-learn, ONNX)
        or the previous version's. A version whose probed shapes differ from what the linked
        applications use is refused (409) and leaves nothing behind. `approximate`: LSH settings
        (config.ApproximateSettings) under which a numeric query may be answered with the cached
        output of a near-identical one (docs/approximate-caching.md); None: exact caching only."""
        check_name(name, "name", "deploy")
        settings = None if approximate is None else ApproximateSettings.from_json(approximate)
        if not _one_of(framework, Framework):
            raise invalid_parameter("framework", "deploy", " or ".join(f.value for f in Framework), framework)
        missing = missing_framework(Framework(framework))
        if missing is not None:
            raise InvalidInput(missing, field="framework")
        if not isinstance(model, (str, Path)) or not str(model):
            raise invalid_parameter("model", "deploy", "the path of a model file on the server", model)
        replicas = _replicas(replicas, "deploy")
        for field, value in (("objective_ms", objective_ms), ("hang_timeout_s", hang_timeout_s)):
            if not _is_number(value) or not value > 0:
                raise invalid_parameter(field, "deploy", "a number > 0", value)
        if not _is_number(delay_ms) or not delay_ms >= 0:
            raise invalid_parameter("delay_ms", "deploy", "a number >= 0", delay_ms)
        batch_limit = _integer(max_batch)
        if batch_limit is None or not 1 <= batch_limit <= 1 << 16:
            raise invalid_parameter("max_batch", "deploy", "an integer in [1, 65536]", max_batch)
        if not isinstance(adaptive, bool):
            raise invalid_parameter("adaptive", "deploy", "true or false", adaptive)
        if method is not None and (not isinstance(method, str) or not method.isidentifier()):
            raise invalid_parameter("method", "deploy", "a method or output name such as predict_proba", method)
        path = self.model_files.check(model)  # before looking at it: a refused path reveals nothing
        if not path.is_file():
            raise NotFound(
                f"There is no model file {str(model)!r} on the server; give the path of a file the server can read.",
                field="model",
            )
        if sample is not None:
            sample = normalise_input(sample)
        batching = BatchingConfig(
            objective=objective_ms / 1e3, delay=delay_ms / 1e3, adaptive=adaptive, max_size=batch_limit
        )
        loop = asyncio.get_running_loop()
        async with self._admin("deploy"):  # copying a large model file must not stall the event loop
            serving = self._serving_meta(name)
            method_from = None
            if method is None and serving is not None and serving["framework"] == framework and serving["method"]:
                method, method_from = serving["method"], serving["version"]
            add = functools.partial(
                self.registry.add_version,
                name,
                Framework(framework),
                path,
                method,
                batching,
                hang_timeout_s,
                method_from=method_from,
                sample=sample,
                approximate=None if settings is None else settings.to_json(),
            )
            meta = await loop.run_in_executor(None, add)
            try:
                new = await self._start_version(name, meta["version"], replicas, fallback=serving, strict=True)
                await self._replace(name, new, serving, replicas)
            except VeloxError:
                await loop.run_in_executor(None, self.registry.discard_version, name, meta["version"])
                raise
            return self.describe_model(name)

    async def rollback(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Serve `version`, or the version before the active one."""
        async with self._admin("rollback"):
            active = self.deployment(name).version
            versions = self.registry.versions(name)
            if version is None:
                older = versions[: versions.index(active)] if active in versions else []
                if not older:
                    raise Conflict(f"Model {name!r} serves its first version {active}; nothing to roll back to.")
                version = older[-1]
            elif version not in versions:
                raise NotFound(
                    f"Model {name!r} has no version {version!r}; its versions are {versions}.", field="version"
                )
            if version != active:
                replicas = self.registry.replicas(name)
                serving = self._serving_meta(name)
                await self._replace(
                    name, await self._start_version(name, version, replicas, fallback=serving), serving, replicas
                )
            return self.describe_model(name)

    async def scale(self, name: str, replicas: int) -> dict[str, Any]:
        replicas = _replicas(replicas, "scale")
        async with self._admin("scale"):
            await self.deployment(name).scale(replicas)
            self.registry.set_replicas(name, replicas)
            return self.describe_model(name)

    async def remove(self, name: str) -> dict[str, Any]:
        async with self._admin("remove"):
            deployment = self.deployment(name)
            users = self._linked_apps(name)
            if users:
                raise Conflict(f"Model {name!r} is linked to the applications {users}; remove them first.")
            del self.deployments[name]
            await deployment.stop()
            await asyncio.get_running_loop().run_in_executor(None, self.registry.remove, name)
            return {"removed": name}

    def _linked_apps(self, name: str) -> list[str]:
        return sorted(app.config.name for app in self.apps.values() if name in app.config.models)

    def _serving_meta(self, name: str) -> dict[str, Any] | None:
        deployment = self.deployments.get(name)
        return None if deployment is None else self.registry.meta(name, deployment.version)

    async def _start_version(
        self, name: str, version: str, replicas: int, fallback: dict[str, Any] | None = None, strict: bool = False
    ) -> ModelDeployment:
        """Start a version's replicas and probe them (shapes.py). `strict` (a new deploy): a model
        that fails on its example input is refused; otherwise (restore, rollback) it is served and
        the failure logged."""
        spec, batching = self.registry.spec(name, version)
        meta = self.registry.meta(name, version)
        deployment = ModelDeployment(name, version, spec, batching, self.cache, self._started().context)
        if meta.get("approximate") is not None:
            deployment.approximate = ApproximateSettings.from_json(meta["approximate"])
        await deployment.scale(replicas)
        declared = deployment.replicas[0].hello.get("input_shape")
        example = example_input(meta.get("sample"), declared, meta if meta.get("input_shape") else fallback)
        deployment.input_shape, deployment.output_shape = meta.get("input_shape"), meta.get("output_shape")
        if example is None:
            return deployment
        example = normalise_input(example)
        try:
            output = await deployment.probe(example)
        except VeloxError as exc:
            if not strict:
                log.warning("model %s %s failed on its example input: %s", name, version, exc.message)
                return deployment
            await deployment.stop()
            given = meta.get("sample") is not None  # the caller's sample is a bad input; zeros, a bad model
            error = InvalidInput if given else ContainerUnavailable
            raise error(
                f"Version {version} of model {name!r} (method {method_label(meta)}) failed on its example "
                f"input of shape {show(shape_of(example))}: {exc.message} Nothing was deployed; give an "
                "input it answers as sample.",
                field="sample" if given else "model",
            ) from None
        deployment.use_example(example)
        deployment.input_shape, deployment.output_shape = shape_of(example), shape_of(output)
        if (meta.get("input_shape"), meta.get("output_shape")) != (deployment.input_shape, deployment.output_shape):
            await asyncio.get_running_loop().run_in_executor(
                None,
                functools.partial(
                    self.registry.update_meta,
                    name,
                    version,
                    input_shape=deployment.input_shape,
                    output_shape=deployment.output_shape,
                ),
            )
        return deployment

    async def _replace(self, name: str, new: ModelDeployment, serving: dict[str, Any] | None, replicas: int) -> None:
        """Serve `new` in place of the serving version, unless that changes what linked apps rely on."""
        try:
            check_replacement(self.registry.meta(name, new.version), serving, self._linked_apps(name))
        except Conflict:
            await new.stop()
            raise
        old = self.deployments.get(name)
        if old is not None and new.output_shape in (None, old.output_shape):
            new.mean = old.mean  # anytime substitutes stay available across versions until new outputs arrive
        self.deployments[name] = new
        self.registry.activate(name, new.version)
        self.registry.set_replicas(name, replicas)
        if old is not None:
            await old.stop(drain_seconds=2.0)

    def list_models(self) -> list[dict[str, Any]]:
        return [self.describe_model(name) for name in sorted(self.deployments)]

    def describe_model(self, name: str) -> dict[str, Any]:
        deployment = self.deployment(name)
        versions = [
            {**self.registry.meta(name, v), "status": "active" if v == deployment.version else "ready"}
            for v in self.registry.versions(name)
        ]
        return {**deployment.describe(), "versions": versions, "cache": self.cache.describe()}

    # ---- applications --------------------------------------------------------------------
    def app(self, name: str) -> Application:
        app = self.apps.get(name)
        if app is None:
            raise NotFound(f"No application {name!r}; create it with POST /apps.")
        return app

    async def create_app(
        self,
        name: str,
        models: list[str],
        policy: str = "single",
        objective_ms: float = 20.0,
        default: Any = 0.0,
        loss: str = "zero_one",
        params: dict[str, float] | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        config = self._app_config(name, models, policy, objective_ms, default, loss, params or {}, seed)
        async with self._admin("create_app"):
            if name in self.apps:
                raise Conflict(f"Application {name!r} exists; remove it first (DELETE /apps/{name}).")
            self.registry.remove_app(name)  # a stale feedback log of an earlier app of this name
            self.registry.save_app(config)
            self.apps[name] = self.application(config)
            return self.apps[name].describe()

    async def remove_app(self, name: str) -> dict[str, Any]:
        async with self._admin("remove_app"):
            self.apps.pop(self.app(name).config.name).log.close()
            self.registry.remove_app(name)
            return {"removed": name}

    def application(self, config: AppConfig) -> Application:
        """An application writing its feedback to this frontend's file."""
        log = FeedbackLog(self.registry.feedback_log(config.name, self.frontend.index))
        return Application(config, self.deployment, log)

    async def predict(self, app: str, user: Any, value: Any) -> dict[str, Any]:
        return await self.app(app).predict(canonical_id(user, "user", "predict"), value)

    async def observe(self, app: str, user: Any, value: Any, label: Any) -> dict[str, Any]:
        return await self.app(app).observe(canonical_id(user, "user", "observe"), value, label)

    def _app_config(
        self, name: Any, models: Any, policy: Any, objective_ms: Any, default: Any, loss: Any, params: Any, seed: Any
    ) -> AppConfig:
        check_name(name, "name", "create_app")
        if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
            raise invalid_parameter("models", "create_app", "a non-empty list of deployed model names", models)
        if len(set(models)) != len(models):
            raise invalid_parameter("models", "create_app", "distinct model names", models)
        if not _one_of(policy, PolicyKind):
            raise invalid_parameter("policy", "create_app", " or ".join(p.value for p in PolicyKind), policy)
        kind = PolicyKind(policy)
        if kind is PolicyKind.SINGLE and len(models) != 1:
            raise invalid_parameter("models", "create_app", "exactly one model for the single policy", models)
        if not _is_number(objective_ms) or not objective_ms > 0:
            raise invalid_parameter("objective_ms", "create_app", "a number > 0", objective_ms)
        if not _one_of(loss, Loss):
            raise invalid_parameter("loss", "create_app", " or ".join(x.value for x in Loss), loss)
        if (
            not isinstance(params, dict)
            or not set(params) <= _POLICY_PARAMS[kind]
            or not all(_is_number(v) and v > 0 for v in params.values())
        ):
            raise invalid_parameter(
                "params", "create_app", f"an object of positive numbers among {sorted(_POLICY_PARAMS[kind])}", params
            )
        if kind is PolicyKind.EXP3 and params.get("gamma", 0.1) > 1:
            raise invalid_parameter("params", "create_app", "gamma in (0, 1]", params)
        seed_value = _integer(seed)
        if seed_value is None or seed_value < 0:
            raise invalid_parameter("seed", "create_app", "an integer >= 0", seed)
        missing = [m for m in models if m not in self.deployments]
        if missing:  # checked last: the request is well formed, what it names does not exist
            raise ModelNotFound(
                f"The models {missing} are not deployed; deploy them first (POST /containers).", field="models"
            )
        for what in ("input_shape", "output_shape"):  # one app: one input shape, outputs it can combine
            shapes = {m: getattr(self.deployments[m], what) for m in models}
            if len({str(v) for v in shapes.values() if v is not None}) > 1:
                raise invalid_parameter(
                    "models",
                    "create_app",
                    f"models of one {what.replace('_', ' ')}",
                    {m: show(v) for m, v in shapes.items()},
                )
        return AppConfig(name, tuple(models), kind, objective_ms / 1e3, default, Loss(loss), dict(params), seed_value)

    def list_apps(self) -> list[dict[str, Any]]:
        return [self.apps[name].describe() for name in sorted(self.apps)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(value: Any) -> int | None:
    """An int, or a float with an integral value (JSON's 13.0 is the integer 13); else None."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _one_of(value: Any, choices: type[enum.Enum]) -> bool:
    return isinstance(value, str) and value in {c.value for c in choices}


def _replicas(replicas: Any, where: str) -> int:
    count = _integer(replicas)
    if count is None or not 1 <= count <= MAX_REPLICAS:
        raise invalid_parameter("replicas", where, f"an integer in [1, {MAX_REPLICAS}]", replicas)
    return count
