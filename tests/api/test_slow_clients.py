"""Slow clients cannot shed everyone: the time a client takes to send its body is not service time.

A real server with a latency objective; raw sockets trickle request bodies into it."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx

from tests.conftest import synthetic_version_arrays
from tests.helpers import ServerProcess
from veloxserve.config import HomeLayout
from veloxserve.storage.versions import VersionStore

OBJECTIVE_MS = 1000
TRICKLE_S = 2.5  # longer than the objective: counted as service, it would refuse every request after it


def _home(root: Path) -> Path:
    arrays, meta = synthetic_version_arrays(name="songs")
    VersionStore(HomeLayout(root).versions_dir("songs")).write(arrays, meta)
    return root


def _read_status(sock: socket.socket) -> int:
    answer = b""
    while b"\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return int(answer.split()[1])


def test_bodies_trickled_by_slow_clients_do_not_shed_the_fast_requests_after_them(tmp_path: Path) -> None:
    server = ServerProcess(_home(tmp_path), "--no-auth", "--objective-ms", str(OBJECTIVE_MS))
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=60) as client:
            for _ in range(20):  # a served estimate of the fast path first
                assert client.get("/models/songs/predict", params={"user": 1, "item": 101}).status_code == 200
            body = json.dumps({"queries": [{"user": 1, "item": 101}, {"user": 2, "item": 102}]}).encode()
            head = (
                f"POST /models/songs/predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body)}\r\n\r\n"
            ).encode()
            slow = [socket.create_connection(("127.0.0.1", server.port), timeout=60) for _ in range(3)]
            try:
                for sock in slow:  # headers and the first half of each body now, the rest much later
                    sock.sendall(head + body[: len(body) // 2])
                time.sleep(TRICKLE_S)
                for sock in slow:
                    sock.sendall(body[len(body) // 2 :])
                assert [_read_status(sock) for sock in slow] == [200, 200, 200]
            finally:
                for sock in slow:
                    sock.close()
            statuses = [
                client.get("/models/songs/predict", params={"user": 1, "item": 101}).status_code for _ in range(50)
            ]
            assert statuses.count(503) == 0, statuses
            service = client.get("/models/songs/metrics").json()["admission"]["service_ms"]["predict"]
            assert service["samples"] == 20 + 3 + 50
    finally:
        server.stop()
