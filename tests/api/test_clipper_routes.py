"""Clipper over HTTP and the CLI, against a real `veloxserve serve` process and real containers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.clipper.conftest import constant_model, write_callable
from tests.helpers import ServerProcess
from veloxserve.api.routes import ADMIN_ROUTES, Router
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
    home = tmp_path_factory.mktemp("clipper") / "home"
    process, process.admin = _admin_server(home, tmp_path_factory.getbasetemp())
    process.home = home
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def _cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess:
    token = server.admin["authorization"].removeprefix("Bearer ")
    return subprocess.run(
        [sys.executable, "-m", "veloxserve.cli", *args, "--url", server.url, "--token", token],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_deploy_with_the_cli_then_predict_observe_scale_roll_back_and_remove(server, tmp_path: Path) -> None:
    one = write_callable(tmp_path / "one.pkl", constant_model(1.0))
    two = write_callable(tmp_path / "two.pkl", constant_model(0.0))
    assert _cli(server, "deploy", "--name", "m", "--framework", "callable", "--model", str(one)).returncode == 0
    approximate = ["--approximate", '{"tables": 2, "bits": 12}']  # LSH caching of numeric inputs
    deployed = _cli(server, "deploy", "--name", "n", "--framework", "callable", "--model", str(two), *approximate)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    assert httpx.get(f"{server.url}/containers/n").json()["approximate"]["tables"] == 2
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


@pytest.mark.parametrize(
    "method, path, body, status, field",
    [
        ("POST", "/containers", {"name": "m", "framework": "keras", "model": "/x"}, 400, "framework"),
        ("POST", "/containers", {"name": "m", "framework": "callable"}, 400, "model"),
        ("POST", "/containers", {"name": "m", "framework": "callable", "model": "/x", "colour": 1}, 400, "colour"),
        ("POST", "/containers", [1, 2], 400, "body"),
        (
            "POST",
            "/containers",
            {"name": "m", "framework": "sklearn", "model": "/x", "approximate": {"bits": 99}},
            400,
            "approximate.bits",
        ),
        ("POST", "/apps", {"name": "a", "models": ["nope"]}, 404, "models"),
        ("POST", "/containers", {"name": "m", "framework": "callable", "model": "/no/such/file"}, 403, "model"),
        ("POST", "/apps/nope/predict", {"input": [1]}, 404, None),
        ("POST", "/containers/nope/scale", {"replicas": 2}, 404, None),
        ("GET", "/apps/nope/predict", None, 405, None),
    ],
)
def test_bad_requests_are_clear_errors(server, method, path, body, status, field) -> None:
    before = httpx.get(f"{server.url}/containers").json(), httpx.get(f"{server.url}/apps").json()
    response = httpx.request(method, f"{server.url}{path}", json=body, headers=server.admin)
    assert response.status_code == status, response.text
    assert response.json().get("field") == field
    assert (httpx.get(f"{server.url}/containers").json(), httpx.get(f"{server.url}/apps").json()) == before


def test_predict_and_observe_name_their_missing_fields(server, tmp_path: Path) -> None:
    model = write_callable(tmp_path / "m.pkl", constant_model(1.0))
    assert (
        httpx.post(
            f"{server.url}/containers",
            json={"name": "k", "framework": "callable", "model": str(model)},
            headers=server.admin,
            timeout=60,
        ).status_code
        == 200
    )
    created = httpx.post(f"{server.url}/apps", json={"name": "a", "models": ["k"]}, headers=server.admin)
    assert created.status_code == 200
    for path, body, field in (
        ("predict", {"user": 1}, "input"),
        ("observe", {"input": [1]}, "label"),
        ("observe", {"input": [1], "label": [1, 2]}, "label"),
        ("observe", {"input": [1], "label": None}, "label"),
        ("predict", {"input": [1], "user": True}, "user"),
    ):
        response = httpx.post(f"{server.url}/apps/a/{path}", json=body)
        assert response.status_code == 400 and response.json()["field"] == field, response.text
    assert httpx.get(f"{server.url}/apps/a").json()["observed"] == 0


def test_admin_routes_are_named_by_their_bounded_labels() -> None:
    router = Router()
    assert router.label("/containers/digits/scale".split("/")) == "/containers/{name}/scale"
    assert router.label("/apps/shop/predict".split("/")) == "/apps/{app}/predict"
    assert {label for _, label in ADMIN_ROUTES if label.startswith(("/containers", "/apps"))} == {
        "/containers",
        "/containers/{name}/scale",
        "/containers/{name}/rollback",
        "/containers/{name}",
        "/apps",
        "/apps/{app}",
    }
    assert ("POST", "/apps/{app}/predict") not in ADMIN_ROUTES


def test_openapi_lists_the_clipper_routes_and_marks_the_admin_ones(server) -> None:
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    for method, label in ADMIN_ROUTES:
        if label.startswith(("/containers", "/apps")):
            assert paths[label][method.lower()]["summary"].endswith("(admin)")
    assert "(admin)" not in paths["/apps/{app}/predict"]["post"]["summary"]


def test_acknowledged_feedback_survives_kill_9_of_the_server(tmp_path: Path) -> None:
    home = tmp_path / "home"
    first, admin = _admin_server(home, tmp_path)
    try:
        first.wait_ready()
        for name, value in (("m", 1.0), ("n", 0.0)):
            model = write_callable(tmp_path / f"{name}.pkl", constant_model(value))
            httpx.post(
                f"{first.url}/containers",
                json={"name": name, "framework": "callable", "model": str(model)},
                headers=admin,
                timeout=60,
            ).raise_for_status()
        httpx.post(
            f"{first.url}/apps",
            json={"name": "p", "models": ["m", "n"], "policy": "personalised", "loss": "squared", "objective_ms": 5000},
            headers=admin,
        ).raise_for_status()
        for i in range(10):
            httpx.post(
                f"{first.url}/apps/p/observe", json={"user": "u", "input": [float(i)], "label": 0.9}, timeout=30
            ).raise_for_status()
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


def test_deploy_needs_an_admin_token_and_a_model_key_is_not_enough(server, tmp_path: Path) -> None:
    """Deploying runs the file's code: the route is in the admin table, and a model key is refused."""
    model = write_callable(tmp_path / "m.pkl", constant_model(1.0))
    body = {"name": "sneaky", "framework": "callable", "model": str(model)}
    assert httpx.post(f"{server.url}/containers", json=body).status_code == 401
    key = TokenStore(HomeLayout(server.home).tokens_file).create(name="key", scope="model:sneaky")
    deadline, response = time.monotonic() + 60, None
    while time.monotonic() < deadline:  # the server rereads its tokens about once a second
        response = httpx.post(f"{server.url}/containers", json=body, headers={"authorization": f"Bearer {key}"})
        if response.status_code != 401:
            break
        time.sleep(0.2)
    assert response.status_code == 403 and "admin token" in response.json()["message"]
    assert "sneaky" not in [m["model"] for m in httpx.get(f"{server.url}/containers").json()["models"]]


def test_a_model_file_outside_the_model_directories_is_403_and_changes_nothing(server, tmp_path: Path) -> None:
    model = write_callable(tmp_path / "m.pkl", constant_model(1.0))
    link = server.home / "models-in" / "elsewhere.pkl"
    link.symlink_to(Path("/etc/passwd"))  # inside models-in, resolving outside
    before = httpx.get(f"{server.url}/containers").json()
    # --model-dir is the base temporary directory: four levels up from models-in is outside it
    for path in ("/etc/passwd", str(link), str(server.home / "models-in" / "../../../../x.pkl")):
        response = httpx.post(
            f"{server.url}/containers", json={"name": "x", "framework": "callable", "model": path}, headers=server.admin
        )
        assert response.status_code == 403 and response.json()["field"] == "model", response.text
        assert "models-in" in response.json()["message"] and "--model-dir" in response.json()["message"]
    assert httpx.get(f"{server.url}/containers").json() == before
    assert model.exists()


def test_deploy_and_serve_help_say_that_deploying_runs_model_code() -> None:
    for command, words in (
        (["deploy", "--help"], ("runs its code", "models-in", "--model-dir")),
        (["serve", "--help"], ("--model-dir", "runs its code")),
    ):
        text = " ".join(
            subprocess.run(
                [sys.executable, "-m", "veloxserve.cli", *command], capture_output=True, text=True, timeout=60
            ).stdout.split()
        )
        for word in words:
            assert word in text, (command, word)


def test_the_readmes_digits_steps_keep_answering_after_lr2(server, tmp_path: Path) -> None:
    """deploy lr (predict_proba) and rf, an app over both, then `deploy lr2` without --method."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    X, y = load_digits(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=300).fit(X[:300], y[:300]), tmp_path / "lr.joblib")
    joblib.dump(LogisticRegression(max_iter=300, C=0.1).fit(X[:600], y[:600]), tmp_path / "lr2.joblib")
    joblib.dump(RandomForestClassifier(n_estimators=5, random_state=0).fit(X[:300], y[:300]), tmp_path / "rf.joblib")
    for args in (
        (
            "deploy",
            "--name",
            "digits-lr",
            "--framework",
            "sklearn",
            "--model",
            str(tmp_path / "lr.joblib"),
            "--method",
            "predict_proba",
        ),
        (
            "deploy",
            "--name",
            "digits-rf",
            "--framework",
            "sklearn",
            "--model",
            str(tmp_path / "rf.joblib"),
            "--method",
            "predict_proba",
        ),
        (
            "app",
            "--name",
            "digits",
            "--models",
            "digits-lr,digits-rf",
            "--policy",
            "personalised",
            "--objective-ms",
            "20000",
            "--default",
            "null",
        ),
        ("deploy", "--name", "digits-lr", "--framework", "sklearn", "--model", str(tmp_path / "lr2.joblib")),
    ):
        done = _cli(server, *args)
        assert done.returncode == 0, done.stdout + done.stderr
    assert httpx.get(f"{server.url}/containers/digits-lr").json()["method"] == "predict_proba"
    answer = httpx.post(f"{server.url}/apps/digits/predict", json={"user": "ann", "input": X[700].tolist()}, timeout=60)
    assert answer.status_code == 200 and answer.json()["default"] is False and len(answer.json()["output"]) == 10
    wrong = httpx.post(f"{server.url}/apps/digits/predict", json={"user": "ann", "input": X[700, :10].tolist()})
    assert wrong.status_code == 400 and wrong.json()["field"] == "input" and "[64]" in wrong.json()["message"]
    labels = _cli(
        server,
        "deploy",
        "--name",
        "digits-lr",
        "--framework",
        "sklearn",
        "--model",
        str(tmp_path / "lr2.joblib"),
        "--method",
        "predict",
    )
    assert labels.returncode != 0 and "Conflict" in labels.stdout and "method predict" in labels.stdout
    assert httpx.get(f"{server.url}/containers/digits-lr").json()["version"] == "v2"
    httpx.delete(f"{server.url}/apps/digits", headers=server.admin).raise_for_status()
