"""Load shedding over HTTP: X-Deadline-Ms, objectives, and a real server under 2x overload."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from tests.conftest import synthetic_version_arrays
from tests.helpers import ServerProcess
from tests.loadgen import closed_loop_rate, open_loop, percentile, served_latencies
from veloxserve.api.app import create_app
from veloxserve.config import HomeLayout
from veloxserve.serving.velox import Velox
from veloxserve.storage.versions import VersionStore


def _home(root: Path, n_items: int = 50) -> Path:
    arrays, meta = synthetic_version_arrays(n_users=20, n_items=n_items, rank=32 if n_items > 1000 else 4, name="songs")
    VersionStore(HomeLayout(root).versions_dir("songs")).write(arrays, meta)
    return root


@pytest.fixture
def client(tmp_path: Path):
    with Velox(_home(tmp_path)) as velox, TestClient(create_app(velox), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "1e12"])
def test_a_bad_deadline_header_is_a_400_naming_it(client, value: str) -> None:
    r = client.get("/models/songs/predict", params={"user": 1, "item": 101}, headers={"x-deadline-ms": value})
    assert r.status_code == 400 and r.json()["field"] == "X-Deadline-Ms"


def test_an_impossible_deadline_is_refused_at_once_with_retry_after(client) -> None:
    ok = client.get("/models/songs/top_k", params={"user": 1, "k": 5}, headers={"x-deadline-ms": "10000"})
    assert ok.status_code == 200
    refused = client.get("/models/songs/top_k", params={"user": 1, "k": 5}, headers={"x-deadline-ms": "0.000001"})
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"] == "Overloaded" and "deadline" in refused.json()["message"]
    first = client.post("/models/songs/observe", json={"user": 1, "item": 101, "score": 4.0}).json()["lsn"]
    refused = client.post("/models/songs/observe", json={"user": 1, "item": 101, "score": 4.0},
                          headers={"x-deadline-ms": "0.000001"})
    assert refused.status_code == 503
    after = client.post("/models/songs/observe", json={"user": 1, "item": 101, "score": 4.0}).json()["lsn"]
    assert after == first + 1  # the refused observation was never logged
    metrics = client.get("/models/songs/metrics").json()
    assert metrics["admission"]["in_flight"] == 0 and "top_k" in metrics["admission"]["service_ms"]


def test_under_2x_overload_served_requests_meet_the_objective(tmp_path: Path) -> None:
    # Generous: a top-k over 99,999 items costs ~6 ms on a quiet machine, but this one is shared
    # (load average 6 on 2 cores while this was written) and a preempted server adds up to ~150 ms
    # that no admission policy can foresee. Still tight enough to fail without shedding: at 2x
    # overload an unshed queue grows by a second of work per second, to ~4 s by the end.
    objective_ms = 1500.0
    server = ServerProcess(_home(tmp_path, n_items=99_999), "--objective-ms", f"songs={objective_ms}")
    server.wait_ready()
    try:
        path = "/models/songs/top_k?user=3&k=10"
        for _ in range(30):  # warm up, and let the server estimate the route's service time
            assert httpx.get(server.url + path).status_code == 200
        # Twice the capacity measured over HTTP with this same client (the handler's service time
        # alone leaves out uvicorn's per-request cost, and offering far more than 2x makes the
        # in-process load generator, not the server, the bottleneck).
        capacity = asyncio.run(closed_loop_rate("127.0.0.1", server.port, path, 1.5, connections=8))
        outcomes = asyncio.run(open_loop("127.0.0.1", server.port, path, 2.0 * capacity, duration=4.0))
    finally:
        server.stop()
    served = served_latencies(outcomes)
    refused = [o for o in outcomes if o.status == 503]
    assert {o.status for o in outcomes} <= {200, 503}
    assert refused and all(o.retry_after is not None and int(o.retry_after) >= 1 for o in refused)
    assert len(served) >= 0.1 * len(outcomes)
    assert percentile(served, 99) <= objective_ms / 1000, (percentile(served, 99), len(served), len(refused))
