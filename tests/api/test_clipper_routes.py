"""Clipper over HTTP and the CLI, against a real `veloxserve serve` process and real containers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.clipper.conftest import constant_model, write_callable
from tests.helpers import ServerProcess
from veloxserve.api.clipper_routes import ADMIN_ROUTES, route_label
from veloxserve.config import HomeLayout
from veloxserve.storage.tokens import ADMIN, TokenStore


def _admin_server(home: Path, model_dir: Path) -> tuple[ServerProcess, dict[str, str]]:
    """A server whose home holds one admin token and that deploys model files from `model_dir`;
    the headers that carry the token."""
    token = TokenStore(HomeLayout(home).tokens_file).create(name="test", scope=ADMIN)
    return ServerProcess(home, "--model-dir", str(model_dir)), {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    # every test's tmp_path is under the base temporary directory: the tests' models are deployable
    process, process.admin = _admin_server(tmp_path_factory.mktemp("clipper") / "home",
                                           tmp_path_factory.getbasetemp())
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess:
    token = server.admin["authorization"].removeprefix("Bearer ")
    return subprocess.run([sys.executable, "-m", "veloxserve.cli", *args, "--url", server.url, "--token", token],
                          capture_output=True, text=True, timeout=120)


def test_deploy_with_the_cli_then_predict_observe_scale_roll_back_and_remove(server, tmp_path: Path) -> None:
    one = write_callable(tmp_path / "one.pkl", constant_model(1.0))
    two = write_callable(tmp_path / "two.pkl", constant_model(0.0))
    assert _cli(server, "deploy", "--name", "m", "--framework", "callable", "--model", str(one)).returncode == 0
    assert _cli(server, "deploy", "--name", "n", "--framework", "callable", "--model", str(two)).returncode == 0
    created = _cli(server, "app", "--name", "ens", "--models", "m,n", "--policy", "exp4", "--objective-ms", "5000")
    assert created.returncode == 0, created.stdout + created.stderr

    answer = httpx.post(f"{server.url}/apps/ens/predict", json={"user": 7, "input": [1.0, 2.0]}).json()
    assert answer["app"] == "ens" and answer["default"] is False and answer["output"] == pytest.approx(0.5)
    for _ in range(5):
        observed = httpx.post(f"{server.url}/apps/ens/observe", json={"user": 7, "input": [1.0, 2.0], "label": 1})
        assert observed.status_code == 200 and observed.json()["losses"] == [0.0, 1.0]
    weights = httpx.get(f"{server.url}/apps/ens").json()["state"]["weights"]
    assert weights[0] > 0.9  # model m was right every time

    scaled = _cli(server, "scale", "--name", "m", "--replicas", "2")
    assert scaled.returncode == 0 and len(httpx.get(f"{server.url}/containers/m").json()["replicas"]) == 2
    assert _cli(server, "deploy", "--name", "m", "--framework", "callable", "--model", str(two)).returncode == 0
    assert httpx.get(f"{server.url}/containers/m").json()["version"] == "v2"
    assert _cli(server, "rollback", "--name", "m").returncode == 0
    assert httpx.get(f"{server.url}/containers/m").json()["version"] == "v1"
    listing = _cli(server, "list")
    assert listing.returncode == 0 and '"version": "v1"' in listing.stdout

    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'veloxserve_clipper_batch_size{model="m"' in metrics and "veloxserve_clipper_queue_length" in metrics
    assert 'route="/apps/{app}/predict"' in metrics

    assert httpx.delete(f"{server.url}/containers/m").status_code == 401  # admin routes need the token
    assert httpx.delete(f"{server.url}/containers/m", headers=server.admin).status_code == 409  # the app links it
    assert httpx.delete(f"{server.url}/apps/ens", headers=server.admin).status_code == 200
    assert _cli(server, "remove", "--name", "m").returncode == 0
    assert [m["model"] for m in httpx.get(f"{server.url}/containers").json()["models"]] == ["n"]


@pytest.mark.parametrize("method, path, body, status, field", [
    ("POST", "/containers", {"name": "m", "framework": "keras", "model": "/x"}, 400, "framework"),
    ("POST", "/containers", {"name": "m", "framework": "callable"}, 400, "model"),
    ("POST", "/containers", {"name": "m", "framework": "callable", "model": "/x", "colour": 1}, 400, "colour"),
    ("POST", "/containers", [1, 2], 400, "body"),
    ("POST", "/apps", {"name": "a", "models": ["nope"]}, 404, "models"),
    ("POST", "/containers", {"name": "m", "framework": "callable", "model": "/no/such/file"}, 403, "model"),
    ("POST", "/apps/nope/predict", {"input": [1]}, 404, None),
    ("POST", "/containers/nope/scale", {"replicas": 2}, 404, None),
    ("GET", "/apps/nope/predict", None, 405, None),
])
def test_bad_requests_are_clear_errors(server, method, path, body, status, field) -> None:
    before = httpx.get(f"{server.url}/containers").json(), httpx.get(f"{server.url}/apps").json()
    response = httpx.request(method, f"{server.url}{path}", json=body, headers=server.admin)
    assert response.status_code == status, response.text
    assert response.json().get("field") == field
    assert (httpx.get(f"{server.url}/containers").json(), httpx.get(f"{server.url}/apps").json()) == before


def test_predict_and_observe_name_their_missing_fields(server, tmp_path: Path) -> None:
    model = write_callable(tmp_path / "m.pkl", constant_model(1.0))
    assert httpx.post(f"{server.url}/containers", json={"name": "k", "framework": "callable", "model": str(model)},
                      headers=server.admin, timeout=60).status_code == 200
    created = httpx.post(f"{server.url}/apps", json={"name": "a", "models": ["k"]}, headers=server.admin)
    assert created.status_code == 200
    for path, body, field in (("predict", {"user": 1}, "input"), ("observe", {"input": [1]}, "label"),
                              ("observe", {"input": [1], "label": [1, 2]}, "label"),
                              ("observe", {"input": [1], "label": None}, "label"),
                              ("predict", {"input": [1], "user": True}, "user")):
        response = httpx.post(f"{server.url}/apps/a/{path}", json=body)
        assert response.status_code == 400 and response.json()["field"] == field, response.text
    assert httpx.get(f"{server.url}/apps/a").json()["observed"] == 0


def test_admin_routes_are_named_by_their_bounded_labels() -> None:
    assert route_label("/containers/digits/scale") == "/containers/{name}/scale"
    assert route_label("/apps/shop/predict") == "/apps/{app}/predict"
    assert {label for _, label in ADMIN_ROUTES} == {"/containers", "/containers/{name}/scale",
                                                    "/containers/{name}/rollback", "/containers/{name}", "/apps",
                                                    "/apps/{app}"}
    assert ("POST", "/apps/{app}/predict") not in ADMIN_ROUTES


def test_openapi_lists_the_clipper_routes_and_marks_the_admin_ones(server) -> None:
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for method, label in ADMIN_ROUTES:
        assert paths[label][method.lower()]["summary"].endswith("(admin)")
    assert "(admin)" not in paths["/apps/{app}/predict"]["post"]["summary"]


def test_acknowledged_feedback_survives_kill_9_of_the_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first, admin = _admin_server(home, tmp_path)
    try:
        first.wait_ready()
        for name, value in (("m", 1.0), ("n", 0.0)):
            model = write_callable(tmp_path / f"{name}.pkl", constant_model(value))
            httpx.post(f"{first.url}/containers", json={"name": name, "framework": "callable", "model": str(model)},
                       headers=admin, timeout=60).raise_for_status()
        httpx.post(f"{first.url}/apps", json={"name": "p", "models": ["m", "n"], "policy": "personalised",
                                              "loss": "squared", "objective_ms": 5000},
                   headers=admin).raise_for_status()
        for i in range(10):
            httpx.post(f"{first.url}/apps/p/observe", json={"user": "u", "input": [float(i)], "label": 0.9},
                       timeout=30).raise_for_status()
        before = httpx.post(f"{first.url}/apps/p/predict", json={"user": "u", "input": [99.0]}).json()["output"]
        first.kill()
    finally:
        first.stop()
    second = ServerProcess(home, "--model-dir", str(tmp_path))
    try:
        second.wait_ready()
        state = httpx.get(f"{second.url}/apps/p").json()
        assert state["observed"] == 10
        after = httpx.post(f"{second.url}/apps/p/predict", json={"user": "u", "input": [99.0]}, timeout=30).json()
        assert after["default"] is False and after["output"] == pytest.approx(before)
        assert before == pytest.approx(0.9, abs=0.1)  # learned: mostly model m's 1.0
    finally:
        second.stop()
