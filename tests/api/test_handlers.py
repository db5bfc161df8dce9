"""GET /models/{name}/alerts over HTTP (in-process ASGI): what the dashboard and operators read."""

from __future__ import annotations

from pathlib import Path

import jsonschema_rs
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import TestClient

from tests.conftest import referenced_version_arrays
from veloxserve.api import create_app
from veloxserve.api.schemas import RESPONSES
from veloxserve.config import HomeLayout, MonitoringConfig, ServingConfig
from veloxserve.serving.velox import Velox
from veloxserve.storage.versions import VersionStore


def test_alerts_route_answers_what_to_fix_and_404_for_an_unknown_model(tmp_path: Path) -> None:
    arrays, meta, users, items = referenced_version_arrays()
    VersionStore(HomeLayout(tmp_path).versions_dir("songs")).write(arrays, meta)
    config = ServingConfig(fsync=False, monitoring=MonitoringConfig(min_requests=50))
    with Velox(tmp_path, config=config) as velox, TestClient(create_app(velox)) as client:
        for i in range(100):
            client.get("/models/songs/predict", params={"user": f"stranger-{i}", "item": str(items[i])})
        for i in range(40):
            assert client.get("/models/songs/predict", params={"user": "0", "item": f"gone-{i}"}).status_code == 404
        answer = client.get("/models/songs/alerts")
        assert answer.status_code == 200
        body = answer.json()
        assert jsonschema_rs.validator_for(RESPONSES["alerts"]).is_valid(body)
        alerts = {a["alert"]: a for a in body["alerts"]}
        assert alerts["new_users_share"]["status"] == "firing" and np.isclose(alerts["new_users_share"]["value"], 1.0)
        assert np.isclose(alerts["unknown_items_share"]["value"], 40 / 140)
        assert "retrain: 29% of requested items are unknown to version v1" in alerts["unknown_items_share"]["fix"]
        assert body["model_version"] == "v1" and body["reference"] is True

        missing = client.get("/models/nope/alerts")
        assert missing.status_code == 404 and missing.json()["error"] and "nope" in missing.json()["message"]

        # the same alerts as Prometheus series, raised once however often they are read
        client.get("/models/songs/alerts")
        text = client.get("/metrics").text
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        assert samples[("veloxserve_alert", (("alert", "new_users_share"), ("model", "songs")))] == 1.0
        assert samples[("veloxserve_alerts_raised_total", (("alert", "new_users_share"), ("model", "songs")))] == 1.0
        assert samples[("veloxserve_deviation", (("check", "new_users_share"), ("model", "songs")))] == 1.0
        assert ("veloxserve_drift_detections_total", (("detector", "adwin"), ("model", "songs"))) in samples
