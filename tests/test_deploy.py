"""deploy/nginx.conf, run by a real nginx in front of two real `veloxserve serve` processes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import synthetic_version_arrays
from tests.helpers import ServerProcess, free_port
from veloxserve.config import HomeLayout
from veloxserve.storage.versions import VersionStore

CONF = Path(__file__).resolve().parents[1] / "deploy" / "nginx.conf"


def _nginx() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None:
        message = "nginx is not installed (Debian: apt-get install nginx); it is required to test deploy/nginx.conf"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def _render(listen: int, backends: list[int]) -> str:
    """deploy/nginx.conf with this test's ports: the file as shipped, not a copy of it."""
    text = CONF.read_text()
    text, listens = re.subn(r"listen 127\.0\.0\.1:\d+;", f"listen 127.0.0.1:{listen};", text)
    servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;" for port in backends)
    text, upstreams = re.subn(r"(\s*server 127\.0\.0\.1:\d+ [^\n]*;)+", "\n" + servers, text, count=1)
    assert listens == 1 and upstreams == 1, "deploy/nginx.conf changed shape: update this test"
    return text


@pytest.fixture
def cluster(tmp_path: Path):
    nginx = _nginx()
    servers = []
    for i in range(2):
        home = tmp_path / f"home{i}"
        arrays, meta = synthetic_version_arrays(name="songs")
        VersionStore(HomeLayout(home).versions_dir("songs")).write(arrays, meta)
        servers.append(ServerProcess(home))
    for server in servers:
        server.wait_ready()
    prefix, port = tmp_path / "nginx", free_port()
    (prefix / "tmp").mkdir(parents=True)
    (prefix / "nginx.conf").write_text(_render(port, [s.port for s in servers]))
    subprocess.run([nginx, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")], check=True, capture_output=True)
    proxy = subprocess.Popen([nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"])
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url, servers
    finally:
        proxy.send_signal(signal.SIGQUIT)
        proxy.wait(30)
        for server in servers:
            server.stop()


def _served(server: ServerProcess) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(
        float(v) for v in re.findall(r'veloxserve_requests_total\{route="predict",status="200"\} ([\d.e+]+)', text)
    )


def test_nginx_spreads_requests_passes_errors_through_and_survives_a_dead_backend(cluster) -> None:
    url, servers = cluster
    with httpx.Client(base_url=url, timeout=10) as client:
        for user in range(40):
            assert client.get("/models/songs/predict", params={"user": user, "item": 101}).status_code == 200
        assert all(_served(s) > 0 for s in servers)  # both processes answered
        shed = client.get("/models/songs/predict", params={"user": 1, "item": 101}, headers={"x-deadline-ms": "1e-9"})
        assert shed.status_code == 503 and shed.headers["retry-after"]  # header in, Retry-After out
        refused = client.put("/models/songs/policy", json={"every_observations": 5})
        assert refused.status_code == 401 and "token create" in refused.json()["message"]
        servers[0].kill()  # kill -9: nginx finds out on the next connection and moves on
        for user in range(20):
            assert client.get("/models/songs/predict", params={"user": user, "item": 101}).status_code == 200
            observed = client.post("/models/songs/observe", json={"user": user, "item": 101, "score": 4.0})
            assert observed.status_code == 200
