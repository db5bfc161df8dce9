"""The handlers of the /pipelines routes (routes.py) and their Prometheus gauges.

The PipelineRuntime lives on the serving loop beside the Clipper runtime, whose deployed models
its stages name, so it starts after it (on the first request or at lifespan startup).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from veloxserve.api import requests as rq
from veloxserve.pipelines.runtime import PipelineRuntime

DEFAULT_USER = "anonymous"


class PipelineRoutes:
    """Handlers over a PipelineRuntime; `start_first` starts what it depends on (Clipper's runtime)."""

    def __init__(self, runtime: PipelineRuntime, start_first: Callable[[], Awaitable[None]]) -> None:
        self.runtime = runtime
        self._start_first = start_first
        self._started: asyncio.Task | None = None

    async def start(self) -> None:
        await self._start_first()
        if self._started is None:
            self._started = asyncio.ensure_future(self.runtime.start())
        await asyncio.shield(self._started)

    async def close(self) -> None:
        if self._started is not None:
            await self.runtime.close()
            self._started = None

    def collector(self) -> Collector:
        return _PipelineState(self.runtime)

    async def list_pipelines(self) -> dict[str, Any]:
        return {"pipelines": self.runtime.list()}

    async def deploy_pipeline(self, body: rq.DeployPipelineRequest) -> dict[str, Any]:
        return await self.runtime.deploy(msgspec.to_builtins(body))

    async def describe_pipeline(self, name: str) -> dict[str, Any]:
        return self.runtime.describe(name)

    async def remove_pipeline(self, name: str) -> dict[str, Any]:
        return await self.runtime.remove(name)

    async def pipeline_predict(self, name: str, body: rq.PipelinePredictRequest) -> dict[str, Any]:
        self.runtime.pipeline(name)
        user = DEFAULT_USER if body.user is msgspec.UNSET else body.user
        return await self.runtime.predict(name, user, body.input)

    async def pipeline_observe(self, name: str, body: rq.PipelineObserveRequest) -> dict[str, Any]:
        self.runtime.pipeline(name)
        user = DEFAULT_USER if body.user is msgspec.UNSET else body.user
        return await self.runtime.observe(name, user, body.input, body.label)


class _PipelineState(Collector):
    """Per stage: replicas, batch size, degraded answers; per pipeline: answers, SLO misses; the
    tuner's scale actions by stage and direction. Read at scrape time."""

    def __init__(self, runtime: PipelineRuntime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator:
        stage_labels = ["pipeline", "stage"]
        replicas = GaugeMetricFamily("veloxserve_pipeline_replicas", "Replicas serving a stage", labels=stage_labels)
        batch = GaugeMetricFamily("veloxserve_pipeline_batch_size", "A stage's planned batch size", labels=stage_labels)
        degraded = CounterMetricFamily(
            "veloxserve_pipeline_stage_degraded", "Stage answers replaced by a mean or default", labels=stage_labels
        )
        answered = CounterMetricFamily("veloxserve_pipeline_answered", "Pipeline answers", labels=["pipeline"])
        missed = CounterMetricFamily(
            "veloxserve_pipeline_slo_missed", "Answers later than the objective", labels=["pipeline"]
        )
        actions = CounterMetricFamily(
            "veloxserve_pipeline_scale_actions", "Tuner scale actions applied", labels=[*stage_labels, "direction"]
        )
        for name, pipeline in list(self._runtime.pipelines.items()):
            answered.add_metric([name], pipeline.answered)
            missed.add_metric([name], pipeline.missed)
            for stage_name, stage in pipeline.stages.items():
                replicas.add_metric([name, stage_name], stage.replicas)
                batch.add_metric([name, stage_name], stage.batch_size)
                degraded.add_metric([name, stage_name], stage.degraded)
            if pipeline.tuner is not None:
                for (stage_name, direction), count in pipeline.tuner.counts.items():
                    actions.add_metric([name, stage_name, direction], count)
        yield from (replicas, batch, degraded, answered, missed, actions)
