"""Pipelines over HTTP and the CLI, against a real `veloxserve serve` and real containers,
including a stage's container killed with -9 while the pipeline keeps answering."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.clipper.conftest import write_callable
from tests.helpers import ServerProcess, eventually
from veloxserve.config import HomeLayout
from veloxserve.storage.tokens import ADMIN, TokenStore


def _models() -> dict[str, Any]:
    """Batch functions defined here, so that cloudpickle ships them by value."""

    def features(batch: Any) -> Any:
        import numpy as np

        return np.asarray(batch, dtype=float) * 2.0

    def total(batch: Any) -> Any:
        import numpy as np

        return np.asarray(batch, dtype=float).sum(axis=1)

    return {"feat": features, "total": total}


PIPELINE = """
name = "p"
objective_ms = 100         # a restarted container (a new Python process) takes longer than this to answer
plan = "fixed"
autoscale = false
edges = [["f", "s"]]

[[stages]]
name = "f"
model = "feat"

[[stages]]
name = "s"
model = "total"
default = -1.0
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    base = tmp_path_factory.mktemp("pipeline-routes")
    home = base / "home"
    token = TokenStore(HomeLayout(home).tokens_file).create(name="test", scope=ADMIN)
    process = ServerProcess(home, "--model-dir", str(base))
    process.admin, process.base, process.token = {"authorization": f"Bearer {token}"}, base, token
    try:
        process.wait_ready()
        for name, function in _models().items():
            body = {
                "name": name,
                "framework": "callable",
                "model": str(write_callable(base / f"{name}.pkl", function)),
                "sample": [0.0, 0.0, 0.0],
            }
            deployed = httpx.post(f"{process.url}/containers", json=body, headers=process.admin, timeout=120)
            assert deployed.status_code == 200, deployed.text
        yield process
    finally:
        process.stop()


def _cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "veloxserve.cli", "pipeline", *args, "--url", server.url, "--token", server.token],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_invalid_pipeline_is_a_400_naming_the_stage_and_deploys_nothing(server: ServerProcess) -> None:
    cycle = {
        "name": "bad",
        "objective_ms": 100,
        "stages": [{"name": "f", "model": "feat"}, {"name": "s", "model": "total"}],
        "edges": [["f", "s"], ["s", "f"]],
    }
    refused = httpx.post(f"{server.url}/pipelines", json=cycle, headers=server.admin)
    assert refused.status_code == 400 and "cycle" in refused.json()["message"]
    shapes = {**cycle, "edges": [["s", "f"]]}  # total gives one number, feat takes three
    refused = httpx.post(f"{server.url}/pipelines", json=shapes, headers=server.admin)
    assert refused.status_code == 400 and "Stage 'f'" in refused.json()["message"]
    assert httpx.post(f"{server.url}/pipelines", json=cycle).status_code == 401  # deploying needs the admin token
    assert httpx.get(f"{server.url}/pipelines").json() == {"pipelines": []}


def test_deploy_with_the_cli_predict_survive_a_killed_stage_and_remove(server: ServerProcess, tmp_path: Path) -> None:
    (tmp_path / "p.toml").write_text(PIPELINE)
    deployed = _cli(server, "deploy", str(tmp_path / "p.toml"))
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    url = f"{server.url}/pipelines/p"
    answers = []  # on a loaded machine an answer may be late: wait for one in time (that is not what is tested)
    assert eventually(
        lambda: (
            not answers.append(httpx.post(f"{url}/predict", json={"input": [1.0, 2.0, 3.0], "user": 7}).json())
            and not answers[-1]["degraded"]
        )
    )
    assert answers[-1]["output"] == pytest.approx(12.0)
    wrong = httpx.post(f"{url}/predict", json={"input": [1.0, 2.0]})
    assert wrong.status_code == 400 and "[3]" in wrong.json()["message"]

    shown = json.loads(_cli(server, "show", "p").stdout)
    stage = shown["serving"][1]
    assert shown["plan"]["planner"] == "fixed" and stage["stage"] == "s" and stage["replicas"] == 1
    pid = stage["containers"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    answers = []

    def recovered() -> bool:
        response = httpx.post(f"{url}/predict", json={"input": [1.0, 2.0, 3.0]}, timeout=30)
        answers.append(response)
        containers = httpx.get(url).json()["serving"][1]["containers"]
        return containers[0]["restarts"] >= 1 and not response.json()["degraded"]

    assert eventually(recovered, within=120, every=0.05)
    assert all(r.status_code == 200 for r in answers)  # the pipeline kept answering
    degraded = [r.json() for r in answers if r.json()["degraded"]]
    assert degraded, "the query sent right after the kill should have been answered by the stage's mean"
    assert all(d["stages"][1]["status"] == "mean" and d["output"] == pytest.approx(12.0) for d in degraded)
    assert httpx.get(url).json()["serving"][1]["containers"][0]["pid"] != pid

    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'veloxserve_pipeline_replicas{pipeline="p",stage="s"} 1.0' in metrics
    assert 'veloxserve_pipeline_stage_degraded_total{pipeline="p",stage="s"}' in metrics
    assert 'route="/pipelines/{name}/predict"' in metrics
    listing = _cli(server, "list")
    assert listing.returncode == 0 and '"name": "p"' in listing.stdout
    assert _cli(server, "remove", "p").returncode == 0
    assert httpx.get(url).status_code == 404
    assert httpx.post(f"{url}/predict", json={"input": [1.0, 2.0, 3.0]}).status_code == 404
