"""Bad input over a real HTTP server: oversized bodies, deep JSON, huge values, HEAD, encoded ids.

One server for the module (raw sockets where a client library would hide what is on the wire)."""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from tests.conftest import synthetic_version_arrays
from tests.helpers import ServerProcess, admin_headers
from veloxserve.api.app import MAX_BODY_BYTES
from veloxserve.config import HomeLayout
from veloxserve.storage.versions import VersionStore


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    arrays, meta = synthetic_version_arrays(name="songs")
    VersionStore(HomeLayout(home).versions_dir("songs")).write(arrays, meta)
    server = ServerProcess(home)
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, headers=admin_headers(home), timeout=60) as client:
            yield server, client
    finally:
        server.stop()


def _raw(port: int, request: bytes, timeout: float = 60.0) -> bytes:
    """Send `request` as is and return what the server answers before it closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(65536)
            if not chunk:
                break
            head += chunk
        return head


def test_a_body_over_the_limit_is_413_from_content_length_before_it_is_read(served) -> None:
    server, _ = served
    declared = 60 << 20
    # Headers only: a server that read the body first would wait for 60 MB that never come.
    answer = _raw(
        server.port,
        (
            f"POST /models/songs/observe HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {declared}\r\n\r\n"
        ).encode(),
    )
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line.split()[1] == b"413", answer[:300]
    assert str(MAX_BODY_BYTES).encode() in answer or b"content-length" in rest.lower()


def test_a_chunked_body_over_the_limit_is_413_and_changes_nothing(served) -> None:
    _, client = served
    before = client.get("/models/songs/metrics").json()["prequential"]
    row = json.dumps({"user": "chunky", "item": 101, "score": 3.0}).encode()

    block = (row + b",") * (65536 // (len(row) + 1))

    def body():  # a generator: httpx sends it chunked, without a Content-Length
        yield b'{"observations": ['
        for _ in range(MAX_BODY_BYTES // len(block) + 2):
            yield block
        yield row + b"]}"

    r = client.post("/models/songs/observe", content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge" and r.json()["field"] == "body"
    assert client.get("/models/songs/metrics").json()["prequential"] == before


def test_json_nested_a_thousand_deep_inside_a_field_is_a_400_naming_it(served) -> None:
    _, client = served
    deep = "[" * 1000 + "]" * 1000
    body = '{"user": ' + deep + ', "item": 101, "score": 3.0}'
    r = client.post("/models/songs/observe", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["field"].endswith("user") and r.json()["field"] in r.json()["message"]


def test_an_error_quotes_only_a_short_prefix_of_a_huge_value(served) -> None:
    _, client = served
    huge = "u" * 1_000_000
    r = client.post("/models/songs/observe", json={"user": huge, "item": 101, "score": 3.0})
    assert r.status_code == 400 and r.json()["field"].endswith("user")
    assert len(r.content) < 1000 and "1000000 characters" in r.json()["message"]
    r = client.post("/models/songs/retrain", json={huge: 1})  # an unknown option's name is the client's too
    assert r.status_code == 400 and len(r.content) < 1000


GET_ROUTES = [
    "/healthz",
    "/openapi.json",
    "/models",
    "/metrics",
    "/models/songs",
    "/models/songs/predict?user=1&item=101",
    "/models/songs/top_k?user=1&k=3",
    "/models/songs/versions",
    "/models/songs/versions/v1",
    "/models/songs/retrain",
    "/models/songs/policy",
    "/models/songs/predict?user=1&item=nope",
]


@pytest.mark.parametrize("path", GET_ROUTES)
def test_head_answers_like_get_without_a_body(served, path: str) -> None:
    _, client = served
    got, head = client.get(path), client.head(path)
    assert head.status_code == got.status_code
    assert head.content == b""
    same = {"content-type", "content-length", "allow", "retry-after"}
    assert {k: v for k, v in head.headers.items() if k in same} == {k: v for k, v in got.headers.items() if k in same}
    assert int(head.headers["content-length"]) == len(got.content)


def test_a_405_for_a_get_route_allows_head_too(served) -> None:
    _, client = served
    r = client.delete("/models/songs/predict")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"GET", "POST", "HEAD"}


@pytest.mark.parametrize("user", ["a/b", "a%2Fb", "100% sure", "x?y=1", "é/ü"])
def test_a_user_id_with_reserved_characters_is_observed_and_forgotten_percent_encoded(served, user: str) -> None:
    _, client = served
    from urllib.parse import quote

    r = client.post("/models/songs/observe", json={"user": user, "item": 101, "score": 4.5})
    assert r.status_code == 200, r.text
    encoded = quote(user, safe="")
    r = client.delete(f"/models/songs/users/{encoded}")
    assert r.status_code == 200, r.text
    assert r.json()["user"] == user and r.json()["models"]["songs"]["log_records_erased"] >= 1
    client.post("/models/songs/observe", json={"user": user, "item": 102, "score": 1.0})
    r = client.delete(f"/users/{encoded}")
    assert r.status_code == 200 and r.json()["user"] == user
    assert r.json()["models"]["songs"]["log_records_erased"] >= 1
