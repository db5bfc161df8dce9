"""Several real `veloxserve serve --store redis://...` processes over one Redis: no lost update,
no lost acknowledged observation under kill -9, fast 503s while Redis is down and recovery after."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import synthetic_version_arrays
from tests.helpers import RedisServer, ServerProcess, eventually, observe_load
from veloxserve.config import HomeLayout
from veloxserve.storage.observation_log import read_merged
from veloxserve.storage.versions import VersionStore

ARRAYS, META = synthetic_version_arrays(name="songs")
F = np.column_stack([ARRAYS["item_factors"], 3.0 + ARRAYS["item_bias"], np.ones(50)])


def _home(tmp_path: Path) -> Path:
    VersionStore(HomeLayout(tmp_path).versions_dir("songs")).write(ARRAYS, META)
    return tmp_path


def _servers(home: Path, url: str, instances: list[str]) -> list[ServerProcess]:
    servers = [ServerProcess(home, "--store", url, "--instance", name) for name in instances]
    for server in servers:
        server.wait_ready()
    return servers


def expected_weights(user: str, observations: list[tuple[str, int, float]]) -> np.ndarray:
    """The ridge solution from the trained statistics (or the prior) plus every observation of
    the user, in any order: what one process replaying them all would learn."""
    ids = list(ARRAYS["user_ids"])
    if user in ids:
        A, r = ARRAYS["user_gram"][ids.index(user)].copy(), ARRAYS["user_rhs"][ids.index(user)].copy()
    else:
        lam = META["prior_precision"]
        A, r = lam * np.eye(6), lam * ARRAYS["prior_mean"]
    for u, item, y in observations:
        if u == user:
            f = F[item - 100]
            A += np.outer(f, f)
            r += y * f
    return np.linalg.solve(A, r)


def _logged(home: Path) -> list[tuple[str, int, float]]:
    return [(r.user, int(r.item), r.score) for _, r in read_merged(HomeLayout(home).log_dir("songs"))]


def _served_mismatches(server: ServerProcess, users, observations) -> list:
    wrong = []
    for user in users:
        w = expected_weights(user, observations)
        for item in (100, 117, 149):
            got = httpx.get(f"{server.url}/models/songs/predict", params={"user": user, "item": item}).json()["score"]
            if abs(got - F[item - 100] @ w) > 1e-7 * max(1.0, abs(got)):
                wrong.append((user, item, got, F[item - 100] @ w))
    return wrong


def _assert_served_weights(server: ServerProcess, users, observations, within: float = 30.0) -> None:
    """The server's predictions equal the replay of `observations`, at once or, for observations
    answered 503 and learned in the background, within `within` seconds."""
    deadline = time.monotonic() + within
    while (wrong := _served_mismatches(server, users, observations)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not wrong, wrong[:3]


def test_two_servers_learning_the_same_users_lose_no_update(tmp_path: Path, redis_url: str) -> None:
    home = _home(tmp_path)
    servers = _servers(home, redis_url, ["a", "b"])
    users = ["0", "1", "fresh-x", "fresh-y"]  # two trained users, two new ones
    acked: list = []
    refused: list = []  # none on a machine that keeps up; a 503 under overload is logged, not acknowledged
    stop = threading.Event()
    threads = observe_load(servers, users, acked, stop, refused=refused)
    while len(acked) < 600:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    logged = _logged(home)
    assert not Counter(acked) - Counter(logged), "an acknowledged observation is missing from the logs"
    assert not Counter(logged) - Counter(acked) - Counter(refused), "the logs hold an observation nobody sent"
    for server in servers:  # every process serves what all of them learned
        _assert_served_weights(server, users, logged)
    for server in servers:
        server.stop()
    assert {p.name for p in (HomeLayout(home).log_dir("songs") / "instances").iterdir()} == {"a", "b"}


def test_sigkill_of_one_server_under_load_loses_no_acknowledged_observation(tmp_path: Path, redis_url: str) -> None:
    home = _home(tmp_path)
    servers = _servers(home, redis_url, ["a", "b"])
    users = ["2", "fresh-z"]
    acked: list = []
    stop = threading.Event()
    threads = observe_load(servers, users, acked, stop, workers=8)
    while len(acked) < 300:
        time.sleep(0.05)
    servers[0].kill()
    n_at_kill = len(acked)
    while len(acked) < n_at_kill + 100:  # the other server keeps learning the same users
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    assert servers[0].proc.returncode == -9
    restarted = _servers(home, redis_url, ["a"])[0]  # replays a's log tail into Redis, idempotently
    logged = _logged(home)
    assert not Counter(acked) - Counter(logged), "an acknowledged observation is missing from the logs"
    for server in (restarted, servers[1]):
        _assert_served_weights(server, users, logged)
    restarted.stop(), servers[1].stop()


def test_redis_outage_fails_fast_with_503_and_the_server_recovers_by_itself(tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path / "redis").start()  # our own: this test stops it
    try:
        home = _home(tmp_path / "home")
        server = _servers(home, redis_server.url + "?prefix=outage", ["a"])[0]
        http = httpx.Client(base_url=server.url, timeout=30)
        acked = []
        for n in range(5):
            obs = {"user": "fresh-o", "item": 100 + n, "score": 4.0}
            assert http.post("/models/songs/observe", json=obs).status_code == 200
            acked.append((obs["user"], obs["item"], obs["score"]))
        redis_server.stop()
        for request in (
            lambda: http.post("/models/songs/observe", json={"user": "fresh-o", "item": 101, "score": 1.0}),
            lambda: http.get("/models/songs/predict", params={"user": "fresh-o", "item": 101}),
        ):
            r = request()  # a hang would be the client's 30 s timeout
            assert r.status_code == 503
            assert r.json()["error"] == "StoreUnavailable" and "Redis at redis://127.0.0.1" in r.json()["message"]
        redis_server.start()  # same port, same append-only file
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = http.post("/models/songs/observe", json={"user": "fresh-o", "item": 120, "score": 2.0})
            if r.status_code == 200:
                break
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        _assert_served_weights(server, ["fresh-o", "0"], _logged(home))
        assert not Counter(acked + [("fresh-o", 120, 2.0)]) - Counter(_logged(home))
        http.close()
        server.stop()
    finally:
        redis_server.stop()


def _rebuilds(server: ServerProcess) -> float:
    for line in httpx.get(f"{server.url}/metrics").text.splitlines():
        if line.startswith('veloxserve_redis_state_rebuilds_total{model="songs"}'):
            return float(line.split()[-1])
    return 0.0


def test_after_redis_loses_its_data_under_load_every_server_rebuilds_users_from_all_logs_by_itself(
    tmp_path: Path, redis_url: str
) -> None:
    import redis

    home = _home(tmp_path)
    servers = _servers(home, redis_url, ["a", "b"])
    users = ["3", "4", "fresh-l", "fresh-m"]
    acked: list = []
    refused: list = []  # 503s while the state is rebuilt: logged or not, never acknowledged
    stop = threading.Event()
    threads = observe_load(servers, users, acked, stop, workers=4, refused=refused)
    while len(acked) < 200:
        time.sleep(0.05)
    base, prefix = redis_url.split("?prefix=")
    client = redis.Redis.from_url(base)
    client.delete(*client.scan_iter(match=f"{prefix}:*"))  # what a Redis restarted without persistence holds
    assert eventually(lambda: all(_rebuilds(s) >= 1 for s in servers), within=60), "a server did not notice the loss"
    n_after = len(acked)
    assert eventually(lambda: len(acked) >= n_after + 200, within=60), "learning did not resume after the rebuild"
    stop.set()
    for t in threads:
        t.join()
    logged = _logged(home)
    assert not Counter(acked) - Counter(logged), "an acknowledged observation is missing from the logs"
    for server in servers:  # both serve every log, not the trained statistics
        _assert_served_weights(server, users, logged)
    for server in servers:
        server.stop()
    restarted = _servers(home, redis_url, ["a"])[0]  # and a restart finds the same state
    _assert_served_weights(restarted, users, logged, within=0)
    restarted.stop()
    client.close()
