"""Stage profiles: measured in a replica of their own, kept with the model version, measured
again when the model serves a new version."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clipper.conftest import constant_model, write_callable
from veloxserve.clipper import Clipper
from veloxserve.errors import InvalidInput
from veloxserve.pipelines.profiler import Profiler
from veloxserve.pipelines.spec import parse_spec


@pytest.fixture
def clipper(tmp_path: Path) -> Iterator[Clipper]:
    with Clipper(tmp_path / "home", model_dirs=[tmp_path]) as runtime:
        yield runtime


def test_a_profile_is_measured_once_per_version_and_kept_in_its_metadata(clipper: Clipper, tmp_path: Path) -> None:
    clipper.deploy("m", "callable", write_callable(tmp_path / "m.pkl", constant_model(1.0)), sample=[0.0, 0.0])
    profiler = Profiler(clipper.runtime, batch_sizes=(1, 4), batches=3)
    served = clipper.describe_model("m")["replicas"][0]["queries"]  # the deploy's probe
    profile = clipper._run(profiler.profile_model("m"))
    assert [t.batch_size for t in profile.timings] == [1, 4]
    assert all(0 < t.p50_s <= t.p99_s for t in profile.timings) and all(t.mean_s > 0 for t in profile.timings)
    stored = clipper.registry.meta("m", "v1")["profile"]
    assert stored["version"] == "v1" and stored["profile"] == profile.to_json()
    assert clipper.describe_model("m")["replicas"][0]["queries"] == served  # measured off the serving replicas

    again = clipper._run(profiler.profile_model("m"))
    assert again == profile and profiler.measured == [("m", "v1")]  # read back, not measured again
    more = Profiler(clipper.runtime, batch_sizes=(1, 2, 4), batches=2)
    assert [t.batch_size for t in clipper._run(more.profile_model("m")).timings] == [1, 2, 4]  # a size never measured

    clipper.deploy("m", "callable", write_callable(tmp_path / "m2.pkl", constant_model(2.0, sleep=0.01)))
    renewed = clipper._run(profiler.profile_model("m"))
    assert profiler.measured == [("m", "v1"), ("m", "v2")]
    assert clipper.registry.meta("m", "v2")["profile"]["version"] == "v2"
    assert renewed.timings[0].p50_s >= 0.01  # the new version sleeps 10 ms a batch: it was measured, not copied


def test_profiles_of_a_pipeline_are_named_by_stage(clipper: Clipper, tmp_path: Path) -> None:
    clipper.deploy("m", "callable", write_callable(tmp_path / "m.pkl", constant_model(1.0)), sample=[0.0])
    spec = parse_spec(
        {
            "name": "p",
            "objective_ms": 100,
            "stages": [{"name": "a", "model": "m"}, {"name": "b", "model": "m"}],
            "edges": [["a", "b"]],
        }
    )
    profiler = Profiler(clipper.runtime, batch_sizes=(1,), batches=2)
    profiles = clipper._run(profiler.profile_pipeline(spec))
    assert {n: p.stage for n, p in profiles.items()} == {"a": "a", "b": "b"}
    assert profiles["a"].timings == profiles["b"].timings and profiler.measured == [("m", "v1")]


def test_a_model_with_no_known_input_cannot_be_profiled(clipper: Clipper, tmp_path: Path) -> None:
    clipper.deploy("m", "callable", write_callable(tmp_path / "m.pkl", constant_model(1.0)))  # no sample
    with pytest.raises(InvalidInput, match="sample"):
        clipper._run(Profiler(clipper.runtime).profile_model("m"))
    assert asyncio.iscoroutinefunction(Profiler.profile_model)
