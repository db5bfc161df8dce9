"""Every endpoint over HTTP (in-process ASGI transport), including every bad-input case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from tests.conftest import synthetic_version_arrays
from tests.helpers import admin_headers
from veloxserve.api import create_app
from veloxserve.config import HomeLayout, ServingConfig
from veloxserve.serving.velox import Velox
from veloxserve.storage.versions import VersionStore


@pytest.fixture
def velox(tmp_path: Path):
    arrays, meta = synthetic_version_arrays(name="songs")
    VersionStore(HomeLayout(tmp_path).versions_dir("songs")).write(arrays, meta)
    with Velox(tmp_path, config=ServingConfig(max_batch=50)) as v:
        yield v


@pytest.fixture
def client(velox: Velox, tmp_path: Path):
    with TestClient(create_app(velox), raise_server_exceptions=False, headers=admin_headers(tmp_path)) as c:
        yield c


def test_healthz_and_model_listing(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "models": ["songs"]}
    models = client.get("/models").json()["models"]
    assert [m["name"] for m in models] == ["songs"]
    info = client.get("/models/songs").json()
    assert info["active_version"] == "v1" and info["n_items"] == 50
    assert [v["version"] for v in info["versions"]] == ["v1"]


def test_openapi_schema_lists_every_route(client) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["openapi"].startswith("3.")
    for path in ("/models/{name}/predict", "/models/{name}/top_k", "/models/{name}/observe", "/models", "/healthz"):
        assert path in schema["paths"]


def test_get_predict(client, velox) -> None:
    body = client.get("/models/songs/predict", params={"user": 3, "item": 105}).json()
    assert body["score"] == pytest.approx(velox.predict("songs", 3, 105))
    assert body["model_version"] == "v1" and body["user"] == "3" and body["item"] == "105"


def test_post_predict_batch_mixes_string_and_integer_ids(client, velox) -> None:
    body = client.post(
        "/models/songs/predict", json={"queries": [{"user": 3, "item": "105"}, {"user": "x", "item": 101}]}
    )
    assert body.status_code == 200
    np.testing.assert_allclose(
        body.json()["scores"], [velox.predict("songs", 3, 105), velox.predict("songs", "x", 101)]
    )


def test_top_k_get_and_post(client, velox) -> None:
    got = client.get("/models/songs/top_k", params={"user": 4, "k": 5, "exclude_seen": "true"}).json()
    assert [e["item"] for e in got["items"]] == [i for i, _ in velox.top_k("songs", 4, 5, exclude_seen=True)]
    posted = client.post("/models/songs/top_k", json={"user": 4, "k": 2, "candidates": [101, 102, 103]}).json()
    assert len(posted["items"]) == 2 and {e["item"] for e in posted["items"]} <= {101, 102, 103}


def test_observe_single_and_batch_are_learned_before_the_next_prediction(client) -> None:
    before = client.get("/models/songs/predict", params={"user": 9, "item": 120}).json()["score"]
    target = before + 3.0  # an observation above the prediction pulls the prediction up
    r = client.post("/models/songs/observe", json={"user": 9, "item": 120, "score": target})
    assert r.status_code == 200 and r.json()["observed"] == 1
    r = client.post("/models/songs/observe", json={"observations": [{"user": 9, "item": 120, "score": target}] * 3})
    assert r.status_code == 200 and r.json()["observed"] == 3
    after = client.get("/models/songs/predict", params={"user": 9, "item": 120}).json()["score"]
    assert after > before


@pytest.mark.parametrize(
    "method, path, kwargs, status, field",
    [
        ("GET", "/models/nope/predict", {"params": {"user": 1, "item": 101}}, 404, "model"),
        ("GET", "/models/songs/predict", {"params": {"user": 1, "item": 999}}, 404, "item"),
        ("GET", "/models/songs/predict", {"params": {"item": 101}}, 400, "user"),
        ("GET", "/models/songs/predict", {"params": {"user": 1}}, 400, "item"),
        ("GET", "/models/songs/top_k", {"params": {"user": 1, "k": 0}}, 400, "k"),
        ("GET", "/models/songs/top_k", {"params": {"user": 1, "k": -3}}, 400, "k"),
        ("GET", "/models/songs/top_k", {"params": {"user": 1, "k": 51}}, 400, "k"),
        ("GET", "/models/songs/top_k", {"params": {"user": 1, "k": "ten"}}, 400, "k"),
        ("GET", "/models/songs/top_k", {"params": {"user": 1, "k": 3, "exclude_seen": "maybe"}}, 400, "exclude_seen"),
        ("POST", "/models/songs/top_k", {"json": {"user": 1}}, 400, "k"),
        ("POST", "/models/songs/top_k", {"json": {"user": 1, "k": 2, "candidates": "101"}}, 400, "candidates"),
        ("POST", "/models/songs/top_k", {"json": {"user": 1, "k": 2, "candidates": [101, 999]}}, 404, "candidates"),
        ("POST", "/models/songs/predict", {"json": {"queries": []}}, 400, "queries"),
        ("POST", "/models/songs/predict", {"json": {"queries": [{"user": 1}]}}, 400, "queries[0]"),
        ("POST", "/models/songs/predict", {"json": {"queries": [{"user": 1, "item": 101}] * 51}}, 400, "queries"),
        ("POST", "/models/songs/predict", {"json": [1, 2]}, 400, "body"),
        ("POST", "/models/songs/observe", {"json": {"user": 1, "item": 101}}, 400, "body"),
        (
            "POST",
            "/models/songs/observe",
            {"json": {"user": 1.5, "item": 101, "score": 1}},
            400,
            "observations[0].user",
        ),
        (
            "POST",
            "/models/songs/observe",
            {"json": {"user": 1, "item": 101, "score": "high"}},
            400,
            "observations[0].score",
        ),
        (
            "POST",
            "/models/songs/observe",
            {"json": {"user": 1, "item": 101, "score": None}},
            400,
            "observations[0].score",
        ),
        ("POST", "/models/songs/observe", {"json": {"observations": "x"}}, 400, "observations"),
        ("POST", "/models/nope/observe", {"json": {"user": 1, "item": 101, "score": 1}}, 404, "model"),
    ],
)
def test_bad_input_is_a_clear_error_naming_the_field(client, method, path, kwargs, status, field) -> None:
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["field"] == field and field.split(".")[-1].split("[")[0] in body["message"]


def test_nan_and_infinite_scores_are_rejected_without_changing_state(client, velox) -> None:
    before = velox.predict("songs", 1, 101)
    for raw in (b'{"user": 1, "item": 101, "score": NaN}', b'{"user": 1, "item": 101, "score": Infinity}'):
        r = client.post("/models/songs/observe", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400
    r = client.post(
        "/models/songs/observe",
        content=b'{"observations": [{"user": 1, "item": 101, "score": 5.0}, {"user": 1, "item": 101, "score": 1e400}]}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    assert velox.predict("songs", 1, 101) == before


def test_garbled_json_is_400_and_the_server_keeps_serving(client) -> None:
    r = client.post("/models/songs/observe", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["message"]
    assert client.get("/healthz").status_code == 200


def test_unknown_route_and_wrong_method_are_json_errors(client) -> None:
    assert client.get("/nowhere").status_code == 404
    assert client.delete("/models/songs/predict").status_code == 405


def test_prequential_metrics_predict_before_learning(client, velox) -> None:
    expected = velox.predict("songs", 5, 130)
    client.post("/models/songs/observe", json={"user": 5, "item": 130, "score": expected + 2.0})
    report = client.get("/models/songs/metrics").json()["prequential"]
    assert report["observations"] == 1
    assert report["rmse"] == pytest.approx(2.0)  # the error of the prediction made before learning
    assert report["windows"]["100"]["observations"] == 1


def test_prometheus_metrics_expose_latency_observations_and_model_state(client) -> None:
    client.get("/models/songs/predict", params={"user": 1, "item": 101})
    client.post("/models/songs/observe", json={"user": 1, "item": 101, "score": 3.0})
    client.get("/no/such/route")
    text = client.get("/metrics").text
    assert 'veloxserve_request_seconds_count{route="predict"} 1.0' in text
    assert 'veloxserve_observations_total{model="songs"} 1.0' in text
    assert 'veloxserve_active_version_info{model="songs",version="v1"} 1.0' in text
    assert 'veloxserve_prequential_rmse{model="songs",version="v1",window="all"}' in text
    assert 'route="other"' in text and "/no/such/route" not in text


def test_versions_listing_and_activation(client, velox) -> None:
    from tests.conftest import synthetic_version_arrays
    from veloxserve.storage.versions import VersionStore

    arrays, meta = synthetic_version_arrays(name="songs", seed=5)
    VersionStore(velox.layout.versions_dir("songs")).write(arrays, meta)
    client.post("/models/songs/observe", json={"user": "kept", "item": 101, "score": 4.0})
    assert [v["version"] for v in client.get("/models/songs/versions").json()["versions"]] == ["v1", "v2"]
    r = client.post("/models/songs/versions/v2/activate")
    assert r.status_code == 200 and r.json()["active_version"] == "v2"
    assert client.get("/models/songs/predict", params={"user": 1, "item": 101}).json()["model_version"] == "v2"
    server = velox.server("songs")
    assert server.users.counts[server.users.rows["kept"]] == 1  # the feedback survived the swap
    assert client.post("/models/songs/versions/v9/activate").status_code == 404
    assert client.get("/models/songs/versions/v2/activate").status_code == 405
