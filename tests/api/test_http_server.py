"""Both HTTP servers keep every behaviour: lifespan, requests in flight answered on SIGTERM, the
caller's cleanup after `serve` returns (Velox.close), acknowledged observations durable, bad input."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import synthetic_version_arrays
from tests.helpers import ServerProcess, eventually, free_port, observe_load
from veloxserve.config import HomeLayout
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.storage.versions import VersionStore

SERVERS = ["uvicorn", "granian"]

_APP = """
import asyncio, sys
from pathlib import Path
from veloxserve.api.http_server import HTTPServer, serve
events = Path(sys.argv[1])
def note(what):
    with events.open("a") as f:
        f.write(what + "\\n")
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                note("startup")
                await send({"type": "lifespan.startup.complete"})
            else:
                note("shutdown")
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/slow":
        note("slow request started")
        await asyncio.sleep(1.0)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"answered"})
try:
    serve(app, "127.0.0.1", int(sys.argv[2]), HTTPServer(sys.argv[3]))
finally:
    note("serve returned")
"""


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_answers_the_request_in_flight_runs_lifespan_shutdown_and_returns(tmp_path: Path, server) -> None:
    events, port = tmp_path / "events", free_port()
    proc = subprocess.Popen([sys.executable, "-c", _APP, str(events), str(port), server])
    url = f"http://127.0.0.1:{port}"
    try:
        assert eventually(lambda: _answers(url + "/")), "the server did not start"
        answer: list[httpx.Response] = []
        slow = threading.Thread(target=lambda: answer.append(httpx.get(url + "/slow", timeout=30)))
        slow.start()
        assert eventually(lambda: "slow request started" in _read(events))
        proc.send_signal(signal.SIGTERM)
        slow.join(30)
        assert proc.wait(60) == 0  # not killed by its own signal: the code after serve() ran
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [(r.status_code, r.text) for r in answer] == [(200, "answered")]
    assert _read(events).splitlines() == ["startup", "slow request started", "shutdown", "serve returned"]


@pytest.mark.parametrize("server", SERVERS)
def test_sigterm_under_observe_load_closes_velox_and_keeps_every_acknowledged_observation(
    tmp_path: Path, server
) -> None:
    arrays, meta = synthetic_version_arrays(name="songs")
    VersionStore(HomeLayout(tmp_path).versions_dir("songs")).write(arrays, meta)
    process = ServerProcess(tmp_path, "--http-server", server)
    process.wait_ready()
    acked: list[tuple[str, int, float]] = []
    stop = threading.Event()
    threads = observe_load([process], [f"term-{u}" for u in range(30)], acked, stop)
    assert eventually(lambda: len(acked) >= 200)
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(60) == 0  # Velox.close ran: _serve returns 0 only after it
    stop.set()
    for t in threads:
        t.join(30)
    with ObservationLog(HomeLayout(tmp_path).log_dir("songs")) as obs_log:
        remaining = [(r.user, int(r.item), r.score) for r in obs_log.replay(0)]
    for obs in acked:  # every acknowledged observation is in the log (as a multiset)
        remaining.remove(obs)

    restarted = ServerProcess(tmp_path, "--http-server", server)  # and the home serves again
    restarted.wait_ready()
    restarted.stop()
    assert restarted.proc.returncode == 0


@pytest.mark.parametrize("server", SERVERS)
def test_bad_input_is_refused_with_a_message_and_the_server_keeps_serving(tmp_path: Path, server) -> None:
    arrays, meta = synthetic_version_arrays(name="songs")
    VersionStore(HomeLayout(tmp_path).versions_dir("songs")).write(arrays, meta)
    process = ServerProcess(tmp_path, "--http-server", server)
    process.wait_ready()
    try:
        with httpx.Client(base_url=process.url, timeout=30) as http:
            before = http.get("/models/songs/predict", params={"user": 3, "item": 101}).json()["score"]
            garbled = http.post("/models/songs/observe", content=b'{"user": 3, "item"', headers=_JSON)
            assert garbled.status_code == 400 and "JSON" in garbled.json()["message"]
            huge = http.post("/models/songs/observe", content=b"[" * 1000 + b"]" * 1000, headers=_JSON)
            assert huge.status_code == 400
            too_large = http.post("/models/songs/observe", content=b" " * (64 << 20), headers=_JSON)
            assert too_large.status_code == 413
            after = http.get("/models/songs/predict", params={"user": 3, "item": 101}).json()["score"]
        assert after == before  # a refused request changed nothing
        np.testing.assert_allclose(after, _score(arrays, user=3, item=1), rtol=1e-9)
    finally:
        process.stop()
    assert process.proc.returncode == 0


_JSON = {"content-type": "application/json"}


def _score(arrays: dict, user: int, item: int) -> float:
    """The version's split score w_u · f(x) (identity link), from its arrays: f = [V_i, 3 + b_i, 1]."""
    f = np.concatenate([arrays["item_factors"][item], [3.0 + arrays["item_bias"][item], 1.0]])
    return float(arrays["user_weights"][user] @ f)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""
