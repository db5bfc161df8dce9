"""Model lifecycle: retraining while serving, promotion, rollback, failures, triggers, forgetting."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from veloxserve import Conflict, Velox
from veloxserve.errors import NotFound
from veloxserve.storage.observation_log import read_log
from veloxserve.training.als import ALSConfig
from veloxserve.training.catify import generate_catify
from veloxserve.training.ratings import load_ratings

CONFIG = ALSConfig(rank=4, iterations=4, reg=1.0, prior_precision=1.0)


@pytest.fixture(scope="module")
def catify():
    return generate_catify(120, 80, n_ratings=5000, seed=5)


def _ridge_over_everything(velox: Velox, model: str, users: list[str]) -> dict[str, tuple[np.ndarray, int]]:
    """Independent: for each user, the ridge solve against the active θ over every rating the model
    has ever seen of them (the base data, then the whole log), from the files alone."""
    version = velox.server(model).version
    F, prior = version.features.matrix, version.prior
    base = load_ratings(velox.layout.base_data(model))
    records = list(read_log(velox.layout.log_dir(model)))
    users_all = np.concatenate([base.users, np.array([r.user for r in records], dtype=str)])
    items_all = np.concatenate([base.items, np.array([r.item for r in records], dtype=str)])
    scores_all = np.concatenate([base.scores, np.array([r.score for r in records])])
    out = {}
    for user in users:
        mask = users_all == user
        rows = np.array([version.catalog.lookup(x) for x in items_all[mask]])
        A = np.diag(prior.precision) + F[rows].T @ F[rows]
        r = prior.precision * prior.mean + F[rows].T @ scores_all[mask]
        out[user] = (np.linalg.solve(A, r), int(mask.sum()))
    return out


def test_a_retrain_under_load_reflects_every_observation_after_the_swap(tmp_path: Path, catify) -> None:
    with Velox(tmp_path) as velox:
        velox.train("songs", catify.ratings, CONFIG)
        stop = threading.Event()
        acked: list[int] = []

        def client(seed: int) -> None:
            rng = np.random.default_rng(seed)
            while not stop.is_set():
                batch = [
                    (f"u{rng.integers(0, 30)}", int(rng.integers(0, 80)), float(rng.normal(3, 1))) for _ in range(5)
                ]
                acked.append(velox.observe_many("songs", batch))

        threads = [threading.Thread(target=client, args=(s,)) for s in range(3)]
        for t in threads:
            t.start()
        job = velox.retrain("songs", promote="always")
        assert job.state == "running" and job.parent == "v1"
        velox.retrainer.wait("songs", timeout=120)
        for _ in range(20):  # keep observing on the new version for a moment
            acked.append(velox.observe("songs", "u1", 5, 4.0))
        stop.set()
        for t in threads:
            t.join()
        assert job.state == "promoted", job.detail
        server = velox.server("songs")
        assert server.version_id == "v2" and len(acked) > 20
        assert job.upto_lsn < max(acked)  # observations did arrive during the retrain
        users = [f"u{i}" for i in range(30)] + [str(u) for u in range(0, 120, 7)]
        for user, (w, n) in _ridge_over_everything(velox, "songs", users).items():
            row = server.users.rows[user]
            assert server.users.counts[row] == n, user
            np.testing.assert_allclose(server.users.weights(user), w, atol=1e-6)
    with Velox(tmp_path) as velox:  # and after a restart
        for user, (w, _) in _ridge_over_everything(velox, "songs", users[:10]).items():
            np.testing.assert_allclose(velox.server("songs").users.weights(user), w, atol=1e-6)


def test_rollback_keeps_feedback_that_arrived_meanwhile(tmp_path: Path, catify) -> None:
    with Velox(tmp_path) as velox:
        velox.train("songs", catify.ratings, CONFIG)
        velox.observe_many("songs", [("fan", 3, 5.0), ("fan", 4, 1.0)])
        velox.retrain("songs", promote="always", wait=True)
        assert velox.server("songs").version_id == "v2"
        velox.observe_many("songs", [("fan", 5, 2.0), ("7", 6, 4.5)])
        velox.activate("songs", "v1")
        server = velox.server("songs")
        assert server.version_id == "v1"
        # v1's own trained statistics for user 7 plus every logged observation after v1's position (0).
        v1 = server.version
        index = int(np.flatnonzero(v1.users.ids == "7")[0])
        A, r = v1.users.gram[index].copy(), v1.users.rhs[index].copy()
        for record in read_log(velox.layout.log_dir("songs")):
            if record.user == "7":
                f = v1.features.matrix[v1.catalog.lookup(record.item)]
                A += np.outer(f, f)
                r += record.score * f
        np.testing.assert_allclose(server.users.weights("7"), np.linalg.solve(A, r), atol=1e-8)
        assert server.users.counts[server.users.rows["fan"]] == 3
        statuses = {v["version"]: v["status"] for v in velox.versions("songs")}
        assert statuses == {"v1": "active", "v2": "retired"}


def test_a_retrain_not_promoted_stays_ready_with_its_reason(tmp_path: Path, catify) -> None:
    with Velox(tmp_path) as velox:
        velox.train("songs", catify.ratings, CONFIG)
        velox.observe_many("songs", [(f"u{i % 9}", i % 80, 3.0) for i in range(200)])
        job = velox.retrain("songs", promote="never", wait=True)
        assert job.state == "ready" and velox.server("songs").version_id == "v1"
        entry = velox.version("songs", "v2")
        assert entry["status"] == "ready" and entry["decision"].startswith("not promoted")
        assert entry["parent"] == "v1" and entry["reason"] == "manual" and entry["holdout"] == "recent"
        assert entry["data"]["log_rows"] == 200 and entry["data"]["last_lsn"] == 200
        assert entry["comparison"]["rows"] > 0
        # if_better decides by the recorded comparison
        job = velox.retrain("songs", wait=True)
        comparison = velox.version("songs", job.version)["comparison"]
        better = comparison["candidate_rmse"] < comparison["parent_rmse"]
        assert job.state == ("promoted" if better else "ready")


def test_two_retrains_at_once_conflict_and_a_failed_one_cleans_up(tmp_path: Path, catify) -> None:
    with Velox(tmp_path) as velox:
        velox.train("songs", catify.ratings, CONFIG)
        velox.retrain("songs")
        with pytest.raises(Conflict, match="already running"):
            velox.retrain("songs")
        velox.retrainer.wait("songs", timeout=120)
        stale = velox.layout.versions_dir("songs") / ".incoming-stale"
        stale.mkdir()  # what a trainer killed mid-write leaves
        active = velox.server("songs").version_id
        job = velox.retrain("songs", overrides={"rank": -1}, wait=True)  # the trainer process fails
        assert job.state == "failed" and "rank must be >= 1" in job.detail
        assert velox.server("songs").version_id == active and not stale.exists()
        entry = velox.version("songs", job.version)
        assert entry["status"] == "failed" and "rank must be >= 1" in entry["error"]
        with pytest.raises(Conflict, match="failed"):
            velox.activate("songs", job.version)
        with pytest.raises(NotFound):
            velox.version("songs", "v99")
        velox.retrain("songs", wait=True)  # the model can retrain again; ids are never reused
        assert velox.versions("songs")[-1]["version"] == f"v{int(job.version[1:]) + 1}"


def test_schedule_and_drift_trigger_retrains(tmp_path: Path, catify) -> None:
    with Velox(tmp_path) as velox:
        velox.train("songs", catify.ratings, CONFIG)
        velox.set_policy("songs", {"every_observations": 40, "promote": "never"})
        velox.observe_many("songs", [("3", i, 3.0) for i in range(39)])
        assert velox.retrainer.job("songs") is None
        velox.observe("songs", "3", 50, 3.0)
        job = velox.retrainer.wait("songs", timeout=120)
        assert job is not None and job.reason == "schedule" and job.state == "ready"

        velox.set_policy("songs", {"drift": True, "drift_threshold": 20.0, "drift_min_instances": 10})
        rng = np.random.default_rng(0)
        truth = {u: velox.predict("songs", u, 1) for u in map(str, range(40))}
        velox.observe_many("songs", [(u, 1, s) for u, s in truth.items()])  # small errors: no drift
        assert velox.retrainer.job("songs") is job
        top = velox.server("songs").version.score_range[1]  # far off, yet a score the model accepts
        velox.observe_many("songs", [(str(rng.integers(0, 120)), int(rng.integers(0, 80)), top) for _ in range(30)])
        job = velox.retrainer.wait("songs", timeout=120)
        assert job.reason == "drift"
        assert velox.version("songs", job.version)["reason"] == "drift"


def test_policy_rejects_bad_fields(tmp_path: Path, catify) -> None:
    from veloxserve.errors import InvalidInput

    with Velox(tmp_path) as velox:
        velox.train("songs", catify.ratings, CONFIG)
        for bad in ({"every_observations": 0}, {"drift": "yes"}, {"promote": "sometimes"}, {"colour": 1}, []):
            with pytest.raises(InvalidInput):
                velox.set_policy("songs", bad)
        assert velox.policy("songs").every_observations is None  # nothing changed


def test_forgetting_a_user_removes_them_from_every_store_and_file(tmp_path: Path, catify) -> None:
    with Velox(tmp_path) as velox:
        velox.train("songs", catify.ratings, CONFIG)
        target = "5"
        base_rows = int((catify.ratings.users == target).sum())
        assert base_rows > 0
        velox.observe_many("songs", [(target, 3, 5.0), (target, 4, 1.0), ("6", 4, 2.0)])
        velox.server("songs").checkpoint()
        assert velox._store.get("songs", target) is not None
        total_before = len(catify.ratings) + 3
        v1 = velox.server("songs").version
        in_v1 = int(v1.users.counts[np.flatnonzero(v1.users.ids == target)[0]])

        receipt = velox.forget_user(target)
        report = receipt["models"]["songs"]
        assert receipt["user"] == target
        assert report["weights_removed"] and report["state_removed"]
        assert report["log_records_erased"] == 2 and report["base_rows_removed"] == base_rows
        assert report["trained_statistics_removed"] == {"v1": in_v1}

        server = velox.server("songs")
        assert target not in server.users.rows and velox._store.get("songs", target) is None
        assert target not in set(load_ratings(velox.layout.base_data("songs")).users)
        assert target not in {r.user for r in read_log(velox.layout.log_dir("songs"))}
        for path in velox.layout.log_dir("songs").iterdir():
            assert b'"user":"5"' not in path.read_bytes()
        assert target not in set(np.load(velox.layout.versions_dir("songs") / "v1" / "user_ids.npy"))
        assert len(list(read_log(velox.layout.log_dir("songs")))) == 1  # the other user's observation stays

        job = velox.retrain("songs", wait=True)
        entry = velox.version("songs", job.version)
        assert entry["data"]["base_rows"] + entry["data"]["log_rows"] == total_before - base_rows - 2
        assert target not in set(np.load(velox.layout.versions_dir("songs") / job.version / "user_ids.npy"))
    with Velox(tmp_path) as velox:  # nothing brings them back on restart
        assert target not in velox.server("songs").users.rows


def test_closing_stops_a_running_retrain_and_a_crash_mid_training_is_marked_failed(tmp_path: Path, catify) -> None:
    velox = Velox(tmp_path)
    velox.train("songs", catify.ratings, CONFIG)
    job = velox.retrain("songs")
    velox.close()  # kills the trainer process
    assert job.state == "failed" and "shut down" in job.detail
    with Velox(tmp_path) as velox:
        assert velox.version("songs", job.version)["status"] == "failed"
        assert velox.server("songs").version_id == "v1"
        # a version left `training` by a crashed server is failed on the next start
        velox.catalog("songs").reserve(reason="manual", parent="v1")
    with Velox(tmp_path) as velox:
        entry = velox.versions("songs")[-1]
        assert entry["status"] == "failed" and "interrupted" in entry["error"]


# The trainer process, paused at one stage until the test says go: before it reads the base data
# and the log, after it trained but before it wrote the version, or after it wrote it (the server
# has not yet marked it ready or promoted it). The spec is the last argument, as for the worker.
_PAUSING_WORKER = """
import sys, time
from pathlib import Path
from veloxserve.storage import versions
from veloxserve.training import trainer, worker
gate, stage = Path(sys.argv[1]), sys.argv[2]
def pause():
    (gate / "paused").write_text(stage)
    while not (gate / "go").exists():
        time.sleep(0.01)
def around(owner, name, before):
    original = getattr(owner, name)
    def wrapped(*args, **kwargs):
        if before:
            pause()
        result = original(*args, **kwargs)
        if not before:
            pause()
        return result
    setattr(owner, name, wrapped)
if stage == "before_reading":
    around(trainer, "training_data", True)
elif stage == "before_writing":
    around(versions.VersionStore, "write", True)
else:
    around(trainer, "retrain_version", False)
sys.exit(worker.main([sys.argv[-1]]))
"""


def _assert_version_holds_no(directory: Path, user: str) -> None:
    ids = np.load(directory / "user_ids.npy")
    indptr, seen = np.load(directory / "seen_indptr.npy"), np.load(directory / "seen_items.npy")
    counts = np.load(directory / "user_counts.npy")
    assert user not in set(ids)
    assert len(indptr) == len(ids) + 1 and seen.size == indptr[-1]  # seen items still line up with users
    np.testing.assert_array_equal(np.diff(indptr), counts)
    for name in ("user_weights", "user_gram", "user_rhs"):
        assert len(np.load(directory / f"{name}.npy")) == len(ids)


@pytest.mark.parametrize("stage", ["before_reading", "before_writing", "after_writing"])
def test_a_user_forgotten_during_a_retrain_is_in_no_version_trained_or_promoted_after_the_receipt(
    tmp_path: Path, catify, stage: str
) -> None:
    import sys

    from tests.helpers import eventually

    target = "5"
    gate = tmp_path / "gate"
    gate.mkdir()
    with Velox(tmp_path / "home") as velox:
        velox.train("songs", catify.ratings, CONFIG)
        velox.observe_many("songs", [(target, 3, 5.0), (target, 4, 1.0), ("6", 4, 2.0)])
        velox.retrainer.worker_command = [sys.executable, "-c", _PAUSING_WORKER, str(gate), stage]
        job = velox.retrain("songs", promote="always")
        assert eventually(lambda: (gate / "paused").exists(), within=120)
        receipt = velox.forget_user(target)
        assert receipt["models"]["songs"]["base_rows_removed"] > 0
        (gate / "go").touch()
        velox.retrainer.wait("songs", timeout=120)
        assert job.state == "promoted", job.detail

        server = velox.server("songs")
        assert server.version_id == job.version
        assert target not in server.users.rows and velox._store.get("songs", target) is None
        for version in velox.catalog("songs").versions.versions():
            _assert_version_holds_no(velox.layout.versions_dir("songs") / version, target)
        # Independent: the new version summarises exactly the rows of everyone else in the files
        # as they are now (base data and log up to the retrain's position; every item is known).
        base = load_ratings(velox.layout.base_data("songs"))
        logged = [r for r in read_log(velox.layout.log_dir("songs")) if r.lsn <= job.upto_lsn]
        assert target not in set(base.users) and target not in {r.user for r in logged}
        counts = np.load(velox.layout.versions_dir("songs") / job.version / "user_counts.npy")
        assert int(counts.sum()) == len(base) + len(logged)
    with Velox(tmp_path / "home") as velox:  # and nothing brings them back on restart
        assert target not in velox.server("songs").users.rows
