"""Each stage measured alone on this machine: service time per batch size, per replica.

The planner needs, per stage, how long one replica takes for a batch of b (p50, p99): InferLine's
stage-wise profiles. A Clipper model is measured in a replica of its own (not a serving one, so
nothing queued for users waits behind the profile), fed batches of exactly b copies of the
model's example input (the one it was probed and warmed with, clipper/shapes.py), `batches`
times per size after a warm-up batch. The measured latency is the replica's: the RPC to the
container and the model's compute, which is what a stage's replica spends per batch.

A profile belongs to a model version: it is kept in that version's metadata (the Clipper
registry's catalogue annotation, a Velox version's catalogue entry) and reused until the model
serves another version, which is then measured afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
import zmq.asyncio

from veloxserve.clipper.batching import Query
from veloxserve.clipper.cache import PredictionCache
from veloxserve.clipper.deployment import ModelDeployment
from veloxserve.clipper.runtime import ClipperRuntime
from veloxserve.errors import InvalidInput
from veloxserve.pipelines.profiles import BatchTiming, StageProfile
from veloxserve.pipelines.spec import PipelineSpec, StageSpec
from veloxserve.pipelines.stages import fixed_batching

log = logging.getLogger(__name__)
BATCH_SIZES = (1, 2, 4, 8, 16)
KIND = "cpu-1thread"  # one container process, one BLAS thread (replica.py sets OMP_NUM_THREADS=1)
PRICE_PER_REPLICA_S = 1.0  # the unit of cost: one replica (one core's share) for one second
VELOX_PRICE_PER_S = 0.01  # a Velox stage runs in the server's process: a sliver of its core, never replicated


class Profiler:
    """Stage profiles, measured once per model version and kept with it."""

    def __init__(
        self,
        clipper: ClipperRuntime,
        velox: Any = None,
        batch_sizes: tuple[int, ...] = BATCH_SIZES,
        batches: int = 12,
    ) -> None:
        self.clipper = clipper
        self.velox = velox
        self.batch_sizes = tuple(sorted(batch_sizes))
        self.batches = batches
        self.measured: list[tuple[str, str]] = []  # (model, version) measured by this profiler, oldest first

    async def profile_pipeline(self, spec: PipelineSpec) -> dict[str, StageProfile]:
        """Every stage's profile, named by stage (one measurement serves stages of one model)."""
        profiles: dict[str, StageProfile] = {}
        for stage in spec.stages:
            profile = await self.profile_stage(stage)
            profiles[stage.name] = StageProfile(stage.name, profile.kind, profile.price_per_replica_s, profile.timings)
        return profiles

    async def profile_stage(self, stage: StageSpec) -> StageProfile:
        if stage.velox_model is not None:
            return await self._velox(stage.velox_model)
        return await self.profile_model(stage.model)

    async def profile_model(self, model: str) -> StageProfile:
        """The profile of `model`'s serving version: stored, or measured now and stored."""
        deployment = self.clipper.deployment(model)
        version = deployment.version
        loop = asyncio.get_running_loop()
        meta = await loop.run_in_executor(None, self.clipper.registry.meta, model, version)
        stored = _stored(meta.get("profile"), version, self.batch_sizes)
        if stored is not None:
            return stored
        example = deployment.example
        if example is None and isinstance(deployment.input_shape, list):
            example = np.zeros(deployment.input_shape)
        if example is None:
            raise InvalidInput(
                f"Model {model!r} {version} cannot be profiled: nothing says what its input looks like. Redeploy "
                "it with a sample input (veloxserve deploy --sample).",
                field="stages",
            )
        timings = await self._measure_clipper(model, version, example)
        profile = StageProfile(model, KIND, PRICE_PER_REPLICA_S, tuple(timings))
        record = {"version": version, "profile": profile.to_json(), "measured_at": time.time()}
        await loop.run_in_executor(None, lambda: self.clipper.registry.update_meta(model, version, profile=record))
        self.measured.append((model, version))
        log.info("profiled %s %s: %s", model, version, [(t.batch_size, round(t.p99_s * 1e3, 2)) for t in timings])
        return profile

    async def _measure_clipper(self, model: str, version: str, example: Any) -> list[BatchTiming]:
        container, _ = self.clipper.registry.spec(model, version)
        largest = self.batch_sizes[-1]
        context = zmq.asyncio.Context()
        deployment = ModelDeployment(
            f"profile:{model}", version, container, fixed_batching(largest, 1.0), PredictionCache(0), context
        )
        deployment.use_example(example)
        try:
            await deployment.scale(1)  # warmed by the example (deployment.scale probes new replicas)
            replica = deployment.replicas[0]
            timings = []
            for size in self.batch_sizes:
                replica.controller.size = size
                latencies = []
                for round_ in range(self.batches + 1):
                    before = replica.batches
                    loop = asyncio.get_running_loop()
                    futures = [loop.create_future() for _ in range(size)]
                    deadline = time.monotonic() + container.hang_timeout + 60.0
                    for future in futures:
                        replica.submit(Query(example, deadline, future))
                    await asyncio.gather(*futures)
                    new = replica.batches - before
                    if round_ and new:  # round 0 warms this batch size
                        latencies += [latency for _, latency in list(replica.recent)[-new:]]
                timings.append(_timing(size, latencies))
            return timings
        finally:
            await deployment.stop()
            context.destroy(linger=0)

    async def _velox(self, model: str) -> StageProfile:
        """A Velox model's predict, in process: timed on its first item for a profiling user."""
        catalog = self.velox.catalog(model)
        version = catalog.active()
        stored = _stored(catalog.entry(version).get("pipeline_profile"), version, self.batch_sizes)
        if stored is not None:
            return stored
        loop = asyncio.get_running_loop()
        item = str((await loop.run_in_executor(None, catalog.versions.read_arrays, version))["item_ids"][0])
        timings = []
        for size in self.batch_sizes:
            latencies = []
            for _ in range(self.batches):
                started = time.perf_counter()
                self.velox.predict_many(model, [("__profile__", item)] * size)
                latencies.append(time.perf_counter() - started)
            timings.append(_timing(size, latencies))
        profile = StageProfile(f"velox:{model}", "in-process", VELOX_PRICE_PER_S, tuple(timings))
        record = {"version": version, "profile": profile.to_json(), "measured_at": time.time()}
        await loop.run_in_executor(None, lambda: catalog.annotate(version, pipeline_profile=record))
        self.measured.append((f"velox:{model}", version))
        return profile


def _timing(size: int, latencies: list[float]) -> BatchTiming:
    values = np.maximum(np.asarray(latencies or [1e-9]), 1e-9)  # a profile's times are > 0
    return BatchTiming(size, float(np.percentile(values, 50)), float(np.percentile(values, 99)), float(values.mean()))


def _stored(record: Any, version: str, sizes: tuple[int, ...]) -> StageProfile | None:
    """The profile kept for `version`, if it measured every size asked for."""
    if not isinstance(record, dict) or record.get("version") != version:
        return None
    profile = StageProfile.from_json(record["profile"])
    if not set(sizes) <= {t.batch_size for t in profile.timings}:
        return None
    return profile
