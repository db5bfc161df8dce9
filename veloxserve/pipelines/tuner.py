"""The tuner while serving: arrivals in, scale actions applied to the stages' replicas.

The decisions are the planning side's (envelopes.py: arrival envelopes over several windows,
scale a stage up as soon as the envelope exceeds its planned capacity, down after a sustained
lull). This is the runtime half: every query's arrival time is fed to the envelope, `decide` is
asked every `interval_s`, and each ScaleAction is applied to its stage's replicas. Every action is
kept (`actions`, shown by `veloxserve pipeline show` and GET /pipelines/{name}), counted (the
/metrics gauges of api/pipeline_routes.py) and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from veloxserve.errors import VeloxError
from veloxserve.pipelines.spec import MAX_REPLICAS

if TYPE_CHECKING:
    from veloxserve.pipelines.runtime import Pipeline

log = logging.getLogger(__name__)
INTERVAL_S = 0.25
KEPT = 100  # actions shown; the counters cover all


def make_decider(pipeline: Pipeline, profiles: dict[str, Any]) -> Any:
    """The planning side's Tuner over this pipeline's plan and profiles (its Clipper stages: a Velox
    stage runs in the server's process), against the envelope of the arrivals the plan was made for."""
    from veloxserve.pipelines.envelopes import ArrivalEnvelope, Tuner
    from veloxserve.pipelines.planning import planned_trace
    from veloxserve.pipelines.plans import Plan, StagePlan

    plan = pipeline.plan
    stages = {s["stage"]: StagePlan(s["stage"], s["kind"], s["batch_size"], s["replicas"]) for s in plan["stages"]}
    predicted = plan.get("predicted_p99_ms")
    p99 = math.inf if predicted is None else predicted / 1e3
    planned = Plan(stages, p99, plan["cost_per_s"], plan["feasible"], plan["reason"])
    clipper = {n: p for n, p in profiles.items() if pipeline.stages[n].kind == "clipper"}  # Velox: not replicated
    planned = Plan({n: planned.stages[n] for n in clipper}, p99, planned.cost_per_s, planned.feasible, planned.reason)
    return Tuner(planned, clipper, ArrivalEnvelope.of_trace(planned_trace(pipeline.spec)))


class PipelineTuner:
    """Feeds a pipeline's arrivals to a decider and applies its actions. `decider` has
    `observe(t)` and `decide(now) -> [ScaleAction(stage, replicas_from, replicas_to, reason)]`."""

    def __init__(
        self,
        pipeline: Pipeline,
        profiles: dict[str, Any],
        on_scaled: Callable[[Pipeline], None],
        *,
        decider: Any = None,
        interval_s: float = INTERVAL_S,
    ) -> None:
        self.pipeline = pipeline
        self.decider = decider if decider is not None else make_decider(pipeline, profiles)
        self.on_scaled = on_scaled
        self.interval_s = interval_s
        self.actions: deque[dict[str, Any]] = deque(maxlen=KEPT)
        self.counts: dict[tuple[str, str], int] = {}  # (stage, "up" | "down") -> actions applied
        self.failures = 0
        self._task: asyncio.Task | None = None

    def arrived(self, t: float) -> None:
        self.decider.observe(t)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.step(time.monotonic())
            except Exception:  # the tuner never takes the pipeline down
                log.exception("pipeline %s: the tuner failed; serving goes on", self.pipeline.spec.name)

    async def step(self, now: float) -> list[dict[str, Any]]:
        """Ask for actions and apply them; what was applied (or failed), as recorded."""
        applied = []
        for action in self.decider.decide(now):
            stage = self.pipeline.stages.get(action.stage)
            if stage is None:
                continue
            target = max(1, min(MAX_REPLICAS, int(action.replicas_to)))
            before = stage.replicas
            record = {
                "at": time.time(),
                "stage": action.stage,
                "replicas_from": before,
                "replicas_to": target,
                "reason": action.reason,
            }
            try:
                await stage.scale(target)
            except VeloxError as exc:
                self.failures += 1
                record["failed"] = exc.message
                log.error(
                    "pipeline %s: scaling %s to %d failed: %s",
                    self.pipeline.spec.name,
                    action.stage,
                    target,
                    exc.message,
                )
            else:
                direction = "up" if stage.replicas > before else "down"
                self.counts[(action.stage, direction)] = self.counts.get((action.stage, direction), 0) + 1
                log.info(
                    "pipeline %s: stage %s scaled %d -> %d replicas (%s)",
                    self.pipeline.spec.name,
                    action.stage,
                    before,
                    stage.replicas,
                    action.reason,
                )
            self.actions.append(record)
            applied.append(record)
        if applied:
            self.on_scaled(self.pipeline)
        return applied

    def describe(self) -> dict[str, Any]:
        return {
            "interval_s": self.interval_s,
            "actions": list(self.actions),
            "applied": {f"{stage}:{direction}": n for (stage, direction), n in sorted(self.counts.items())},
            "failures": self.failures,
        }
