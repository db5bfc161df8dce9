"""Lifecycle over HTTP: versions, retrain (202, 409), policy, forgetting a user."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.helpers import admin_headers
from veloxserve.api import create_app
from veloxserve.serving.velox import Velox
from veloxserve.training.als import ALSConfig
from veloxserve.training.catify import generate_catify


@pytest.fixture
def client(tmp_path: Path):
    with Velox(tmp_path) as velox:
        velox.train("songs", generate_catify(80, 60, n_ratings=3000, seed=9).ratings, ALSConfig(rank=3, iterations=3))
        with TestClient(create_app(velox), raise_server_exceptions=False, headers=admin_headers(tmp_path)) as c:
            yield c


def _wait_for_retrain(client, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get("/models/songs/retrain").json()["retrain"]
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError("retrain did not finish")


def test_retrain_is_accepted_conflicts_while_running_and_is_listed(client) -> None:
    assert client.get("/models/songs/retrain").json()["retrain"] is None
    started = client.post("/models/songs/retrain", json={"promote": "always"})
    assert started.status_code == 202 and started.json()["retrain"]["version"] == "v2"
    second = client.post("/models/songs/retrain", json={})
    assert second.status_code == 409 and "already running" in second.json()["message"]
    job = _wait_for_retrain(client)
    assert job["state"] == "promoted"
    versions = client.get("/models/songs/versions").json()
    assert versions["active_version"] == "v2"
    assert [(v["version"], v["status"]) for v in versions["versions"]] == [("v1", "retired"), ("v2", "active")]
    v2 = client.get("/models/songs/versions/v2").json()
    assert v2["parent"] == "v1" and v2["reason"] == "manual" and "comparison" in v2
    assert client.post("/models/songs/versions/v1/activate").json()["active_version"] == "v1"  # roll back
    assert client.get("/models/songs/versions/v9").status_code == 404
    assert client.post("/models/songs/versions/v9/activate").status_code == 404
    assert client.delete("/models/songs/versions/v1").status_code == 405


@pytest.mark.parametrize(
    "body, field",
    [
        ({"promote": "maybe"}, "promote"),
        ({"colour": "red"}, "colour"),
        ({"params": [1]}, "params"),
        ([1], None),
    ],
)
def test_bad_retrain_requests_start_nothing(client, body, field) -> None:
    response = client.post("/models/songs/retrain", json=body)
    assert response.status_code == 400
    if field:
        assert response.json()["field"] == field
    assert client.get("/models/songs/retrain").json()["retrain"] is None
    assert client.post("/models/nope/retrain", json={}).status_code == 404


def test_a_failing_trainer_is_reported_and_the_version_cannot_be_activated(client) -> None:
    assert client.post("/models/songs/retrain", json={"params": {"rank": 0}}).status_code == 202
    job = _wait_for_retrain(client)
    assert job["state"] == "failed" and "rank" in job["detail"]
    refused = client.post(f"/models/songs/versions/{job['version']}/activate")
    assert refused.status_code == 409 and "failed" in refused.json()["message"]
    assert client.get("/models/songs").json()["active_version"] == "v1"


def test_policy_round_trip_and_validation(client) -> None:
    assert client.get("/models/songs/policy").json()["policy"]["drift"] is False
    updated = client.put("/models/songs/policy", json={"every_observations": 1000, "drift": True})
    assert updated.status_code == 200 and updated.json()["policy"]["every_observations"] == 1000
    bad = client.put("/models/songs/policy", json={"every_seconds": -1})
    assert bad.status_code == 400 and bad.json()["field"] == "every_seconds"
    assert client.get("/models/songs/policy").json()["policy"]["every_observations"] == 1000
    bad = client.put("/models/songs/policy", json={"engine": "spark", "spark_master": "yarn"})
    assert bad.status_code == 400 and bad.json()["field"] == "spark_master" and "spark://" in bad.json()["message"]
    assert client.get("/models/songs/policy").json()["policy"]["engine"] == "local"
    spark = client.put("/models/songs/policy", json={"engine": "spark", "spark_master": "spark://m1:7077,m2:7077"})
    assert spark.status_code == 200
    assert client.get("/models/songs/policy").json()["policy"]["spark_master"] == "spark://m1:7077,m2:7077"
    assert client.get("/models/songs/policy").json()["policy"]["spark_start_timeout"] == 60.0
    bad = client.put("/models/songs/policy", json={"engine": "spark", "spark_start_timeout": 0})
    assert bad.status_code == 400 and bad.json()["field"] == "spark_start_timeout"
    short = client.put("/models/songs/policy", json={"engine": "spark", "spark_start_timeout": 7.5})
    assert short.status_code == 200 and short.json()["policy"]["spark_start_timeout"] == 7.5


def test_forget_a_user_answers_with_a_receipt(client) -> None:
    assert client.post("/models/songs/observe", json={"user": "ghost", "item": 3, "score": 4.0}).status_code == 200
    receipt = client.delete("/users/ghost").json()
    assert receipt["user"] == "ghost" and receipt["models"]["songs"]["log_records_erased"] == 1
    again = client.delete("/models/songs/users/ghost").json()
    assert again["models"]["songs"]["log_records_erased"] == 0 and not again["models"]["songs"]["weights_removed"]
    assert client.delete("/models/nope/users/ghost").status_code == 404
    assert client.get("/users/ghost").status_code == 405
