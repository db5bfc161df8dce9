"""PipelineRuntime: pipelines of deployed models under one end-to-end objective, as one async core.

It lives on the Clipper runtime's loop, beside it: a pipeline's stages name models deployed in
the ClipperRuntime (or Velox models), and each stage runs its own replicas of that model's active
version (stages.py). Deploying a pipeline validates it (spec.py), profiles its stages
(profiler.py: measured once per model version, kept in the version's metadata), plans each
stage's batch size and replicas against the objective (pipe-plan's planner), starts the stages,
then records it: `<home>/clipper/pipelines/<name>/` is a VersionCatalog (one version store for
everything), each deploy a version whose meta.json holds the spec and the plan, so a restart
serves the same pipeline. The tuner (tuner.py) scales stages while serving. With several
frontend processes over one home (clipper/frontends.py) each serves the pipelines recorded when it
started, with its own stage replicas and its own feedback file; deploy and remove run on the
owner frontend only (409 elsewhere).

A query's deadline travels through the stages: each stage must answer by the end-to-end deadline
less the time its slowest path of descendants needs (their profiled p99 at the planned batch), so
a late stage is replaced by its running mean or default early enough for the rest to finish.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import zmq.asyncio

from veloxserve.clipper.application import normalise_input
from veloxserve.clipper.feedback_log import FeedbackLog
from veloxserve.clipper.runtime import ClipperRuntime
from veloxserve.clipper.shapes import check_input
from veloxserve.errors import Conflict, ContainerUnavailable, NotFound, VeloxError, invalid_parameter
from veloxserve.ids import canonical_id
from veloxserve.pipelines.planning import choose_plan
from veloxserve.pipelines.profiler import Profiler
from veloxserve.pipelines.spec import ModelShapes, PipelineSpec, StageSpec, check_against, parse_spec
from veloxserve.pipelines.stages import ClipperStage, Stage, VeloxStage, fixed_batching
from veloxserve.pipelines.tuner import PipelineTuner
from veloxserve.storage.version_catalog import VersionCatalog

log = logging.getLogger(__name__)
FEEDBACK_TIMEOUT_S = 10.0
RECENT = 2048  # end-to-end latencies kept for show's p50/p99


class Pipeline:
    """One deployed pipeline: its stages, the deadline arithmetic, its counters."""

    def __init__(self, spec: PipelineSpec, version: str, stages: dict[str, Stage], plan: dict[str, Any]) -> None:
        self.spec = spec
        self.version = version
        self.stages = stages
        self.plan = plan
        self.objective_s = spec.objective_ms / 1e3
        self.answered = self.degraded = self.missed = self.observed = 0
        self.latencies: deque[float] = deque(maxlen=RECENT)
        self.tuner: PipelineTuner | None = None
        self.feedback: FeedbackLog | None = None
        self.tail = self._tails()

    def _tails(self) -> dict[str, float]:
        """Per stage: the time its slowest chain of descendants needs after it (profiled p99s)."""
        tail: dict[str, float] = {}
        for name in reversed(self.spec.order()):
            children = self.spec.children(name)
            tail[name] = max((self.stages[c].service_p99_s + tail[c] for c in children), default=0.0)
        return tail

    def refresh_tails(self) -> None:
        self.tail = self._tails()

    def check_input(self, value: Any, where: str) -> None:
        for name in self.spec.sources:
            stage = self.stages[name]
            if isinstance(stage, ClipperStage) and stage.deployment.input_shape is not None:
                check_input(value, stage.deployment.input_shape, f"{stage.spec.model}' (stage '{name}", where)

    async def predict(self, user: str, value: Any, timeout_s: float | None = None) -> dict[str, Any]:
        started = time.monotonic()
        deadline = started + (self.objective_s if timeout_s is None else timeout_s)
        if self.tuner is not None and timeout_s is None:
            self.tuner.arrived(started)
        loop = asyncio.get_running_loop()
        results: dict[str, asyncio.Future] = {name: loop.create_future() for name in self.stages}
        report: dict[str, dict[str, Any]] = {}
        await asyncio.gather(*(self._run(name, user, value, deadline, results, report) for name in self.spec.order()))
        output = results[self.spec.sink].result()
        latency = time.monotonic() - started
        degraded = any(r["status"] != "ok" for r in report.values())
        if timeout_s is None:
            self.answered += 1
            self.degraded += degraded
            self.missed += latency > self.objective_s
            self.latencies.append(latency)
        return {
            "output": output.tolist() if isinstance(output, np.ndarray) else output,
            "degraded": degraded,
            "latency_ms": latency * 1e3,
            "stages": [report[name] for name in self.spec.order()],
        }

    async def _run(
        self,
        name: str,
        user: str,
        value: Any,
        deadline: float,
        results: dict[str, asyncio.Future],
        report: dict[str, dict[str, Any]],
    ) -> None:
        stage = self.stages[name]
        parents = self.spec.parents(name)
        if parents:
            await asyncio.wait([results[p] for p in parents])
            value = _join([results[p].result() for p in parents])
        until = deadline - self.tail[name]
        left = until - time.monotonic()
        stage.answered += 1
        if left <= 0:
            reason = "no time left for this stage: the stages before it used the budget"
        else:
            future = stage.submit(value, user, until)
            await asyncio.wait([future], timeout=left)
            if future.done() and future.exception() is None:
                report[name] = {"stage": name, "status": "ok"}
                results[name].set_result(future.result())
                return
            if future.done():
                error = future.exception()
                reason = error.message if isinstance(error, VeloxError) else str(error)
            else:
                reason = stage.why_late() if isinstance(stage, (ClipperStage, VeloxStage)) else "late"
        stage.degraded += 1
        status, output = stage.fallback()
        report[name] = {"stage": name, "status": status, "reason": reason}
        results[name].set_result(output)

    def describe(self) -> dict[str, Any]:
        recent = np.array(self.latencies) * 1e3
        return {
            **self.spec.to_json(),
            "version": self.version,
            "plan": self.plan,
            "serving": [self.stages[n].describe() for n in self.spec.order()],
            "answered": self.answered,
            "degraded": self.degraded,
            "slo_missed": self.missed,
            "observed": self.observed,
            "latency_ms": None
            if not len(recent)
            else {"p50": float(np.percentile(recent, 50)), "p99": float(np.percentile(recent, 99))},
            "tuner": None if self.tuner is None else self.tuner.describe(),
        }


def _join(outputs: list[Any]) -> Any:
    """A stage's input from its parents' outputs: one parent's number or vector as it is, else
    everything flattened and concatenated (spec.py's shape check says the same)."""
    if len(outputs) == 1 and (not isinstance(outputs[0], np.ndarray) or outputs[0].ndim <= 1):
        return outputs[0]
    try:
        return np.concatenate([np.atleast_1d(np.asarray(o, dtype=np.float64)).ravel() for o in outputs])
    except (TypeError, ValueError):
        return [o.tolist() if isinstance(o, np.ndarray) else o for o in outputs]


class PipelineRuntime:
    """Pipelines over a ClipperRuntime's deployed models (and a Velox's models, when given).
    `start` after the Clipper runtime's, on its loop."""

    def __init__(self, clipper: ClipperRuntime, velox: Any = None, *, profiler: Profiler | None = None) -> None:
        self.clipper = clipper
        self.velox = velox
        self.root = clipper.registry.root / "pipelines"
        self.profiler = profiler or Profiler(clipper, velox)
        self.pipelines: dict[str, Pipeline] = {}
        self._context: zmq.asyncio.Context | None = None
        self._lock: asyncio.Lock | None = None

    async def start(self) -> None:
        """Serve the pipelines recorded under the home, as they were planned (and last scaled)."""
        self._context, self._lock = zmq.asyncio.Context(), asyncio.Lock()
        if not self.root.is_dir():
            return
        for directory in sorted(p for p in self.root.iterdir() if (p / "ACTIVE").exists()):
            catalog = VersionCatalog(directory)
            version = catalog.pointed()
            assert version is not None
            entry = catalog.entry(version)
            try:
                spec = parse_spec(entry["spec"])
                shapes = self._shapes(spec)
                plan = {**entry["plan"], **{k: v for k, v in entry.get("scaled", {}).items()}}
                self.pipelines[spec.name] = await self._start_pipeline(spec, version, plan, shapes)
            except VeloxError as exc:  # serve the rest
                log.error("cannot restore pipeline %s: %s", directory.name, exc.message)

    async def close(self) -> None:
        for pipeline in list(self.pipelines.values()):
            await self._stop_pipeline(pipeline)
        self.pipelines.clear()
        if self._context is not None:
            self._context.destroy(linger=0)  # every socket: a stage stopped mid-failure must not hang shutdown
            self._context = None

    def _started(self) -> tuple[zmq.asyncio.Context, asyncio.Lock]:
        if self._context is None or self._lock is None:
            raise RuntimeError("PipelineRuntime.start() must be awaited (on the serving loop) first.")
        return self._context, self._lock

    # ---- deploy, list, show, remove ---------------------------------------------------------
    async def deploy(self, data: Any) -> dict[str, Any]:
        """Validate, profile, plan, start, record. Any refusal leaves nothing deployed or changed."""
        self.clipper.coordinator.check_admin("pipeline deploy")
        spec = parse_spec(data, known=self._known)
        _, lock = self._started()
        async with lock:
            if spec.name in self.pipelines:
                raise Conflict(f"Pipeline {spec.name!r} exists; remove it first (DELETE /pipelines/{spec.name}).")
            shapes = self._shapes(spec)
            profiles = await self.profiler.profile_pipeline(spec)
            loop = asyncio.get_running_loop()  # the search simulates the trace many times: off the loop
            plan = await loop.run_in_executor(None, choose_plan, spec, profiles)  # InvalidInput: out of reach
            catalog = VersionCatalog(self.root / spec.name)
            pipeline = await self._start_pipeline(spec, "pending", plan, shapes, profiles)
            try:
                meta = {"spec": spec.to_json(), "plan": plan}
                version = await loop.run_in_executor(None, lambda: catalog.versions.write({}, meta))
                await loop.run_in_executor(None, catalog.activate, version)
            except VeloxError:
                await self._stop_pipeline(pipeline)
                raise
            pipeline.version = version
            pipeline.feedback = FeedbackLog(self._feedback_path(spec.name))
            self.pipelines[spec.name] = pipeline
            log.info("pipeline %s %s deployed: %s", spec.name, version, plan["stages"])
            return pipeline.describe()

    def _feedback_path(self, name: str) -> Path:
        """This frontend's feedback file: each frontend process over the home writes its own."""
        index = self.clipper.frontend.index
        return self.root / name / ("feedback.log" if index == 0 else f"feedback-{index}.log")

    def _known(self, stage: StageSpec) -> bool:
        if stage.velox_model is not None:
            return self.velox is not None and stage.velox_model in self.velox.model_names()
        return stage.model in self.clipper.deployments

    def _shapes(self, spec: PipelineSpec) -> dict[str, ModelShapes]:
        def clipper(model: str) -> ModelShapes | None:
            deployment = self.clipper.deployments.get(model)
            return None if deployment is None else ModelShapes(deployment.input_shape, deployment.output_shape)

        def velox(model: str) -> bool:
            return self.velox is not None and model in self.velox.model_names()

        return check_against(spec, clipper, velox)

    async def _start_pipeline(
        self,
        spec: PipelineSpec,
        version: str,
        plan: dict[str, Any],
        shapes: dict[str, ModelShapes],
        profiles: dict[str, Any] | None = None,
    ) -> Pipeline:
        context, _ = self._started()
        if profiles is None:
            profiles = await self.profiler.profile_pipeline(spec)
        stages: dict[str, Stage] = {}
        planned = {s["stage"]: s for s in plan["stages"]}
        try:
            for stage_spec in spec.stages:
                batch, replicas = planned[stage_spec.name]["batch_size"], planned[stage_spec.name]["replicas"]
                if stage_spec.velox_model is not None:
                    stage: Stage = VeloxStage(stage_spec, self.velox, stage_spec.velox_model)
                else:
                    deployment = self.clipper.deployment(stage_spec.model)
                    container, _ = self.clipper.registry.spec(stage_spec.model, deployment.version)
                    stage_objective = spec.objective_ms / 1e3 / max(1, _depth(spec))
                    stage = ClipperStage(
                        stage_spec,
                        spec.name,
                        deployment.version,
                        container,
                        fixed_batching(batch, stage_objective, stage_spec.aimd),
                        context,
                        shapes[stage_spec.name].input_shape,
                        shapes[stage_spec.name].output_shape,
                        deployment.example,
                    )
                    await stage.scale(replicas)
                stage.batch_size = batch
                stage.service_p99_s = _p99_at(profiles.get(stage_spec.name), batch)
                stages[stage_spec.name] = stage
        except VeloxError:
            await asyncio.gather(*(s.stop() for s in stages.values()))
            raise
        pipeline = Pipeline(spec, version, stages, plan)
        if version != "pending":
            pipeline.feedback = FeedbackLog(self._feedback_path(spec.name))
            pipeline.observed = sum(1 for _ in pipeline.feedback.replay())
        if spec.autoscale:
            try:
                pipeline.tuner = PipelineTuner(pipeline, profiles, self.record_scale)
            except ImportError as exc:  # the planning side's envelopes are not installed
                log.warning("pipeline %s serves without a tuner: %s", spec.name, exc)
            else:
                pipeline.tuner.start()
        return pipeline

    def record_scale(self, pipeline: Pipeline) -> None:
        """Keep the replicas the tuner set, so a restart serves what was serving."""
        catalog = VersionCatalog(self.root / pipeline.spec.name)
        stages = [{**s, "replicas": pipeline.stages[s["stage"]].replicas} for s in pipeline.plan["stages"]]
        catalog.annotate(pipeline.version, scaled={"stages": stages})

    async def _stop_pipeline(self, pipeline: Pipeline) -> None:
        if pipeline.tuner is not None:
            await pipeline.tuner.stop()
        await asyncio.gather(*(s.stop() for s in pipeline.stages.values()))
        if pipeline.feedback is not None:
            pipeline.feedback.close()

    def pipeline(self, name: str) -> Pipeline:
        found = self.pipelines.get(name)
        if found is None:
            raise NotFound(f"No pipeline {name!r}; deploy it with POST /pipelines (veloxserve pipeline deploy).")
        return found

    def list(self) -> list[dict[str, Any]]:
        return [self.pipelines[n].describe() for n in sorted(self.pipelines)]

    def describe(self, name: str) -> dict[str, Any]:
        return self.pipeline(name).describe()

    async def remove(self, name: str) -> dict[str, Any]:
        self.clipper.coordinator.check_admin("pipeline remove")
        _, lock = self._started()
        async with lock:
            pipeline = self.pipeline(name)
            del self.pipelines[name]
            await self._stop_pipeline(pipeline)
            await asyncio.get_running_loop().run_in_executor(None, shutil.rmtree, self.root / name, True)
            return {"removed": name}

    # ---- queries and feedback -------------------------------------------------------------------
    async def predict(self, name: str, user: Any, value: Any) -> dict[str, Any]:
        pipeline = self.pipeline(name)
        user = canonical_id(user, "user", "pipeline_predict")
        value = normalise_input(value)
        pipeline.check_input(value, "pipeline_predict")
        return {"pipeline": name, **await pipeline.predict(user, value)}

    async def observe(self, name: str, user: Any, value: Any, label: Any) -> dict[str, Any]:
        """Feedback: durable in the pipeline's feedback log first; then each Velox stage learns
        the label as the user's score of the item (the Velox observe path). Clipper stages are
        fixed models: their feedback is kept (for retraining), not learned online."""
        pipeline = self.pipeline(name)
        user = canonical_id(user, "user", "pipeline_observe")
        value = normalise_input(value)
        pipeline.check_input(value, "pipeline_observe")
        try:
            target = np.asarray(label, dtype=np.float64)
        except (TypeError, ValueError):
            raise invalid_parameter("label", "pipeline_observe", "a number or a list of numbers", label) from None
        if not np.isfinite(target).all():
            raise invalid_parameter("label", "pipeline_observe", "finite numbers", label)
        answer = await pipeline.predict(user, value, timeout_s=FEEDBACK_TIMEOUT_S)
        if answer["degraded"]:
            raise ContainerUnavailable(
                "Feedback needs every stage's output, but "
                + "; ".join(f"{s['stage']}: {s['reason']}" for s in answer["stages"] if s["status"] != "ok")
                + ". Nothing was learned; send it again."
            )
        try:
            loss = float(np.mean(np.abs(np.asarray(answer["output"], dtype=np.float64) - target)))
        except (TypeError, ValueError):
            raise invalid_parameter("label", "pipeline_observe", "the shape of the pipeline's output", label) from None
        assert pipeline.feedback is not None
        await pipeline.feedback.append(
            {"user": user, "output": answer["output"], "label": target.tolist(), "loss": loss}
        )
        learned = []
        loop = asyncio.get_running_loop()
        for stage in pipeline.stages.values():
            if isinstance(stage, VeloxStage):
                item = value.item() if isinstance(value, np.ndarray) and value.size == 1 else value
                if isinstance(item, float) and item.is_integer():
                    item = int(item)
                score = float(target.ravel()[0])
                await loop.run_in_executor(None, self.velox.observe, stage.model, user, item, score)
                learned.append(stage.spec.name)
        pipeline.observed += 1
        return {"pipeline": name, "observed": 1, "output": answer["output"], "loss": loss, "learned_by": learned}


def _depth(spec: PipelineSpec) -> int:
    depth: dict[str, int] = {}
    for name in spec.order():
        depth[name] = 1 + max((depth[p] for p in spec.parents(name)), default=0)
    return max(depth.values())


def _p99_at(profile: Any, batch: int) -> float:
    """The profiled p99 service time of a batch of `batch` (the nearest measured size at or above)."""
    if profile is None:
        return 0.0
    timings = sorted(profile.timings, key=lambda t: t.batch_size)
    at = next((t for t in timings if t.batch_size >= batch), timings[-1] if timings else None)
    return 0.0 if at is None else float(at.p99_s)
