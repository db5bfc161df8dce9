"""The runtime half of the tuner: arrivals reach the decider, its actions reach the stages, and
every action is kept, counted and logged; a failed scale-up is recorded and serving goes on."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import pytest

from veloxserve.errors import ContainerUnavailable
from veloxserve.pipelines.runtime import Pipeline
from veloxserve.pipelines.spec import parse_spec
from veloxserve.pipelines.stages import Stage
from veloxserve.pipelines.tuner import PipelineTuner


@dataclass
class Action:  # the fields of the planning side's ScaleAction
    stage: str
    replicas_from: int
    replicas_to: int
    reason: str


class CountedStage(Stage):
    def __init__(self, spec: Any, fail_above: int = 64) -> None:
        super().__init__(spec, "v1", [])
        self.count, self.fail_above = 1, fail_above

    @property
    def replicas(self) -> int:
        return self.count

    async def scale(self, replicas: int) -> None:
        if replicas > self.fail_above:
            raise ContainerUnavailable("no room for another container")
        self.count = replicas


class ScriptedDecider:
    def __init__(self, script: list[list[Action]]) -> None:
        self.script, self.arrivals = script, []

    def observe(self, t: float) -> None:
        self.arrivals.append(t)

    def decide(self, now: float) -> list[Action]:
        return self.script.pop(0) if self.script else []


def _pipeline() -> Pipeline:
    spec = parse_spec(
        {
            "name": "p",
            "objective_ms": 50,
            "stages": [{"name": "a", "model": "m"}, {"name": "b", "model": "n"}],
            "edges": [["a", "b"]],
        }
    )
    stages: dict[str, Stage] = {"a": CountedStage(spec.stage("a")), "b": CountedStage(spec.stage("b"), fail_above=2)}
    plan = {
        "planner": "fixed",
        "stages": [{"stage": n, "kind": "cpu", "batch_size": 1, "replicas": 1} for n in "ab"],
        "predicted_p99_ms": None,
        "cost_per_s": 2.0,
        "feasible": True,
        "reason": "",
    }
    return Pipeline(spec, "v1", stages, plan)


def test_actions_are_applied_kept_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    pipeline = _pipeline()
    decider = ScriptedDecider(
        [
            [Action("a", 1, 3, "envelope over capacity at 0.1 s"), Action("b", 1, 2, "envelope over capacity")],
            [Action("b", 2, 5, "burst")],  # b cannot grow past 2: recorded as failed, nothing else changes
            [Action("a", 3, 1, "sustained lull"), Action("ghost", 1, 2, "a stage since removed")],
        ]
    )
    saved: list[dict[str, int]] = []
    tuner = PipelineTuner(
        pipeline, {}, lambda p: saved.append({n: s.replicas for n, s in p.stages.items()}), decider=decider
    )
    pipeline.tuner = tuner
    for t in (0.0, 0.01, 0.02):
        tuner.arrived(t)
    assert decider.arrivals == [0.0, 0.01, 0.02]

    async def steps() -> list[list[dict[str, Any]]]:
        return [await tuner.step(float(i)) for i in range(4)]

    with caplog.at_level(logging.INFO, logger="veloxserve.pipelines.tuner"):
        applied = asyncio.run(steps())
    assert [len(a) for a in applied] == [2, 1, 1, 0]
    assert {n: s.replicas for n, s in pipeline.stages.items()} == {"a": 1, "b": 2}
    assert saved == [{"a": 3, "b": 2}, {"a": 3, "b": 2}, {"a": 1, "b": 2}]  # kept for a restart after each step
    shown = pipeline.describe()["tuner"]
    assert [(a["stage"], a["replicas_from"], a["replicas_to"]) for a in shown["actions"]] == [
        ("a", 1, 3),
        ("b", 1, 2),
        ("b", 2, 5),
        ("a", 3, 1),
    ]
    assert "no room" in shown["actions"][2]["failed"] and shown["failures"] == 1
    assert shown["applied"] == {"a:down": 1, "a:up": 1, "b:up": 1}
    assert "stage a scaled 1 -> 3 replicas (envelope over capacity at 0.1 s)" in caplog.text
    assert "scaling b to 5 failed" in caplog.text


def test_targets_are_clamped_to_what_a_stage_may_have() -> None:
    pipeline = _pipeline()
    tuner = PipelineTuner(
        pipeline, {}, lambda p: None, decider=ScriptedDecider([[Action("a", 1, 0, "x")], [Action("a", 1, 500, "y")]])
    )
    asyncio.run(tuner.step(0.0))
    assert pipeline.stages["a"].replicas == 1
    asyncio.run(tuner.step(1.0))
    assert pipeline.stages["a"].replicas == 64


def test_the_background_loop_survives_a_failing_decider(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(ScriptedDecider):
        def decide(self, now: float) -> list[Action]:
            self.calls = getattr(self, "calls", 0) + 1
            raise RuntimeError("bad envelope")

    decider = Broken([])

    async def run() -> None:
        tuner = PipelineTuner(_pipeline(), {}, lambda p: None, decider=decider, interval_s=0.001)
        tuner.start()
        while getattr(decider, "calls", 0) < 3:
            await asyncio.sleep(0.001)
        await tuner.stop()

    asyncio.run(run())
    assert decider.calls >= 3 and "the tuner failed; serving goes on" in caplog.text


def test_the_planning_sides_tuner_scales_a_stage_up_on_a_burst_and_the_action_is_applied() -> None:
    """With the real envelopes: a pipeline planned for 20 queries/s gets 400 arrivals in 0.1 s."""
    from veloxserve.pipelines.profiles import BatchTiming, StageProfile

    pipeline = _pipeline()
    pipeline.spec = parse_spec({**pipeline.spec.to_json(), "rate_qps": 20.0, "cv": 1.0})
    for stage in pipeline.stages.values():
        stage.kind = "clipper"
    profiles = {n: StageProfile(n, "cpu", 1.0, (BatchTiming(1, 0.004, 0.005, 0.004),)) for n in "ab"}
    tuner = PipelineTuner(pipeline, profiles, lambda p: None)
    now = 1000.0
    for i in range(400):
        tuner.arrived(now + i * 0.00025)
    applied = asyncio.run(tuner.step(now + 0.1))
    actions = {a["stage"]: a for a in applied}
    assert pipeline.stages["a"].replicas == actions["a"]["replicas_to"] > 1 and "failed" not in actions["a"]
    assert "arrivals in a" in actions["a"]["reason"]
    assert "no room" in actions["b"]["failed"] and pipeline.stages["b"].replicas == 1  # b cannot grow past 2
