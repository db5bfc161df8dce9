"""A hung Redis (SIGSTOP: connections open, nothing answered) and a Redis that lost its data, against
a real `veloxserve serve --store redis://...` over a redis-server of the test's own."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.helpers import RedisServer, ServerProcess, eventually
from tests.serving.test_shared_state import F, _home, _logged, _rebuilds, expected_weights


@pytest.fixture
def own_redis(tmp_path: Path):
    redis_server = RedisServer(tmp_path / "redis").start()
    try:
        yield redis_server
    finally:
        if redis_server.proc is not None and redis_server.proc.poll() is None:
            redis_server.proc.send_signal(signal.SIGCONT)  # never leave a stopped redis behind
        redis_server.stop()


@pytest.fixture
def served(tmp_path: Path, own_redis: RedisServer):
    home = _home(tmp_path / "home")
    server = ServerProcess(home, "--store", own_redis.url + "?prefix=hang", "--instance", "a")
    try:
        server.wait_ready()
        yield home, server
    finally:
        server.stop()


def _in_flight(http: httpx.Client) -> int:
    return http.get("/models/songs/metrics").json()["admission"]["in_flight"]


def test_a_hung_redis_leaves_unrelated_routes_answering_while_a_prediction_waits_then_fails_with_503(
    own_redis: RedisServer, served
) -> None:
    home, server = served
    http = httpx.Client(base_url=server.url, timeout=60)  # a hang would be this client's timeout
    for n in range(5):
        assert (
            http.post("/models/songs/observe", json={"user": "fresh-h", "item": 100 + n, "score": 4.0}).status_code
            == 200
        )
    assert http.get("/models/songs/predict", params={"user": "fresh-h", "item": 101}).status_code == 200

    own_redis.proc.send_signal(signal.SIGSTOP)
    hung: dict = {}

    def predict() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            hung["response"] = client.get("/models/songs/predict", params={"user": "fresh-h", "item": 102})

    waiting = threading.Thread(target=predict)
    waiting.start()
    # (a) The prediction is in the server, waiting for Redis, and meanwhile the routes that need no
    # Redis answer: on the event loop-blocking code, this poll itself waited until the prediction ended.
    assert eventually(lambda: _in_flight(http) >= 1, within=30), "the prediction never showed as in flight"
    answered, while_waiting = {}, []
    for path in ("/healthz", "/metrics", "/models", "/models/songs"):
        answered[path] = http.get(path)
        while_waiting.append(waiting.is_alive())
    waiting.join(60)
    assert all(r.status_code == 200 for r in answered.values()), {p: r.status_code for p, r in answered.items()}
    # The shape, robust to a loaded machine: at least the first answers came while the prediction
    # still waited (with a blocked loop, none would have: each waited for the prediction to end).
    assert while_waiting[0], "the unrelated routes were answered only after the prediction had failed"

    # (b) The Redis-bound request fails with 503 + Retry-After, naming Redis, instead of hanging.
    r = hung["response"]
    assert r.status_code == 503, r.text
    assert r.json()["error"] == "StoreUnavailable" and "Redis at redis://127.0.0.1" in r.json()["message"]
    assert int(r.headers["retry-after"]) >= 1
    observed = http.post("/models/songs/observe", json={"user": "fresh-h", "item": 110, "score": 1.0})
    assert observed.status_code == 503 and "retry-after" in observed.headers, observed.text
    assert eventually(lambda: http.get("/healthz").json()["status"] == "degraded", within=30)
    assert "has not answered" in " ".join(http.get("/healthz").json()["degraded"]["songs"])

    # (c) After SIGCONT it recovers by itself: predictions, observations and /healthz.
    own_redis.proc.send_signal(signal.SIGCONT)
    assert eventually(
        lambda: http.get("/models/songs/predict", params={"user": "fresh-h", "item": 102}).status_code == 200, within=30
    )
    assert eventually(
        lambda: (
            http.post("/models/songs/observe", json={"user": "fresh-h", "item": 111, "score": 2.0}).status_code == 200
        ),
        within=30,
    )
    assert eventually(lambda: http.get("/healthz").json()["status"] == "ok", within=30)
    logged = _logged(home)  # what was refused while Redis hung is logged and learned once it is back
    assert eventually(
        lambda: (
            abs(
                http.get("/models/songs/predict", params={"user": "fresh-h", "item": 117}).json()["score"]
                - F[17] @ expected_weights("fresh-h", logged)
            )
            < 1e-7
        ),
        within=30,
    )
    http.close()


def test_after_flushall_the_server_says_so_and_rebuilds_users_from_the_logs_instead_of_serving_defaults(
    own_redis: RedisServer, served
) -> None:
    import redis

    home, server = served
    http = httpx.Client(base_url=server.url, timeout=60)
    for n in range(10):
        for user in ("3", "fresh-f"):
            assert (
                http.post("/models/songs/observe", json={"user": user, "item": 100 + n, "score": 5.0}).status_code
                == 200
            )
    trained = F[17] @ expected_weights("3", [])
    learned = F[17] @ expected_weights("3", _logged(home))
    assert abs(learned - trained) > 1e-3  # so serving the trained weights would show
    client = redis.Redis.from_url(own_redis.url)
    client.flushall()
    client.close()
    deadline = time.monotonic() + 60  # only stops a broken test
    while _rebuilds(server) < 1:  # until rebuilt: 503 naming the loss, never the trained weights
        assert time.monotonic() < deadline, "the loss was not detected"
        r = http.get("/models/songs/predict", params={"user": "3", "item": 117})
        if r.status_code == 200:
            assert abs(r.json()["score"] - learned) < 1e-7, "a trained default served as the user's state"
        else:
            assert r.status_code == 503 and "lost the users' state" in r.json()["message"], r.text
    for user in ("3", "fresh-f"):
        w = expected_weights(user, _logged(home))
        r = http.get("/models/songs/predict", params={"user": user, "item": 117})
        assert r.status_code == 200 and abs(r.json()["score"] - F[17] @ w) < 1e-7, (user, r.text)
    assert http.post("/models/songs/observe", json={"user": "3", "item": 140, "score": 1.0}).status_code == 200
    got = http.get("/models/songs/predict", params={"user": "3", "item": 117}).json()["score"]
    assert abs(got - F[17] @ expected_weights("3", _logged(home))) < 1e-7
    assert eventually(lambda: http.get("/healthz").json()["status"] == "ok", within=30)
    http.close()
