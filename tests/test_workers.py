"""`serve --workers 2`: both workers answer on one port, and kill -9 of either loses nothing acknowledged."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import httpx
import pytest

from tests.clipper.conftest import constant_model, write_callable
from tests.conftest import synthetic_version_arrays
from tests.helpers import ServerProcess, eventually
from veloxserve.config import HomeLayout
from veloxserve.serving.velox import Velox
from veloxserve.storage.versions import VersionStore


def _two_workers(home: Path):
    server = ServerProcess(home, "--workers", "2", "--no-auth")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def workers(tmp_path: Path):
    arrays, meta = synthetic_version_arrays(name="songs")
    VersionStore(HomeLayout(tmp_path).versions_dir("songs")).write(arrays, meta)
    yield from _two_workers(tmp_path)


def _pids(server: ServerProcess, n: int = 60) -> dict[str, str]:
    """Worker index -> pid, as the answers of `n` new connections name them."""
    seen = {}
    for _ in range(n):
        with httpx.Client(base_url=server.url, timeout=30) as http:  # a new connection each time
            r = http.get("/healthz")
        if r.status_code == 200:
            seen[r.headers["x-veloxserve-worker"]] = r.headers["x-veloxserve-pid"]
    return seen


def test_both_workers_serve_and_each_reads_what_either_acknowledged(workers: ServerProcess) -> None:
    assert eventually(lambda: set(_pids(workers)) == {"0", "1"}, within=120)
    by_worker: dict[str, list[float]] = {"0": [], "1": []}
    for n in range(40):
        with httpx.Client(base_url=workers.url, timeout=30) as http:
            ack = http.post("/models/songs/observe", json={"user": "ryw", "item": 100 + n % 50, "score": 5.0})
            assert ack.status_code == 200, ack.text
            # a new connection: it may land on the other worker, and still sees the write
            got = http.get("/models/songs/predict", params={"user": "ryw", "item": 100 + n % 50})
        assert got.status_code == 200
        by_worker[got.headers["x-veloxserve-worker"]].append(got.json()["score"])
    assert by_worker["0"] and by_worker["1"]
    with httpx.Client(base_url=workers.url, timeout=30) as http:
        final = http.get("/models/songs/predict", params={"user": "ryw", "item": 139}).json()["score"]
    for _ in range(10):  # whichever worker answers, the same learned state
        with httpx.Client(base_url=workers.url, timeout=30) as http:
            assert http.get("/models/songs/predict", params={"user": "ryw", "item": 139}).json()["score"] == final


def _answer(
    server: ServerProcess,
    path: str,
    params: dict | None,
    worker: str,
    local: bool = True,
    json: dict | None = None,
    killed: bool = False,
) -> httpx.Response:
    """The answer to GET `path` (POST with `json`) from `worker`, computed there (`local`) or
    forwarded to worker 0: new connections until the kernel gives one to that worker.

    `killed`: another worker was just killed. A connection the kernel queued on the dead worker's
    listening socket (SO_REUSEPORT gives each worker its own queue) is reset; that is that worker's
    connection, never `worker`'s answer, so it is retried rather than failing the test."""
    for _ in range(400):
        try:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                r = http.get(path, params=params) if json is None else http.post(path, json=json)
        except httpx.TransportError:
            if not killed:
                raise
            continue
        if r.headers.get("x-veloxserve-worker") == worker and ("x-veloxserve-forwarded" not in r.headers) == local:
            return r
    raise AssertionError(f"no answer from worker {worker} (local={local}) in 400 connections")


def test_a_reader_answers_predictions_itself_with_every_acknowledged_observation(workers: ServerProcess) -> None:
    query = {"user": "fresh", "item": 120}
    first = _answer(workers, "/models/songs/predict", query, "1")  # answered by the reader, from the map
    assert first.status_code == 200
    assert first.json()["score"] == _answer(workers, "/models/songs/predict", query, "0").json()["score"]
    for n in range(8):
        with httpx.Client(base_url=workers.url, timeout=30) as http:
            ack = http.post("/models/songs/observe", json={"user": "fresh", "item": 100 + n, "score": 5.0 - n})
        assert ack.status_code == 200, ack.text
        by_reader = _answer(workers, "/models/songs/predict", query, "1").json()["score"]
        assert by_reader == _answer(workers, "/models/songs/predict", query, "0").json()["score"]
        assert by_reader != first.json()["score"]  # the observations moved it
    # top-k lists too, from the same published state (each logged by the worker that served it)
    top = {"user": "fresh", "k": 5, "exclude_seen": "true"}
    by_reader, by_learner = (_answer(workers, "/models/songs/top_k", top, w).json() for w in ("1", "0"))
    assert by_reader["items"] == by_learner["items"] and by_reader["decision"] != by_learner["decision"]
    assert {e["item"] for e in by_reader["items"]}.isdisjoint({100 + n for n in range(8)})  # seen: excluded
    # LinUCB needs the covariance, which is not published: worker 0 computes it
    assert _answer(workers, "/models/songs/top_k", {**top, "policy": "linucb"}, "1", local=False).status_code == 200
    # observe is the learner's: a reader forwards it
    for _ in range(40):
        with httpx.Client(base_url=workers.url, timeout=30) as http:
            r = http.post("/models/songs/observe", json={"user": "fresh", "item": 101, "score": 1.0})
        if r.headers["x-veloxserve-worker"] == "1":
            assert r.headers["x-veloxserve-forwarded"] == "1"
            break
    else:
        raise AssertionError("no observation reached worker 1")


def test_metrics_count_the_requests_every_worker_answered(workers: ServerProcess) -> None:
    answered: dict[tuple[str, bool], int] = {}
    for n in range(60):
        with httpx.Client(base_url=workers.url, timeout=30) as http:  # new connections: both workers
            r = http.get("/models/songs/predict", params={"user": f"m{n}", "item": 100 + n % 50})
        assert r.status_code == 200
        key = (r.headers["x-veloxserve-worker"], "x-veloxserve-forwarded" not in r.headers)
        answered[key] = answered.get(key, 0) + 1
    assert answered.get(("1", True)) and answered.get(("0", True))  # each worker computed some itself
    with httpx.Client(base_url=workers.url, timeout=30) as http:
        text = http.get("/metrics").text  # answered by worker 0, whichever worker took it
    line = next(x for x in text.splitlines() if x.startswith('veloxserve_requests_total{route="predict",status="200"}'))
    assert float(line.split()[-1]) == 60  # summed over the workers, each counted once


def test_monitoring_counts_the_predictions_every_worker_answered_while_it_lives(workers: ServerProcess) -> None:
    computed: dict[str, int] = {"0": 0, "1": 0}  # by the worker that computed the answer
    for n in range(60):
        with httpx.Client(base_url=workers.url, timeout=30) as http:  # new connections: both workers
            r = http.get("/models/songs/predict", params={"user": f"new-{n}", "item": 100 + n % 50})
        assert r.status_code == 200
        computed["0" if "x-veloxserve-forwarded" in r.headers else r.headers["x-veloxserve-worker"]] += 1
    assert computed["1"] and computed["0"]

    def deviations(worker: str, killed: bool = False) -> dict:
        alerts = _answer(workers, "/models/songs/alerts", None, worker, local=worker == "0", killed=killed)
        return alerts.json()["deviations"]

    # worker 0 reports, with the reader's requests, whichever worker took the request
    assert eventually(lambda: deviations("0")["user_requests"] == 60, within=60)
    assert deviations("1")["user_requests"] == 60
    found = deviations("0")
    assert found["new_users_share"] == 1.0 and found["items_requested"] == 60 and found["served_sample"] == 60

    reader = int(_pids(workers)["1"])
    os.kill(reader, signal.SIGKILL)  # a dead reader's requests stop counting: worker 0's own are left
    assert eventually(lambda: deviations("0", killed=True)["user_requests"] == computed["0"], within=60)


def test_clipper_applications_are_served_by_every_worker_over_worker_0s_containers(
    workers: ServerProcess, tmp_path: Path
) -> None:
    model = write_callable(tmp_path / "models-in" / "k.pkl", constant_model(2.5))
    with httpx.Client(base_url=workers.url, timeout=120) as http:  # admin: worker 0 owns the containers
        deployed = http.post("/containers", json={"name": "k", "framework": "callable", "model": str(model)})
        assert deployed.status_code == 200, deployed.text
        assert http.post("/apps", json={"name": "a", "models": ["k"]}).status_code == 200

    for worker in ("1", "0"):  # each frontend batches its own queries to the same container
        # the reader's frontend attaches within a poll (0.2 s); before, worker 0 answers
        answer = _answer(workers, "/apps/a/predict", None, worker, json={"user": "u", "input": [1.0, 2.0]})
        assert answer.status_code == 200 and answer.json()["output"] == 2.5, answer.text
        fed = _answer(workers, "/apps/a/observe", None, worker, json={"user": "u", "input": [1.0, 2.0], "label": 2.0})
        assert fed.status_code == 200, fed.text
    pids = set()
    for _ in range(20):  # one container, started by worker 0 only
        with httpx.Client(base_url=workers.url, timeout=30) as http:
            pids |= {r["pid"] for r in http.get("/containers/k").json()["replicas"]}
    assert len(pids) == 1


@pytest.fixture
def two_versions(tmp_path: Path):
    store = VersionStore(HomeLayout(tmp_path).versions_dir("songs"))
    for seed, version in ((0, "v1"), (1, "v2")):
        arrays, meta = synthetic_version_arrays(name="songs", seed=seed, version=version)
        store.write(arrays, meta, version=version)
    HomeLayout(tmp_path).active_file("songs").write_text("v1\n")  # the newest would serve otherwise
    yield from _two_workers(tmp_path)


def test_a_switch_and_a_forget_hold_on_every_worker_once_they_return(two_versions: ServerProcess) -> None:
    server = two_versions
    query = {"user": "2", "item": 110}  # a trained user of both versions
    assert _answer(server, "/models/songs/predict", query, "1").json()["model_version"] == "v1"
    with httpx.Client(base_url=server.url, timeout=120) as http:
        assert http.post("/models/songs/observe", json={"user": "2", "item": 111, "score": 4.0}).status_code == 200
        assert http.post("/models/songs/versions/v2/activate").status_code == 200
    for _ in range(30):  # from the moment activate returned: v2, from whichever worker, however computed
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/models/songs/predict", params=query).json()["model_version"] == "v2"
    learned = _answer(server, "/models/songs/predict", query, "1")  # the reader loaded v2
    assert learned.json() == _answer(server, "/models/songs/predict", query, "0").json()
    prior = _answer(server, "/models/songs/predict", {"user": "never-seen", "item": 110}, "1").json()["score"]
    assert learned.json()["score"] != prior
    with httpx.Client(base_url=server.url, timeout=120) as http:
        assert http.delete("/models/songs/users/2").status_code == 200
    for worker in ("1", "0"):  # forgotten everywhere once the receipt returned: the prior's answer
        assert _answer(server, "/models/songs/predict", query, worker).json()["score"] == prior


def test_bad_input_is_refused_by_either_worker_and_changes_nothing(workers: ServerProcess, tmp_path: Path) -> None:
    refused: dict[str, int] = {}
    for _ in range(40):
        with httpx.Client(base_url=workers.url, timeout=30) as http:
            r = http.post(
                "/models/songs/observe",
                content=b'{"user": "bad", "item": 101, "score": ',
                headers={"content-type": "application/json"},
            )
        refused[r.headers["x-veloxserve-worker"]] = r.status_code
        assert "message" in r.json()
    assert refused == {"0": 400, "1": 400}
    workers.stop()
    with Velox(tmp_path) as velox:
        assert "bad" not in velox.server("songs").users.rows


@pytest.mark.parametrize("victim", ["1", "0"])
def test_kill_9_of_a_worker_under_load_loses_no_acknowledged_observation(
    workers: ServerProcess, tmp_path: Path, victim: str
) -> None:
    assert eventually(lambda: set(_pids(workers)) == {"0", "1"}, within=120)
    pid = int(_pids(workers)[victim])
    acked: dict[str, int] = {}
    sent: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()
    unexpected: list[str] = []  # answers other than 200, or 503 + Retry-After while a worker restarts

    def loadgen(worker: int) -> None:
        n = 0
        while not stop.is_set():
            user = f"load-{worker}-{n % 4}"
            n += 1
            with lock:
                sent[user] = sent.get(user, 0) + 1
            try:
                with httpx.Client(base_url=workers.url, timeout=60) as http:  # spread over both workers
                    r = http.post("/models/songs/observe", json={"user": user, "item": 100 + n % 50, "score": 1.0})
            except httpx.HTTPError:
                continue  # the killed worker's connection: not acknowledged
            if r.status_code == 200:
                with lock:
                    acked[user] = acked.get(user, 0) + 1
            elif r.status_code != 503 or "retry-after" not in r.headers:
                with lock:
                    unexpected.append(f"{r.status_code} {r.text}")

    threads = [threading.Thread(target=loadgen, args=(w,)) for w in range(6)]
    for t in threads:
        t.start()
    assert eventually(lambda: sum(acked.values()) >= 100, within=120)
    if victim == "0":
        stop.set()  # quiet: what the reader answers while the learner is down is the state it left
        for t in threads:
            t.join(90)
        query = {"user": "load-0-0", "item": 120}
        expected = _answer(workers, "/models/songs/predict", query, "1").json()["score"]
        os.kill(pid, signal.SIGKILL)
        while_down = _answer(workers, "/models/songs/predict", query, "1", killed=True)
        assert while_down.status_code == 200 and while_down.json()["score"] == expected
        stop.clear()
        threads = [threading.Thread(target=loadgen, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
    else:
        os.kill(pid, signal.SIGKILL)
    before = sum(acked.values())
    assert eventually(lambda: sum(acked.values()) >= before + 100, within=180)  # served again after the restart
    stop.set()
    for t in threads:
        t.join(90)
    assert not unexpected, unexpected[:5]
    assert eventually(lambda: _pids(workers).get(victim) not in (None, str(pid)), within=120)  # restarted
    workers.stop()

    with Velox(tmp_path) as velox:  # recovered from the checkpoint and the log, as a restart would
        table = velox.server("songs").users
        learned = {user: int(table.counts[table.rows[user]]) for user in sent if user in table.rows}
    for user, n_sent in sent.items():
        # every acknowledged observation learned; none learned twice (an unacknowledged one may be)
        assert acked.get(user, 0) <= learned.get(user, 0) <= n_sent, (user, acked.get(user), learned.get(user), n_sent)


def test_a_home_already_served_stops_every_worker_with_the_owners_pid(workers: ServerProcess, tmp_path: Path) -> None:
    second = ServerProcess(tmp_path, "--workers", "2", "--no-auth")
    assert second.proc.wait(120) == 2
    out = second.proc.stdout.read()
    assert "is in use by another veloxserve process" in out and "stopping" in out
    assert httpx.get(f"{workers.url}/healthz", timeout=30).status_code == 200  # the first one serves on


@pytest.mark.parametrize(
    ("flags", "why"),
    [(["--workers", "0"], "in [1, 64]"), (["--workers", "2", "--store", "redis://127.0.0.1:1/0"], "--instance")],
)
def test_workers_outside_their_range_or_over_redis_are_refused(
    tmp_path: Path, flags: list[str], why: str, capsys
) -> None:
    from veloxserve.cli import main

    assert main(["serve", "--home", str(tmp_path), "--no-auth", *flags]) == 2
    assert why in capsys.readouterr().err
