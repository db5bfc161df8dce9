"""The contract both backends pass: the in-process user state acknowledged by the log's group
commit, and the state shared in Redis acknowledged once the Applier learned it. Adding a backend
is one entry in BACKENDS; every test here then runs on it."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.serving.test_shared_state import ARRAYS, META, F, _home, expected_weights
from veloxserve.config import HomeLayout
from veloxserve.errors import Conflict, ModelNotFound, NotFound
from veloxserve.serving.backend import EmbeddedBackend, SharedBackend
from veloxserve.serving.local_state import LocalUserState
from veloxserve.serving.shared_state import SharedUserState
from veloxserve.serving.velox import Velox
from veloxserve.storage.observation_log import ObservationLog, read_log
from veloxserve.storage.redis_lifecycle import SWITCH, RedisLifecycle
from veloxserve.storage.redis_store import RedisUserStore
from veloxserve.storage.versions import VersionStore

OpenVelox = Callable[[], Velox]
BACKENDS: dict[str, tuple[type, type, Callable[[Path, str], OpenVelox]]] = {
    # name: (backend, user state, how to open a Velox over the home)
    "embedded": (EmbeddedBackend, LocalUserState, lambda home, url: lambda: Velox(home)),
    "shared": (
        SharedBackend,
        SharedUserState,
        lambda home, url: lambda: Velox(home, store=RedisUserStore(url), instance="a"),
    ),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path: Path) -> Iterator[tuple[str, OpenVelox]]:
    url = request.getfixturevalue("redis_url") if request.param == "shared" else ""
    yield request.param, BACKENDS[request.param][2](_home(tmp_path), url)


@pytest.fixture(params=["redis", "cluster"])
def shared_url(request) -> str:
    """One Redis, or a Redis Cluster (the lifecycle's keys sit under the model's hash tag: one slot)."""
    return request.getfixturevalue("redis_url" if request.param == "redis" else "redis_cluster_url")


def _weights(velox: Velox, user: str) -> np.ndarray:
    return np.asarray(velox.server("songs").users.weights(user))


def test_each_backend_injects_its_own_user_state_and_acknowledgement(backend) -> None:
    name, open_velox = backend
    backend_type, state_type, _ = BACKENDS[name]
    with open_velox() as velox:
        assert isinstance(velox._backend, backend_type)
        assert isinstance(velox.server("songs").state, state_type)
        ack = velox.acknowledger("songs")
        assert (ack is velox.observation_log("songs")) == (name == "embedded")  # shared: the Applier


def test_an_acknowledged_observation_is_learned_and_served(backend) -> None:
    _, open_velox = backend
    observed = [("0", 101, 4.0), ("0", 117, 2.0), ("newcomer", 103, 5.0)]
    with open_velox() as velox:
        receipt = velox.observe_many("songs", observed)
        assert velox.acknowledger("songs").durable_lsn >= receipt == 3
        for user in ("0", "newcomer", "1"):
            np.testing.assert_allclose(_weights(velox, user), expected_weights(user, observed), atol=1e-9)
        assert velox.predict("songs", "0", 117) == pytest.approx(F[17] @ expected_weights("0", observed))
        assert velox.server("songs").state.learned("main" if velox.instance is None else velox.instance, "0", receipt)


def test_the_read_side_agrees_with_itself(backend) -> None:
    _, open_velox = backend
    observed = [("2", 110, 5.0), ("fresh", 111, 1.0)]
    with open_velox() as velox:
        velox.observe_many("songs", observed)
        users = velox.server("songs").users
        batch = users.weights_many(["2", "fresh", "stranger"])
        for i, user in enumerate(["2", "fresh", "stranger"]):
            np.testing.assert_allclose(batch[i], users.weights(user), atol=1e-12)
        assert 10 in set(users.seen_rows("2").tolist()) and 11 in set(users.seen_rows("fresh").tolist())
        ids = list(ARRAYS["user_ids"])
        A = ARRAYS["user_gram"][ids.index("2")] + np.outer(F[10], F[10])
        np.testing.assert_allclose(users.covariance("2"), np.linalg.inv(A), atol=1e-9)
        assert len(users) >= len(ids) + 1


def test_a_restart_serves_what_was_acknowledged(backend) -> None:
    _, open_velox = backend
    observed = [("3", 120, 4.5), ("later", 121, 2.5)]
    with open_velox() as velox:
        velox.observe_many("songs", observed)
    with open_velox() as velox:  # from the checkpoint and the log, or from Redis and the logs
        for user in ("3", "later"):
            np.testing.assert_allclose(_weights(velox, user), expected_weights(user, observed), atol=1e-9)


def test_a_retry_with_the_same_id_is_acknowledged_without_being_learned_again(backend) -> None:
    _, open_velox = backend
    with open_velox() as velox:
        first = velox.observe("songs", "4", 130, 3.0, id="once")
        again = velox.observe("songs", "4", 130, 3.0, id="once")
        assert int(again) == int(first) and again.duplicates == 1 and first.duplicates == 0
        np.testing.assert_allclose(_weights(velox, "4"), expected_weights("4", [("4", 130, 3.0)]), atol=1e-9)


def test_the_acknowledgement_tells_its_subscribers_and_waiters(backend) -> None:
    _, open_velox = backend
    with open_velox() as velox:
        ack = velox.acknowledger("songs")
        heard: list[int] = []
        got = threading.Event()

        def listener(lsn: int) -> None:
            heard.append(lsn)
            got.set()

        ack.subscribe(listener)
        receipt = velox.submit("songs", [("5", 140, 1.0)])
        assert ack.wait_durable(receipt, 10.0) >= receipt
        assert got.wait(10.0) and max(heard) >= receipt
        assert ack.failure is None and ack.refused(receipt) is None


def test_prequential_errors_are_counted_once_learned(backend) -> None:
    _, open_velox = backend
    with open_velox() as velox:
        velox.observe_many("songs", [("6", 100, 5.0), ("6", 101, 1.0)])
        assert velox.server("songs").prequential.report()["observations"] == 2


def test_a_retrain_needs_the_training_lease_where_the_state_is_shared(backend) -> None:
    name, open_velox = backend
    with open_velox() as velox:
        if name == "shared":
            lifecycle = RedisLifecycle(velox._backend.store, "songs")  # type: ignore[arg-type]
            held = lifecycle.acquire("other", 30.0)
            with pytest.raises(Conflict, match="already running on instance 'other'"):
                velox.retrain("songs")
            assert velox.retrainer.job("songs") is None and lifecycle.holder() == held  # nothing reserved
            assert [v["version"] for v in velox.versions("songs")] == ["v1"]
            assert velox.redis_settings is not None and velox.redis_watch is not None
        else:
            velox.observe("songs", "0", 101, 4.0)
            receipt = velox.forget_user("0", "songs")
            assert receipt["models"]["songs"]["log_records_erased"] == 1
            assert velox.redis_settings is None and velox.redis_watch is None


def test_observation_log_interface_is_the_embedded_acknowledgement(tmp_path: Path) -> None:
    """The log satisfies the acknowledgement protocol by itself (serving/durability.py)."""
    with ObservationLog(tmp_path / "log") as obs_log:
        lsn = obs_log.append([("u", "i", 1.0, "v1")])
        assert obs_log.wait_durable(lsn, 10.0) >= lsn and obs_log.durable_lsn >= lsn


def test_a_switch_on_one_process_is_served_by_every_process_before_it_returns(tmp_path: Path, shared_url: str) -> None:
    """Two processes' Veloxes over one home and one Redis (here in one process): a switch or a
    roll-back issued on `a` is served by `b` when it returns, and no observation learned by either,
    before or after it, is missing from the version switched to."""
    home = _home(tmp_path)
    v2 = VersionStore(HomeLayout(home).versions_dir("songs")).write(ARRAYS, META)
    before = [("0", 101, 4.0), ("fresh", 102, 2.0)]
    after = [("0", 103, 1.0), ("fresh", 104, 5.0)]
    with (
        Velox(home, store=RedisUserStore(shared_url), instance="a") as a,
        Velox(home, store=RedisUserStore(shared_url), instance="b") as b,
    ):
        lifecycle = RedisLifecycle(b._backend.store, "songs")  # type: ignore[arg-type]
        b.observe_many("songs", before)  # learned into v1's state by b
        with pytest.raises(NotFound):
            a.activate("songs", "v9")
        assert lifecycle.last_seq() == 0  # refused before anything was announced
        a.activate("songs", v2)
        assert a.server("songs").version_id == b.server("songs").version_id == v2
        assert lifecycle.active()[0] == v2 and lifecycle.pending(lifecycle.last_seq()) == []
        b.observe_many("songs", after[:1])
        a.observe_many("songs", after[1:])
        for velox in (a, b):
            for user in ("0", "fresh", "1"):
                np.testing.assert_allclose(_weights(velox, user), expected_weights(user, before + after), atol=1e-9)
        a.activate("songs", "v1")  # roll back: v1's state catches up on what v2 learned
        assert b.server("songs").version_id == "v1"
        for user in ("0", "fresh"):
            np.testing.assert_allclose(_weights(b, user), expected_weights(user, before + after), atol=1e-9)


def test_a_forget_on_one_process_is_applied_by_every_process_and_never_learned_again(
    tmp_path: Path, shared_url: str
) -> None:
    """`a` forgets a trained user and a new one that `b` learned: when the receipt comes, `b`
    serves neither (the prior), its log holds none of their records, a later observation of theirs
    is not learned, and a restarted `b` replaying the logs does not bring them back."""
    home = _home(tmp_path)
    v2 = VersionStore(HomeLayout(home).versions_dir("songs")).write(ARRAYS, META)
    prior = expected_weights("nobody", [])
    kept = [("1", 105, 3.0)]

    def open_b() -> Velox:
        return Velox(home, store=RedisUserStore(shared_url), instance="b")

    with Velox(home, store=RedisUserStore(shared_url), instance="a") as a:
        with open_b() as b:
            b.observe_many("songs", [("0", 101, 4.0), ("fresh", 102, 2.0), *kept])
            a.activate("songs", v2)  # v1's namespace in Redis holds them too: a roll-back must not find them
            with pytest.raises(ModelNotFound):
                a.forget_user("1", "nope")  # refused before anything changed: "1" stays learned below
            for user in ("0", "fresh"):
                receipt = a.forget_user(user, "songs")
                assert receipt["models"]["songs"]["log_records_erased"] == 0  # b logged them, not a
            for velox in (a, b):
                for user in ("0", "fresh"):
                    np.testing.assert_allclose(_weights(velox, user), prior, atol=1e-12)
            assert [r.user for r in read_log(b.observation_log("songs").directory)] == ["1"]
            b.observe("songs", "fresh", 103, 5.0)  # acknowledged, never learned
            np.testing.assert_allclose(_weights(a, "fresh"), prior, atol=1e-12)
            a.activate("songs", "v1")
            lifecycle = RedisLifecycle(b._backend.store, "songs")  # type: ignore[arg-type]
            assert lifecycle.forgotten(["0", "fresh", "1"]) == [True, True, False]
        with open_b() as b:  # replays every log into v1's namespace
            for velox in (a, b):
                for user in ("0", "fresh"):
                    np.testing.assert_allclose(_weights(velox, user), prior, atol=1e-12)
                np.testing.assert_allclose(_weights(velox, "1"), expected_weights("1", kept), atol=1e-9)


def test_a_starting_process_serves_the_version_redis_points_to_not_the_homes_file(
    tmp_path: Path, redis_url: str
) -> None:
    """The switch was recorded in Redis but its announcer died before swapping (the home's ACTIVE
    still names v1): a process that starts converges on the pointer."""
    home = _home(tmp_path)
    v2 = VersionStore(HomeLayout(home).versions_dir("songs")).write(ARRAYS, META)
    store = RedisUserStore(redis_url)
    RedisLifecycle(store, "songs").announce(SWITCH, v2)
    observed = [("0", 101, 4.0)]
    with Velox(home, store=store, instance="b") as b:
        assert b.server("songs").version_id == v2 == b.catalog("songs").active()
        b.observe_many("songs", observed)
        np.testing.assert_allclose(_weights(b, "0"), expected_weights("0", observed), atol=1e-9)
