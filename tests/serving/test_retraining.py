"""The retraining policy: its drift trigger (any detector of serving/drift.py, chosen by name) and its\nengine (a Spark retrain fits θ on the very rows a local one does)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from veloxserve import Velox
from veloxserve.errors import InvalidInput
from veloxserve.serving.drift import ADWIN, DDM, KSWIN, PageHinkley
from veloxserve.serving.retraining import RetrainPolicy
from veloxserve.storage.versions import VersionStore
from veloxserve.training.als import ALSConfig
from veloxserve.training.catify import generate_catify


@pytest.mark.parametrize(
    ("name", "kind"), [("page_hinkley", PageHinkley), ("adwin", ADWIN), ("ddm", DDM), ("kswin", KSWIN)]
)
def test_the_policy_builds_the_detector_it_names_and_it_sees_the_error_rise(name: str, kind: type) -> None:
    policy = RetrainPolicy.from_dict({"drift": True, "drift_detector": name})
    detector = policy.detector()
    assert isinstance(detector, kind)
    rng = np.random.default_rng(0)
    assert detector.update(rng.normal(0, 1, 5_000) ** 2).size == 0  # stationary squared errors
    hits = detector.update(rng.normal(0, 3, 1_000) ** 2)  # the error's s.d. triples
    assert hits.size and hits[0] < 500


def test_without_drift_there_is_no_detector_and_an_unknown_one_is_refused() -> None:
    assert RetrainPolicy(drift_detector="adwin").detector() is None
    assert RetrainPolicy().drift_detector == "page_hinkley"  # as policies written before the field
    with pytest.raises(InvalidInput, match="adwin or ddm or kswin or page_hinkley"):
        RetrainPolicy.from_dict({"drift": True, "drift_detector": "cusum"})


def test_with_shared_state_only_the_lease_holder_retrains_and_a_lost_lease_is_not_promoted(tmp_path, redis_url) -> None:
    """Two processes' Veloxes over one home and one Redis: a retrain on `a` holds the model's
    training lease (a retrain on `b` meanwhile is refused, naming `a`) and its promotion is served
    by both; a retrain whose lease was taken over while it trained stays ready, saying why."""
    import sys

    from veloxserve import Conflict, Velox
    from veloxserve.storage.redis_lifecycle import RedisLifecycle
    from veloxserve.storage.redis_store import RedisUserStore
    from veloxserve.training.als import ALSConfig
    from veloxserve.training.catify import generate_catify

    gate = tmp_path / "gate"
    ratings = generate_catify(120, 80, n_ratings=3000, seed=5).ratings
    home = tmp_path / "home"

    def open_velox(instance: str) -> Velox:
        velox = Velox(home, store=RedisUserStore(redis_url), instance=instance)
        # The trainer waits for the gate file: the test decides when it trains.
        velox.retrainer.worker_command = [
            "sh",
            "-c",
            f'while [ ! -e {gate} ]; do sleep 0.05; done; exec "$0" "$@"',
            sys.executable,
            "-m",
            "veloxserve.training.worker",
        ]
        return velox

    with open_velox("a") as a:
        a.train("songs", ratings, ALSConfig(rank=4, iterations=3, reg=1.0, prior_precision=1.0))
        with open_velox("b") as b:
            assert b.server("songs").version_id == "v1"
            job = a.retrain("songs", promote="always")
            with pytest.raises(Conflict, match="instance 'a'"):
                b.retrain("songs")
            gate.touch()
            assert a.retrainer.wait("songs").state == "promoted"  # type: ignore[union-attr]
            assert a.server("songs").version_id == b.server("songs").version_id == job.version
            lifecycle = RedisLifecycle(a._backend.store, "songs")  # type: ignore[arg-type]
            assert lifecycle.holder() is None  # released

            gate.unlink()
            late = a.retrain("songs", promote="always")
            lifecycle._client.delete(lifecycle.key("lease"))  # as if it expired while a was paused
            lifecycle.acquire("thief", 30.0)
            gate.touch()
            done = a.retrainer.wait("songs")
            assert done is not None and done.state == "ready" and "taken over" in done.detail
            assert a.catalog("songs").entry(late.version)["status"] == "ready"
            assert a.server("songs").version_id == b.server("songs").version_id == job.version


@pytest.mark.parametrize("master", ["local", "local[2]", "local[*]", "spark://h1:7077", "spark://a.b:7077,c-d:7078"])
def test_the_policy_takes_the_spark_master_urls_spark_does(master: str) -> None:
    policy = RetrainPolicy.from_dict({"engine": "spark", "spark_master": master})
    assert (policy.engine, policy.spark_master) == ("spark", master)
    assert RetrainPolicy().engine == "local"  # as policies written before the field


@pytest.mark.parametrize(
    "master", ["", "local[0]", "local[x]", "local[2", "yarn", "spark://", "spark://h", "spark://h:77x", "local[2] ", 2]
)
def test_a_bad_spark_master_is_refused_naming_the_field_and_changes_nothing(tmp_path: Path, master: object) -> None:
    with pytest.raises(InvalidInput, match="spark_master.*local\\[N\\]") as caught:
        RetrainPolicy.from_dict({"engine": "spark", "spark_master": master})
    assert caught.value.field == "spark_master"
    with pytest.raises(InvalidInput, match="local or spark"):
        RetrainPolicy.from_dict({"engine": "gpu"})


def test_a_rejected_policy_leaves_the_stored_one(tmp_path: Path) -> None:
    with Velox(tmp_path) as velox:
        velox.train("m", generate_catify(40, 30, n_ratings=600, seed=2).ratings, ALSConfig(rank=2, iterations=2))
        velox.set_policy("m", {"every_observations": 7, "engine": "spark", "spark_master": "local[1]"})
        with pytest.raises(InvalidInput, match="spark_master"):
            velox.set_policy("m", {"every_observations": 9, "engine": "spark", "spark_master": "local[-1]"})
        assert velox.policy("m") == RetrainPolicy(every_observations=7, engine="spark", spark_master="local[1]")


@pytest.mark.slow
def test_a_spark_policy_retrains_with_spark_on_the_rows_a_local_retrain_uses(tmp_path: Path) -> None:
    catify = generate_catify(150, 100, n_ratings=6000, seed=3)
    config = ALSConfig(rank=4, iterations=6)
    rng = np.random.default_rng(4)
    rows = rng.choice(len(catify.ratings), 800, replace=False)  # logged feedback, like the base data's
    feedback = [
        (str(catify.ratings.users[i]), str(catify.ratings.items[i]), float(catify.ratings.scores[i])) for i in rows
    ]
    with Velox(tmp_path) as velox:
        velox.train("m", catify.ratings.take(np.arange(4000)), config)
        velox.set_policy("m", {"every_observations": 800, "engine": "spark", "promote": "never"})
        velox.observe_many("m", feedback[:799])
        assert velox.retrainer.job("m") is None
        velox.observe_many("m", feedback[799:])  # the 800th observation trips the schedule
        spark_job = velox.retrainer.wait("m", timeout=600)
        assert spark_job is not None and spark_job.state == "ready", spark_job
        assert (spark_job.reason, spark_job.engine, spark_job.spark_master) == ("schedule", "spark", "local[2]")
        velox.set_policy("m", {"engine": "local"})
        local_job = velox.retrain("m", promote="never", wait=True)  # same parent, same log position
        spark_meta, local_meta = velox.version("m", spark_job.version), velox.version("m", local_job.version)
    assert spark_meta["engine"] == "spark" and spark_meta["spark_master"] == "local[2]" and spark_meta["spark_version"]
    assert local_meta["engine"] == "local" and "spark_master" not in local_meta
    assert spark_job.parent == local_job.parent == "v1" and spark_job.upto_lsn == local_job.upto_lsn
    spark_cmp, local_cmp = spark_meta["comparison"], local_meta["comparison"]
    # The same held-out rows (the newest 10 % of the log) and the same parent figure on them.
    assert spark_cmp["rows"] == local_cmp["rows"] == 80 and spark_cmp["first_lsn"] == local_cmp["first_lsn"]
    assert spark_cmp["parent_rmse"] == pytest.approx(local_cmp["parent_rmse"], rel=1e-9)
    # Different ALS fits of the same rows: close on the held-out rows, both far better than the mean.
    spread = float(np.std(catify.ratings.scores))
    assert (
        abs(spark_cmp["candidate_rmse"] - local_cmp["candidate_rmse"]) < 0.1 * spread
    )  # measured: 0.714 vs 0.736, spread 1.17
    assert spark_cmp["candidate_rmse"] < 0.9 * spread
    versions = VersionStore(velox.layout.versions_dir("m"))
    spark_arrays, local_arrays = versions.read_arrays(spark_job.version), versions.read_arrays(local_job.version)
    for key in ("item_ids", "user_ids"):  # the same catalogue and the same users, solved on every row
        np.testing.assert_array_equal(spark_arrays[key], local_arrays[key])


def _trainers_of(pid: int) -> list[int]:
    """The retrain trainer processes whose parent is `pid` (veloxserve.training.worker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue  # exited meanwhile
        if ppid == pid and b"veloxserve.training.worker" in cmdline:
            found.append(int(stat.parent.name))
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_server_killed_mid_retrain_leaves_no_trainer_and_another_server_retrains_after_its_lease(
    tmp_path: Path, redis_url: str
) -> None:
    """Two real `serve` processes over one Redis and one home, under load through both. `a` starts
    a retrain and is killed -9 while its trainer runs: the trainer dies with it (no orphan writes
    the version), its version stays `training` only until the lease lapses, `b` may not retrain
    before that (409 naming `a`) and may after; `b`'s retrain marks the dead one's version failed,
    is promoted and served by both (a restarted `a` converges on it), and every acknowledged
    observation is in the logs."""
    from collections import Counter

    import httpx

    from tests.helpers import ServerProcess, admin_headers, eventually, observe_load
    from tests.serving.test_shared_state import _logged
    from veloxserve.storage.version_catalog import VersionCatalog

    home = tmp_path / "home"
    catify = generate_catify(60, 40, n_ratings=1500, seed=8)
    with Velox(home) as velox:
        velox.train("songs", catify.ratings, ALSConfig(rank=3, iterations=3))
    config = tmp_path / "veloxserve.toml"
    config.write_text("[serving]\nlease_seconds = 20.0\nheartbeat_seconds = 0.5\n")
    headers = admin_headers(home)

    def server(instance: str) -> ServerProcess:
        s = ServerProcess(home, "--store", redis_url, "--instance", instance, "--config", str(config))
        s.wait_ready()
        return s

    def served(s: ServerProcess) -> str:
        return httpx.get(f"{s.url}/models/songs/versions", headers=headers).json()["active_version"]

    def retrain(s: ServerProcess) -> httpx.Response:
        body = {"promote": "always", "params": {"iterations": 40}}
        return httpx.post(f"{s.url}/models/songs/retrain", json=body, headers=headers, timeout=60)

    catalog = VersionCatalog(home / "models" / "songs")
    a, b = server("a"), server("b")
    users = [str(u) for u in catify.ratings.users[:20]]
    acked: list = []
    stop = threading.Event()
    threads = observe_load([a, b], users, acked, stop, workers=2, items=range(40))
    try:
        assert eventually(lambda: len(acked) >= 50, within=120)
        started = retrain(a)
        assert started.status_code == 202, started.text
        interrupted = started.json()["retrain"]["version"]
        assert eventually(lambda: _trainers_of(a.proc.pid), within=60, every=0.005)
        trainer = _trainers_of(a.proc.pid)[0]
        a.kill()
        assert eventually(lambda: not _alive(trainer), within=30), "the trainer outlived its server"
        assert catalog.entry(interrupted)["status"] == "training"  # until someone may train again
        assert not catalog.versions.exists(interrupted)  # no orphan finished writing it
        refused = retrain(b)
        assert refused.status_code == 409 and "instance 'a'" in refused.json()["message"], refused.text
        assert eventually(lambda: retrain(b).status_code == 202, within=120, every=1.0)  # the lease lapsed
        entry = catalog.entry(interrupted)
        assert entry["status"] == "failed" and "interrupted" in entry["error"], entry

        def finished() -> dict | None:
            job = httpx.get(f"{b.url}/models/songs/retrain", headers=headers).json()["retrain"]
            return job if job["state"] != "running" else None

        assert eventually(finished, within=300, every=0.5)
        job = finished()
        assert job is not None and job["state"] == "promoted", job
        assert served(b) == job["version"] != interrupted
        a = server("a")  # restarted: it serves what the pointer says
        assert served(a) == job["version"]
        n = len(acked)
        threads += observe_load([a], users, acked, stop, workers=1, items=range(40))
        assert eventually(lambda: len(acked) >= n + 50, within=120)
    except BaseException:
        for s in (a, b):
            if s.proc.poll() is None:
                s.kill()
        raise
    finally:
        stop.set()
        for t in threads:
            t.join()
    a.stop(), b.stop()
    assert not Counter(acked) - Counter(_logged(home)), "an acknowledged observation is missing from the logs"


@pytest.mark.slow
def test_a_retrain_on_an_unreachable_spark_master_fails_naming_it_and_the_active_version_serves_on(
    tmp_path: Path,
) -> None:
    """A spark:// master nobody listens on (a port bound but not listening refuses connections,
    and nothing else can take it meanwhile): the retrain fails, saying which master and what to do,
    its version is marked failed, and the active version goes on serving and learning."""
    import socket

    catify = generate_catify(40, 30, n_ratings=600, seed=2)
    user, item = str(catify.ratings.users[0]), str(catify.ratings.items[0])
    with socket.socket() as taken, Velox(tmp_path) as velox:
        taken.bind(("127.0.0.1", 0))
        master = f"spark://127.0.0.1:{taken.getsockname()[1]}"
        velox.train("m", catify.ratings, ALSConfig(rank=2, iterations=2))
        before = velox.predict("m", user, item)
        velox.set_policy("m", {"engine": "spark", "spark_master": master, "spark_start_timeout": 5})
        started = velox.retrain("m", promote="always", wait=True)
        job = velox.retrainer.job("m")
        assert job is not None and job.version == started.version and job.state == "failed", job
        assert (job.engine, job.spark_master) == ("spark", master)
        headline = job.detail.splitlines()[0]  # type: ignore[union-attr]
        assert f"Cannot reach the Spark master {master}" in headline and "Connection refused" in headline
        assert "engine local" in headline and "master is running" in headline
        entry = velox.catalog("m").entry(job.version)
        assert entry["status"] == "failed" and entry["error"].splitlines()[0] == headline
        assert velox.server("m").version_id == "v1"
        assert velox.predict("m", user, item) == pytest.approx(before)
        velox.observe("m", user, item, 5.0)  # still learning online on v1
        assert velox.predict("m", user, item) != pytest.approx(before)


@pytest.mark.parametrize("timeout", [0, -1, "60", float("inf"), True, None])
def test_a_bad_spark_start_timeout_is_refused_naming_the_field(timeout: object) -> None:
    with pytest.raises(InvalidInput, match="spark_start_timeout.*seconds > 0") as caught:
        RetrainPolicy.from_dict({"engine": "spark", "spark_start_timeout": timeout})
    assert caught.value.field == "spark_start_timeout"
    assert RetrainPolicy().spark_start_timeout == 60.0  # as policies written before the field
