"""A pipeline's stages as served: each with its own queue, batch size and replicas.

A Clipper stage is its own ModelDeployment of the model's active version (clipper/deployment.py):
the pipeline's replicas are not the model's `/containers` replicas, so each stage is scaled to
its plan without touching other users of the model. Its batch size is FIXED at the planned size
(BatchingConfig(adaptive=False)): the planner chose it against the end-to-end objective, and AIMD
would chase a per-model objective the pipeline does not have (`aimd = true` asks for it anyway:
the per-stage baseline). A Velox stage is a Velox model's predict, in process.

A stage that cannot answer in time degrades as Clipper's applications do: its running mean output
(an anytime prediction) if it has answered before, else its declared default, flagged.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import zmq.asyncio

from veloxserve.clipper.batching import BatchingConfig
from veloxserve.clipper.cache import PredictionCache
from veloxserve.clipper.deployment import ModelDeployment
from veloxserve.clipper.replica import ContainerSpec
from veloxserve.errors import VeloxError
from veloxserve.pipelines.spec import StageSpec

NO_CACHE = 0  # bytes: a stage's queue sees every query (identical ones in flight still share one computation)


def fixed_batching(batch_size: int, objective_s: float, aimd: bool = False) -> BatchingConfig:
    """Batches of exactly up to `batch_size` (planned), or Clipper's AIMD under `objective_s`."""
    if aimd:
        return BatchingConfig(objective=objective_s, adaptive=True, initial_size=1, max_size=1024)
    return BatchingConfig(objective=objective_s, adaptive=False, initial_size=batch_size, max_size=batch_size)


class Stage:
    """What the pipeline asks of a stage: an output for one input by a deadline, a fallback."""

    kind = "stage"

    def __init__(self, spec: StageSpec, model_version: str, output_shape: Any) -> None:
        self.spec = spec
        self.version = model_version
        self.output_shape = output_shape
        self.batch_size = spec.batch_size
        self.answered = self.degraded = 0
        self.service_p99_s = 0.0  # at the planned batch size, from the profile: reserved downstream of a stage

    def submit(self, value: Any, user: str, deadline: float) -> asyncio.Future:
        raise NotImplementedError

    @property
    def replicas(self) -> int:
        return 1

    def running_mean(self) -> Any:
        return None

    def fallback(self) -> tuple[str, Any]:
        """("mean", the running mean) when there is one, else ("default", the declared default;
        zeros of the output shape without one)."""
        mean = self.running_mean()
        if mean is not None:
            return "mean", mean
        if self.spec.default is not None:
            return "default", self.spec.default
        shape = self.output_shape if isinstance(self.output_shape, list) else []
        return "default", np.zeros(shape) if shape else 0.0

    async def scale(self, replicas: int) -> None:
        return None

    async def stop(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "stage": self.spec.name,
            "model": self.spec.model,
            "kind": self.kind,
            "version": self.version,
            "batch_size": self.batch_size,
            "replicas": self.replicas,
            "aimd": self.spec.aimd,
            "output_shape": self.output_shape,
            "answered": self.answered,
            "degraded": self.degraded,
            "service_p99_ms": self.service_p99_s * 1e3,
        }


class ClipperStage(Stage):
    """A stage served by its own container replicas of a deployed Clipper model's version."""

    kind = "clipper"

    def __init__(
        self,
        spec: StageSpec,
        pipeline: str,
        model_version: str,
        container: ContainerSpec,
        batching: BatchingConfig,
        context: zmq.asyncio.Context,
        input_shape: Any,
        output_shape: Any,
        example: Any,
    ) -> None:
        super().__init__(spec, model_version, output_shape)
        self.deployment = ModelDeployment(
            f"{pipeline}/{spec.name}", model_version, container, batching, PredictionCache(NO_CACHE), context
        )
        self.deployment.input_shape, self.deployment.output_shape = input_shape, output_shape
        if example is not None:
            self.deployment.use_example(example)

    def submit(self, value: Any, user: str, deadline: float) -> asyncio.Future:
        return self.deployment.predict(value, deadline)

    @property
    def replicas(self) -> int:
        return len(self.deployment.replicas)

    def running_mean(self) -> Any:
        return self.deployment.mean.mean

    async def scale(self, replicas: int) -> None:
        await self.deployment.scale(replicas)

    async def stop(self) -> None:
        await self.deployment.stop()

    def why_late(self) -> str:
        return self.deployment.why_late()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "containers": self.deployment.describe()["replicas"]}


class VeloxStage(Stage):
    """A Velox model's predict for the request's user and item (the request's input), in process:
    one matrix-vector product, so it is answered at once rather than queued."""

    kind = "velox"

    def __init__(self, spec: StageSpec, velox: Any, model: str) -> None:
        super().__init__(spec, velox.catalog(model).active() or "?", [])
        self.velox = velox
        self.model = model
        self.mean = 0.0
        self.count = 0

    def submit(self, value: Any, user: str, deadline: float) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        if time.monotonic() >= deadline:
            future.set_exception(VeloxError("no time left before the deadline"))
            return future
        try:
            item = value.item() if isinstance(value, np.ndarray) and value.size == 1 else value
            if isinstance(item, float) and item.is_integer():
                item = int(item)
            score = float(self.velox.predict(self.model, user, item))
        except VeloxError as exc:
            future.set_exception(exc)
            return future
        self.count += 1
        self.mean += (score - self.mean) / self.count
        future.set_result(score)
        return future

    def running_mean(self) -> Any:
        return self.mean if self.count else None

    def why_late(self) -> str:
        return "no answer by the deadline"
