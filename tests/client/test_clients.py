"""Client and AsyncClient against a LIVE server (`veloxserve serve` in its own process): every
verb, its typed answer checked against what the server holds, and the errors each can raise,
as the in-process API's exception classes. One module-scoped server; each scenario runs with
the sync and with the async client (its own users and names, so the two runs do not collide)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clipper.conftest import constant_model, write_callable
from tests.helpers import ServerProcess, admin_headers
from veloxserve import errors
from veloxserve.backoff import RetryPolicy
from veloxserve.client import AsyncClient, Client, Observed, Prediction, Recommendation
from veloxserve.serving.velox import Velox
from veloxserve.training.als import ALSConfig
from veloxserve.training.catify import generate_catify

FAST = RetryPolicy(retries=2, base=0.01, cap=0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    home = tmp_path_factory.mktemp("client") / "home"
    data = generate_catify(120, 80, n_ratings=4000, seed=3)
    with Velox(home) as velox:
        velox.train("songs", data.ratings, ALSConfig(rank=3, iterations=3))
    process = ServerProcess(home, "--model-dir", str(tmp_path_factory.getbasetemp()))
    process.token = admin_headers(home)["authorization"].removeprefix("Bearer ")  # type: ignore[attr-defined]
    process.items = [str(i) for i in data.ratings.items[:5]]  # type: ignore[attr-defined]
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


Call = Callable[..., Any]


@pytest.fixture(params=["sync", "async"])
def call(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[Call]:
    """`call("predict", ...)`: the verb of a Client, or of an AsyncClient run to completion."""
    if request.param == "sync":
        with Client(server.url, token=server.token, retry=FAST) as client:
            client.kind = "sync"  # type: ignore[attr-defined]
            yield lambda verb, *args, **kwargs: getattr(client, verb)(*args, **kwargs)
        return
    runner = asyncio.Runner()
    aclient = AsyncClient(server.url, token=server.token, retry=FAST)
    try:
        yield lambda verb, *args, **kwargs: runner.run(getattr(aclient, verb)(*args, **kwargs))
    finally:
        runner.run(aclient.aclose())
        runner.close()


def test_the_server_and_its_models(call: Call) -> None:
    assert call("health").status == "ok" and call("model_names") == ["songs"]
    (info,) = call("models")
    assert info.name == "songs" and info.n_items == 80 and info == call("describe", "songs")
    assert "veloxserve_requests" in call("prometheus") or "# HELP" in call("prometheus")
    assert "/models/{name}/predict" in call("openapi")["paths"]
    with pytest.raises(errors.ModelNotFound):
        call("describe", "no-such-model")


def test_predict_top_k_recommend_observe_and_their_errors(call: Call, server: ServerProcess) -> None:
    item, other = server.items[0], server.items[1]
    one = call("predict", "songs", 7, item)
    assert isinstance(one, Prediction) and one.model_version.startswith("v") and one.item in (item, int(item))
    many = call("predict_many", "songs", [(7, item), {"user": 7, "item": other}])
    assert many.scores[0] == pytest.approx(one.score)
    assert len(many.scores) == 2
    pairs = call("top_k", "songs", 7, 3)
    assert len(pairs) == 3 and [s for _, s in pairs] == sorted((s for _, s in pairs), reverse=True)
    among = call("top_k", "songs", 7, 1, candidates=[item, other])
    assert among[0][0] in (int(item), int(other), item, other)
    rec = call("recommend", "songs", 7, 4, policy="epsilon_greedy", epsilon=0.5)
    assert isinstance(rec, Recommendation) and len(rec.items) == 4 and rec.decision
    assert rec.propensities is not None and all(0 < p <= 1 for p in rec.propensities)

    user = f"u-{id(call)}"  # a user of this run only
    before = call("predict", "songs", user, item).score
    key = f"obs-{id(call)}"
    first = call("observe", "songs", user, item, 5.0, decision=None, id=key)
    again = call("observe", "songs", user, item, 5.0, id=key)
    assert isinstance(first, Observed) and first.duplicate is False and again.duplicate is True
    assert again.lsn == first.lsn  # acknowledged with the original's position, learned once
    assert call("predict", "songs", user, item).score > before
    batch = call("observe_many", "songs", [(user, other, 1.0), {"user": user, "item": item, "score": 4.0}])
    assert batch.observed == 2 and batch.duplicates == 0
    shown = call("recommend", "songs", user, 2)
    answered = call("observe", "songs", user, shown.items[0].item, 3.0, decision=shown.decision)
    assert answered.observed == 1

    with pytest.raises(errors.ItemNotFound) as missing:
        call("predict", "songs", 7, "no-such-item")
    assert missing.value.status == 404 and "catalogue" in missing.value.message
    with pytest.raises(errors.InvalidInput) as bad:
        call("top_k", "songs", 7, 0)
    assert bad.value.field == "k"
    with pytest.raises(errors.InvalidInput):
        call("observe", "songs", user, item, float("1e300"))  # outside the version's score range
    with pytest.raises(errors.ModelNotFound):
        call("observe", "nope", user, item, 1.0)
    metrics = call("metrics", "songs")
    assert metrics.model == "songs" and metrics.prequential["observations"] >= 4
    assert call("alerts", "songs")["model"] == "songs" and [m["name"] for m in call("stats")["models"]] == ["songs"]
    with pytest.raises(errors.ModelNotFound):
        call("alerts", "nope")


def test_versions_retrain_policy_and_activate(call: Call) -> None:
    listing = call("versions", "songs")
    assert listing.active_version in [v.version for v in listing.versions]
    assert call("version", "songs", "v1").version == "v1"
    with pytest.raises(errors.NotFound) as unknown:
        call("version", "songs", "v999")
    assert unknown.value.field == "version"
    job = call("retrain", "songs", promote="never", wait=True)
    assert job.state == "ready" and job.parent == listing.active_version
    assert call("retrain_status", "songs") == job
    assert call("version", "songs", job.version).status == "ready"
    assert call("activate", "songs", job.version) == job.version  # promote by hand
    assert call("versions", "songs").active_version == job.version
    assert call("activate", "songs", "v1") == "v1"  # and roll back

    policy = call("policy", "songs")
    changed = call("set_policy", "songs", {**policy.as_dict(), "every_observations": 1234})
    assert changed.every_observations == 1234 and call("policy", "songs") == changed
    with pytest.raises(errors.InvalidInput) as bad:
        call("set_policy", "songs", {"every_observations": 0})
    assert bad.value.field == "every_observations"
    call("set_policy", "songs", policy)


def test_forget_user(call: Call, server: ServerProcess) -> None:
    user = f"gone-{id(call)}"
    call("observe", "songs", user, server.items[0], 4.0)
    receipt = call("forget_user", user, "songs")
    assert receipt.user == user and "songs" in receipt.models
    assert call("forget_user", user).models.keys() == {"songs"}  # everywhere


def test_admin_verbs_without_a_token_are_unauthorized_and_a_model_key_is_forbidden(server: ServerProcess) -> None:
    with Client(server.url, token="", retry=FAST) as anonymous, pytest.raises(errors.Unauthorized) as refused:
        anonymous.retrain("songs")
    assert "token create" in refused.value.message
    with Client(server.url, token="vx_not_a_real_token", retry=FAST) as wrong, pytest.raises(errors.Unauthorized):
        wrong.activate("songs", "v1")


def test_clipper_deploy_apps_scale_rollback_remove(call: Call, tmp_path: Path) -> None:
    name, app = f"m{abs(id(call)) % 10_000}", f"app{abs(id(call)) % 10_000}"
    one = write_callable(tmp_path / "one.pkl", constant_model(1.0))
    zero = write_callable(tmp_path / "zero.pkl", constant_model(0.0))
    deployed = call("deploy", name, "callable", str(one))
    assert deployed.model == name and deployed.version == "v1" and len(deployed.replicas) == 1
    assert name in [d.model for d in call("list_containers")]
    created = call("create_app", app, [name], objective_ms=5000)
    assert created.name == app and created.models == (name,) and app in [a.name for a in call("list_apps")]
    answer = call("app_predict", app, [1.0, 2.0], user=3)
    assert answer.default is False and answer.output == pytest.approx(1.0)
    observed = call("app_observe", app, [1.0, 2.0], 1, user=3)
    assert observed.observed == 1 and observed.models == (name,)
    assert call("describe_app", app).raw["observed"] >= 1
    assert len(call("scale", name, 2).replicas) == 2
    assert call("deploy", name, "callable", str(zero)).version == "v2"
    assert call("rollback", name).version == "v1"
    assert call("describe_container", name).version == "v1"
    with pytest.raises(errors.Conflict):
        call("remove_container", name)  # linked to the application
    with pytest.raises(errors.Forbidden):
        call("deploy", name, "callable", "/etc/passwd")  # not under a model directory
    with pytest.raises(errors.NotFound):
        call("app_predict", "no-such-app", [1.0])
    assert call("remove_app", app) == app and call("remove_container", name) == name


def test_a_server_that_is_gone_is_server_unreachable_after_the_retries() -> None:
    from tests.helpers import free_port

    with Client(f"http://127.0.0.1:{free_port()}", retry=FAST) as client:
        with pytest.raises(errors.ServerUnreachable) as gone:
            client.health()
        assert "veloxserve serve" in gone.value.message


def test_an_in_process_app_through_asgi_transport_sync_and_async(tmp_path: Path, monkeypatch) -> None:
    from veloxserve.api import create_app

    monkeypatch.delenv("VELOXSERVE_TOKEN", raising=False)

    data = generate_catify(60, 40, n_ratings=1500, seed=4)
    with Velox(tmp_path) as velox:
        velox.train("songs", data.ratings, ALSConfig(rank=2, iterations=2))
        app = create_app(velox)
        token = admin_headers(tmp_path)["authorization"].removeprefix("Bearer ")
        item = str(data.ratings.items[0])
        with Client("http://in-process", token=token, transport=httpx.ASGITransport(app)) as client:
            assert client.predict("songs", 1, item).score == pytest.approx(velox.predict("songs", 1, item))
            assert client.observe("songs", 1, item, 4.0, id="k").duplicate is False
            assert client.retrain("songs", promote="always", wait=True).state == "promoted"
            with pytest.raises(errors.ItemNotFound):
                client.predict("songs", 1, "nope")
            client.observe("songs", "a/b", item, 3.0)
            assert client.forget_user("a/b", "songs").user == "a/b"  # one path segment, decoded once

        async def run() -> None:
            async with AsyncClient("http://in-process", transport=httpx.ASGITransport(app)) as aclient:
                assert (await aclient.observe("songs", 1, item, 4.0, id="k")).duplicate is True
                assert (await aclient.versions("songs")).active_version == velox.server("songs").version_id
                with pytest.raises(errors.Unauthorized):
                    await aclient.forget_user(1)  # no token given, none in the environment

        asyncio.run(run())


def test_the_client_imports_nothing_of_the_server() -> None:
    """A client process pays for httpx only: no numpy, numba, LMDB, FAISS, Redis or server layers."""
    import subprocess
    import sys

    probe = (
        "import sys, veloxserve.client; "
        "print([m for m in ('numpy', 'numba', 'lmdb', 'faiss', 'pyarrow', 'redis', 'zmq', "
        "'veloxserve.serving', 'veloxserve.api', 'veloxserve.storage') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr
