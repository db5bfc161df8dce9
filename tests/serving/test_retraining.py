"""The retraining policy's drift trigger: any detector of serving/drift.py, chosen by name."""

from __future__ import annotations

import numpy as np
import pytest

from veloxserve.errors import InvalidInput
from veloxserve.serving.drift import ADWIN, DDM, KSWIN, PageHinkley
from veloxserve.serving.retraining import RetrainPolicy


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
