"""Deploy, version, roll back, scale and remove models; applications survive a restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.clipper.conftest import constant_model, write_callable
from veloxserve.clipper import Clipper
from veloxserve.errors import Conflict, ContainerUnavailable, InvalidInput, ModelNotFound, NotFound


def test_versions_swap_roll_back_and_survive_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Clipper(home, model_dirs=[tmp_path]) as clipper:
        clipper.deploy("m", "callable", write_callable(tmp_path / "one.pkl", constant_model(1.0)))
        clipper.create_app("app", ["m"], objective_ms=20_000)
        assert clipper.predict("app", "u", [0.0])["output"] == 1.0
        described = clipper.deploy("m", "callable", write_callable(tmp_path / "two.pkl", constant_model(2.0)))
        assert described["version"] == "v2" and [v["version"] for v in described["versions"]] == ["v1", "v2"]
        assert [v["status"] for v in described["versions"]] == ["ready", "active"]
        assert clipper.predict("app", "u", [0.0])["output"] == 2.0  # the cache is keyed by version
        (tmp_path / "one.pkl").unlink()  # rollback needs only the registry's copy
        assert clipper.rollback("m")["version"] == "v1"
        assert clipper.predict("app", "u", [0.0])["output"] == 1.0
        with pytest.raises(Conflict, match="first version"):
            clipper.rollback("m")
        with pytest.raises(NotFound, match="no version 'v9'"):
            clipper.rollback("m", "v9")
        assert clipper.rollback("m", "v2")["version"] == "v2"
        clipper.scale("m", 2)
    with Clipper(home, model_dirs=[tmp_path]) as clipper:  # a restart serves what was active: replicas, apps
        described = clipper.describe_model("m")
        assert described["version"] == "v2" and len(described["replicas"]) == 2
        assert clipper.predict("app", "u", [0.0])["output"] == 2.0


def test_scaling_starts_and_stops_container_processes(clipper: Clipper, tmp_path: Path) -> None:
    clipper.deploy("m", "callable", write_callable(tmp_path / "m.pkl", constant_model(1.0)))
    pids = [r["pid"] for r in clipper.scale("m", 3)["replicas"]]
    assert len(set(pids)) == 3 and all(Path(f"/proc/{pid}").exists() for pid in pids)
    assert [r["pid"] for r in clipper.scale("m", 1)["replicas"]] == pids[:1]
    gone = pids[1:]
    for pid in gone:
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text()


def test_remove_is_refused_while_an_app_links_the_model(clipper: Clipper, tmp_path: Path) -> None:
    clipper.deploy("m", "callable", write_callable(tmp_path / "m.pkl", constant_model(1.0)))
    clipper.create_app("app", ["m"])
    with pytest.raises(Conflict, match="linked to the applications"):
        clipper.remove("m")
    clipper.remove_app("app")
    assert clipper.remove("m") == {"removed": "m"}
    assert clipper.list_models() == []
    with pytest.raises(ModelNotFound):
        clipper.describe_model("m")
    assert not (clipper.runtime.registry.models / "m").exists()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"name": "bad name"}, "name"),
        ({"framework": "tensorflow"}, "framework"),
        ({"model": "missing.pkl"}, "model"),  # in an allowed directory, but not there
        ({"replicas": 0}, "replicas"),
        ({"objective_ms": -1}, "objective_ms"),
        ({"delay_ms": "soon"}, "delay_ms"),
        ({"adaptive": "false"}, "adaptive"),
        ({"method": "__class__.mro"}, "method"),
        ({"hang_timeout_s": float("nan")}, "hang_timeout_s"),
        ({"approximate": {"bits": 0}}, "approximate.bits"),
        ({"approximate": {"family": "hamming"}}, "approximate.family"),
        ({"approximate": {"tabels": 2}}, "approximate.tabels"),
    ],
)
def test_bad_deployments_name_the_field_and_change_nothing(clipper: Clipper, tmp_path: Path, kwargs, field) -> None:
    args = {
        "name": "m",
        "framework": "callable",
        "model": write_callable(tmp_path / "m.pkl", constant_model(1.0)),
        **kwargs,
    }
    if args["model"] == "missing.pkl":
        args["model"] = tmp_path / "missing.pkl"
    with pytest.raises(NotFound if field == "model" else InvalidInput) as error:
        clipper.deploy(args.pop("name"), args.pop("framework"), args.pop("model"), **args)
    assert error.value.field == field
    assert clipper.list_models() == [] and not (clipper.runtime.registry.models / "m").exists()


def test_a_model_that_cannot_load_leaves_no_version(clipper: Clipper, tmp_path: Path) -> None:
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle")
    with pytest.raises(ContainerUnavailable, match="exited with code 1 before it said hello"):
        clipper.deploy("junk", "callable", tmp_path / "junk.pkl")
    assert clipper.list_models() == [] and not (clipper.runtime.registry.models / "junk").exists()


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"models": []}, "models"),
        ({"models": ["nope"]}, "models"),
        ({"policy": "ucb"}, "policy"),
        ({"models": ["m", "n"], "policy": "single"}, "models"),
        ({"objective_ms": 0}, "objective_ms"),
        ({"loss": "hinge"}, "loss"),
        ({"seed": -1}, "seed"),
        ({"policy": "exp4", "params": {"gamma": 0.1}}, "params"),
    ],
)
def test_bad_applications_name_the_field_and_change_nothing(clipper: Clipper, tmp_path: Path, kwargs, field) -> None:
    for name in ("m", "n"):
        clipper.deploy(name, "callable", write_callable(tmp_path / f"{name}.pkl", constant_model(1.0)))
    with pytest.raises(ModelNotFound if kwargs.get("models") == ["nope"] else InvalidInput) as error:
        clipper.create_app(**{"name": "app", "models": ["m"], **kwargs})
    assert error.value.field == field
    assert clipper.list_apps() == [] and not (clipper.runtime.registry.apps / "app.json").exists()


def test_scaling_down_hands_waiting_queries_to_the_replicas_that_stay(clipper: Clipper, tmp_path: Path) -> None:
    clipper.deploy(
        "m", "callable", write_callable(tmp_path / "m.pkl", constant_model(5.0, sleep=0.2)), replicas=2, adaptive=False
    )
    clipper.create_app("app", ["m"], objective_ms=20_000)

    async def burst_then_scale_down():
        import asyncio

        answers = [asyncio.ensure_future(clipper.runtime.predict("app", "u", [float(i)])) for i in range(6)]
        await asyncio.sleep(0.05)  # both replicas busy, four queries waiting
        await clipper.runtime.scale("m", 1)
        return await asyncio.gather(*answers)

    answers = clipper._run(burst_then_scale_down())
    assert sum(a["default"] for a in answers) <= 1  # at most the batch in flight on the retired replica
    assert all(a["output"] == 5.0 for a in answers if not a["default"])
