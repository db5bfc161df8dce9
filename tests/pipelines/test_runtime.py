"""Pipelines over real Clipper containers (and a Velox model): answers, degradation, refusals,
feedback and restart. One Clipper runtime and its containers serve every test of the module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.clipper.conftest import write_callable
from tests.conftest import synthetic_version_arrays
from tests.pipelines.test_tuner import Action, ScriptedDecider
from veloxserve.clipper import Clipper
from veloxserve.config import HomeLayout
from veloxserve.errors import InvalidInput, VeloxError
from veloxserve.pipelines.profiler import Profiler
from veloxserve.pipelines.runtime import PipelineRuntime
from veloxserve.pipelines.tuner import PipelineTuner
from veloxserve.serving.velox import Velox
from veloxserve.storage.versions import VersionStore

W = np.array([[1.0, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1]])  # feat: x -> [x0, x1, x2, x0 + x1]


def _models() -> dict[str, Any]:
    """The stages' batch functions, defined here so that cloudpickle ships them by value."""

    def features(batch: Any) -> Any:
        import numpy as np

        return np.asarray(batch, dtype=float) @ np.array([[1.0, 0, 0, 1], [0, 1, 0, 1], [0, 0, 1, 1]])

    def total(batch: Any) -> Any:
        import numpy as np

        return np.asarray(batch, dtype=float).reshape(len(batch), -1).sum(axis=1)

    def slow_total(batch: Any) -> Any:
        import time

        import numpy as np

        batch = np.asarray(batch, dtype=float)
        if batch.max() > 100:  # slow on large inputs only: the profile (on the sample) is fast
            time.sleep(1.0)
        return batch.sum(axis=1)

    def affine(batch: Any) -> Any:
        import numpy as np

        return 2 * np.asarray(batch, dtype=float) + 1

    return {"feat": features, "total": total, "slow": slow_total, "affine": affine}


class Setup:
    def __init__(self, clipper: Clipper, velox: Velox, home: Path) -> None:
        self.clipper, self.velox, self.home = clipper, velox, home
        self.pipelines = self.new_runtime()

    def new_runtime(self) -> PipelineRuntime:
        runtime = PipelineRuntime(
            self.clipper.runtime, self.velox, profiler=Profiler(self.clipper.runtime, self.velox, (1, 2), 3)
        )
        self.run(runtime.start())
        return runtime

    def run(self, coroutine: Any) -> Any:
        return self.clipper._run(coroutine)  # on the Clipper runtime's loop, as the server runs both


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    base = tmp_path_factory.mktemp("pipelines")
    home = base / "home"
    arrays, meta = synthetic_version_arrays(name="songs")
    VersionStore(HomeLayout(home).versions_dir("songs")).write(arrays, meta)
    with Velox(home) as velox, Clipper(home, model_dirs=[base]) as clipper:
        samples = {"feat": [1.0, 2.0, 3.0], "total": [0.0] * 4, "slow": [0.0] * 4, "affine": 0.5}
        for name, function in _models().items():
            clipper.deploy(name, "callable", write_callable(base / f"{name}.pkl", function), sample=samples[name])
        setup = Setup(clipper, velox, home)
        yield setup
        setup.run(setup.pipelines.close())


def _chain(name: str, second: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "objective_ms": 2000,
        "plan": "fixed",
        "autoscale": False,
        "stages": [{"name": "f", "model": "feat"}, {"name": "s", "model": second, **extra}],
        "edges": [["f", "s"]],
    }


def test_a_pipeline_answers_what_its_stages_compute_and_is_served_again_after_a_restart(setup: Setup) -> None:
    shown = setup.run(setup.pipelines.deploy(_chain("chain", "total")))
    assert [s["replicas"] for s in shown["serving"]] == [1, 1] and shown["version"] == "v1"
    x = np.array([1.0, 2.0, 3.0])
    answer = setup.run(setup.pipelines.predict("chain", "u", x.tolist()))
    assert answer["output"] == pytest.approx(float((x @ W).sum()))
    assert answer["degraded"] is False and [s["status"] for s in answer["stages"]] == ["ok", "ok"]

    pipeline = setup.pipelines.pipeline("chain")  # a tuner's scale-up, applied to the real stage
    decider = ScriptedDecider([[Action("s", 1, 2, "envelope over capacity")]])
    tuner = PipelineTuner(pipeline, {}, setup.pipelines.record_scale, decider=decider)
    setup.run(tuner.step(0.0))
    assert setup.pipelines.describe("chain")["serving"][1]["replicas"] == 2

    setup.run(setup.pipelines.close())
    setup.pipelines = setup.new_runtime()  # what a server restart does: read the home, start the stages
    shown = setup.pipelines.describe("chain")
    assert shown["answered"] == 0 and [s["replicas"] for s in shown["serving"]] == [1, 2]  # as last scaled
    again = setup.run(setup.pipelines.predict("chain", "u", [0.0, 1.0, 5.0]))
    assert again["output"] == pytest.approx(float((np.array([0.0, 1.0, 5.0]) @ W).sum()))
    assert setup.run(setup.pipelines.remove("chain")) == {"removed": "chain"}
    assert not (setup.pipelines.root / "chain").exists()


def test_a_late_stage_is_replaced_by_its_default_not_an_error(setup: Setup) -> None:
    spec = {**_chain("late", "slow", default=-1.0), "objective_ms": 300}
    setup.run(setup.pipelines.deploy(spec))
    try:
        answer = setup.run(setup.pipelines.predict("late", "u", [100.0, 2.0, 3.0]))
        assert answer["output"] == -1.0 and answer["degraded"] is True
        final = answer["stages"][1]
        assert final["status"] == "default" and "deadline" in final["reason"]
        shown = setup.pipelines.describe("late")
        assert shown["degraded"] == 1 and shown["serving"][1]["degraded"] == 1
    finally:
        setup.run(setup.pipelines.remove("late"))


@pytest.mark.parametrize(
    ("change", "says", "status"),
    [
        ({"stages": [{"name": "f", "model": "feat"}, {"name": "s", "model": "feat"}]}, "Stage 's' (model 'feat')", 400),
        (
            {"stages": [{"name": "f", "model": "feat"}, {"name": "s", "model": "nope"}]},
            "Stage 's' names the model",
            404,
        ),
        ({"objective_ms": 0.001}, "out of reach", 400),
        ({"edges": [["f", "s"], ["s", "f"]]}, "cycle", 400),
    ],
)
def test_an_invalid_pipeline_is_refused_and_nothing_is_left_behind(
    setup: Setup, change: dict, says: str, status: int
) -> None:
    with pytest.raises(VeloxError) as caught:
        setup.run(setup.pipelines.deploy({**_chain("bad", "total"), **change}))
    assert says in caught.value.message and caught.value.status == status
    assert "bad" not in setup.pipelines.pipelines and not (setup.pipelines.root / "bad").exists()


def test_a_velox_stage_personalises_by_user_and_learns_from_feedback(setup: Setup) -> None:
    spec = {
        "name": "personal",
        "objective_ms": 2000,
        "plan": "fixed",
        "autoscale": False,
        "stages": [{"name": "v", "model": "velox:songs"}, {"name": "a", "model": "affine"}],
        "edges": [["v", "a"]],
    }
    setup.run(setup.pipelines.deploy(spec))
    try:
        for user in ("3", "4"):
            answer = setup.run(setup.pipelines.predict("personal", user, "100"))
            assert answer["output"] == pytest.approx(2 * setup.velox.predict("songs", user, "100") + 1)
        before = setup.velox.predict("songs", "3", "100")
        observed = setup.run(setup.pipelines.observe("personal", "3", "100", before + 5.0))
        assert observed["learned_by"] == ["v"] and observed["loss"] == pytest.approx(abs(2 * before + 1 - before - 5))
        assert setup.velox.predict("songs", "3", "100") > before  # learned towards the label, for user 3 only
        with pytest.raises(InvalidInput, match="label"):
            setup.run(setup.pipelines.observe("personal", "3", "100", "high"))
        assert setup.pipelines.describe("personal")["observed"] == 1
    finally:
        setup.run(setup.pipelines.remove("personal"))


def test_a_planned_pipeline_serves_the_planners_batch_sizes_and_replicas(setup: Setup) -> None:
    spec = {**_chain("planned", "total"), "plan": "inferline", "rate_qps": 50, "cv": 2.0}
    shown = setup.run(setup.pipelines.deploy(spec))
    try:
        planned = {s["stage"]: (s["batch_size"], s["replicas"]) for s in shown["plan"]["stages"]}
        assert shown["plan"]["planner"] == "inferline" and shown["plan"]["feasible"] is True
        assert {s["stage"]: (s["batch_size"], s["replicas"]) for s in shown["serving"]} == planned
        assert shown["plan"]["predicted_p99_ms"] <= 2000
        answer = setup.run(setup.pipelines.predict("planned", "u", [1.0, 2.0, 3.0]))
        assert answer["output"] == pytest.approx(float((np.array([1.0, 2.0, 3.0]) @ W).sum()))
        assert not answer["degraded"]
    finally:
        setup.run(setup.pipelines.remove("planned"))
