"""Exactly once: an observation with an `id` is learned once however often it is retried, across
503s, restarts and concurrent retries; and `decision` is checked against the served list."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import RedisServer, ServerProcess
from tests.serving.test_shared_state import F, _home, expected_weights
from veloxserve import Velox
from veloxserve.config import HomeLayout, ServingConfig
from veloxserve.errors import InvalidInput, StoreUnavailable
from veloxserve.serving.idempotency import LocalWindow
from veloxserve.storage.observation_log import read_log, read_merged

FAST = ServingConfig(fsync=False, commit_delay=0.0)


def _weights(velox: Velox, user: str) -> np.ndarray:
    return velox.server("songs").users.weights(user)


def test_a_retry_with_the_same_id_is_acknowledged_and_not_learned_again(tmp_path: Path) -> None:
    home = _home(tmp_path)
    with Velox(home, config=FAST) as velox:
        first = velox.observe("songs", "fresh", 101, 4.0, id="k1")
        again = velox.observe("songs", "fresh", 101, 4.0, id="k1")
        assert first.duplicates == 0 and again.duplicates == 1 and int(again) == int(first)
        np.testing.assert_allclose(_weights(velox, "fresh"), expected_weights("fresh", [("fresh", 101, 4.0)]))
        assert velox.observation_log("songs").last_lsn == 1  # the retry appended nothing


def test_a_batch_mixing_new_and_known_ids_learns_only_the_new_ones_and_repeats_within_it_once(tmp_path: Path) -> None:
    home = _home(tmp_path)
    with Velox(home, config=FAST) as velox:
        velox.observe_many("songs", [("u", 100, 1.0, None, "a")])
        receipt = velox.observe_many(
            "songs",
            [("u", 100, 1.0, None, "a"), ("u", 102, 2.0, None, "b"), ("u", 102, 2.0, None, "b"), ("u", 103, 3.0)],
        )
        assert receipt.duplicates == 2
        logged = [(r.user, int(r.item), r.score, r.id) for r in read_log(HomeLayout(home).log_dir("songs"))]
        assert logged == [("u", 100, 1.0, "a"), ("u", 102, 2.0, "b"), ("u", 103, 3.0, None)]
        np.testing.assert_allclose(_weights(velox, "u"), expected_weights("u", [(u, i, y) for u, i, y, _ in logged]))


def test_the_window_survives_a_restart_so_a_retry_after_it_learns_once(tmp_path: Path) -> None:
    home = _home(tmp_path)
    batch = [("0", 100 + n, float(n), None, f"id-{n}") for n in range(10)]
    with Velox(home, config=FAST) as velox:
        original = velox.observe_many("songs", batch)
    with Velox(home, config=FAST) as velox:  # a new process: the window comes from the log
        retry = velox.observe_many("songs", batch + [("0", 120, 5.0, None, "id-new")])
        assert retry.duplicates == 10 and int(retry) == int(original) + 1
        unique = [(u, i, y) for u, i, y, *_ in batch] + [("0", 120, 5.0)]
        np.testing.assert_allclose(_weights(velox, "0"), expected_weights("0", unique), rtol=1e-9)
    with Velox(home, config=ServingConfig(fsync=False, idempotency_seconds=0.0)) as velox:
        assert velox.observe_many("songs", batch[:1]).duplicates == 0  # outside the window: learned again


def test_the_window_rebuilt_from_the_log_keeps_only_the_newest_keys_within_its_time(tmp_path: Path) -> None:
    home = _home(tmp_path)
    with Velox(home, config=ServingConfig(fsync=False, commit_delay=0.0)) as velox:
        velox.observe_many("songs", [("u", 100, 1.0, None, f"k{n}") for n in range(5)])
    log_dir = HomeLayout(home).log_dir("songs")
    window = LocalWindow.from_log(log_dir, seconds=3600, max_keys=3)
    claimed = window.claim([f"k{n}" for n in range(5)], ["u"] * 5, 6)
    assert [o is None for o in claimed] == [True, True, False, False, False]  # k0, k1: beyond the newest 3
    later = LocalWindow.from_log(log_dir, seconds=3600, max_keys=10, now=time.time() + 7200)
    assert len(later) == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["0", "fresh"]),
                st.integers(100, 149),
                st.floats(-5, 5, allow_nan=False),
                st.one_of(st.none(), st.sampled_from("abcdefgh")),
            ),
            min_size=1,
            max_size=8,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_batches_with_repeated_ids_learn_what_a_reference_dedupe_keeps(tmp_path_factory, batches) -> None:
    home = _home(tmp_path_factory.mktemp("once"))
    seen: set[str] = set()
    kept: list[tuple[str, int, float]] = []
    with Velox(home, config=FAST) as velox:
        for batch in batches:
            duplicates = 0
            for user, item, score, key in batch:  # the reference: first occurrence of an id wins
                if key is not None and key in seen:
                    duplicates += 1
                    continue
                seen.add(key) if key is not None else None
                kept.append((user, item, score))
            receipt = velox.observe_many("songs", [(u, i, y, None, k) for u, i, y, k in batch])
            assert receipt.duplicates == duplicates
        for user in ("0", "fresh"):
            np.testing.assert_allclose(_weights(velox, user), expected_weights(user, kept), rtol=1e-7, atol=1e-9)
    assert [(r.user, int(r.item), r.score) for r in read_log(HomeLayout(home).log_dir("songs"))] == kept


def test_concurrent_retries_racing_the_original_learn_it_once(tmp_path: Path) -> None:
    home = _home(tmp_path)
    batch = [("fresh", 100 + n, 1.0 + n, None, f"race-{n}") for n in range(20)]
    with Velox(home, config=ServingConfig(commit_delay=0.0)) as velox:
        receipts, start = [], threading.Barrier(8)

        def client() -> None:
            start.wait()
            receipts.append(velox.observe_many("songs", batch))

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(r.duplicates for r in receipts) == [0] + [20] * 7
        assert len({int(r) for r in receipts}) == 1  # every retry answered with the original's LSN
        np.testing.assert_allclose(
            _weights(velox, "fresh"), expected_weights("fresh", [(u, i, y) for u, i, y, *_ in batch]), rtol=1e-9
        )
    assert len(list(read_log(HomeLayout(home).log_dir("songs")))) == 20


def test_an_id_whose_append_was_refused_is_learned_on_retry(tmp_path: Path) -> None:
    home = _home(tmp_path)
    with Velox(home, config=FAST) as velox:
        window = velox.server("songs").window
        velox.observation_log("songs").close()  # appends are refused from now on (as after a failed disk)
        with pytest.raises(StoreUnavailable):
            velox.observe("songs", "fresh", 101, 4.0, id="refused")
        assert window.claim(["refused"], ["fresh"], 1) == [None]  # released: not remembered as logged


def test_bad_ids_are_refused_naming_the_field_and_change_nothing(tmp_path: Path) -> None:
    home = _home(tmp_path)
    with Velox(home, config=FAST) as velox:
        for bad in ("", "x" * 129, 7):
            with pytest.raises(InvalidInput, match=r"observations\[1\]\.id") as info:
                velox.observe_many("songs", [("u", 100, 1.0, None, "fine"), ("u", 101, 1.0, None, bad)])
            assert "idempotency key" in info.value.message
        assert velox.observation_log("songs").last_lsn == 0
        assert velox.observe("songs", "u", 100, 1.0, id="fine").duplicates == 0  # "fine" was not claimed


# ---- decisions ---------------------------------------------------------------------------------


def test_observe_refuses_another_users_decision_and_an_item_it_did_not_show(tmp_path: Path) -> None:
    home = _home(tmp_path)
    with Velox(home, config=FAST) as velox:
        rec = velox.recommend("songs", "0", 3, policy="epsilon_greedy", epsilon=0.5)
        shown = [int(i) for i in rec.items]
        absent = next(i for i in range(100, 150) if i not in shown)
        with pytest.raises(InvalidInput, match=r"observations\[0\]\.decision.*served to user '1'"):
            velox.observe("songs", "1", shown[0], 1.0, decision=rec.decision)
        with pytest.raises(InvalidInput, match=r"observations\[0\]\.item"):
            velox.observe("songs", "0", absent, 1.0, decision=rec.decision)
        assert velox.observation_log("songs").last_lsn == 0  # refused: nothing logged or learned
        velox.observe("songs", "0", shown[1], 1.0, decision=rec.decision)
        velox.observe("songs", "0", absent, 1.0, decision="never-served")  # not remembered: logged as unmatched
        assert [r.decision for r in read_log(HomeLayout(home).log_dir("songs"))] == [rec.decision, "never-served"]


# ---- over HTTP, with a real 503 ------------------------------------------------------------------


def test_a_retry_after_a_503_during_a_redis_outage_is_learned_once(tmp_path: Path) -> None:
    """Before ids, the original was logged, answered 503 because Redis was down and learned when
    it was back, and the client's retry was learned a second time."""
    redis_server = RedisServer(tmp_path / "redis").start()
    server = None
    try:
        home = _home(tmp_path / "home")
        server = ServerProcess(home, "--store", redis_server.url + "?prefix=once", "--instance", "a")
        server.wait_ready()
        http = httpx.Client(base_url=server.url, timeout=60)
        obs = {"user": "fresh-once", "item": 101, "score": 4.0, "id": "retry-me"}
        redis_server.stop()
        assert http.post("/models/songs/observe", json=obs).status_code == 503
        redis_server.start()
        deadline = time.monotonic() + 60
        while (r := http.post("/models/songs/observe", json=obs)).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        body = r.json()  # the first claim needs Redis too, so the 503 came before logging: nothing to repeat
        assert body["duplicate"] is False and body["duplicates"] == 0 and body["lsn"] == 1
        assert http.post("/models/songs/observe", json=obs).json()["duplicate"] is True
        logged = [
            (rec.user, int(rec.item), rec.score, rec.id) for _, rec in read_merged(HomeLayout(home).log_dir("songs"))
        ]
        assert logged == [("fresh-once", 101, 4.0, "retry-me")]
        w = expected_weights("fresh-once", [("fresh-once", 101, 4.0)])
        got = http.get("/models/songs/predict", params={"user": "fresh-once", "item": 117}).json()["score"]
        assert got == pytest.approx(F[17] @ w, rel=1e-9)
        bad = http.post("/models/songs/observe", json={**obs, "id": ""})
        assert bad.status_code == 400 and bad.json()["field"] == "observations[0].id"
        http.close()
    finally:
        if server is not None:
            server.stop()
        redis_server.stop()


def test_a_retry_after_a_503_from_a_stalled_disk_is_acknowledged_once_the_original_is_durable(
    tmp_path: Path, monkeypatch
) -> None:
    """The original is logged but not durable in time (503); it is learned later. Its retry is
    answered 503 while the disk stalls, then 200 with the original's LSN, and nothing twice."""
    from starlette.testclient import TestClient

    import veloxserve.api.handlers as handlers_module
    from tests.helpers import admin_headers
    from veloxserve.api import create_app

    monkeypatch.setattr(handlers_module, "DURABLE_TIMEOUT_S", 0.3)
    home = _home(tmp_path)
    with (
        Velox(home, config=ServingConfig(commit_delay=0.0)) as velox,
        TestClient(create_app(velox), headers=admin_headers(home)) as http,
    ):
        obs = {"user": "fresh", "item": 101, "score": 4.0, "id": "stalled"}
        stall = velox.observation_log("songs")._io_lock  # the writer holds it to write and fsync
        with stall:
            assert http.post("/models/songs/observe", json=obs).status_code == 503
            assert http.post("/models/songs/observe", json=obs).status_code == 503  # still not durable
        deadline = time.monotonic() + 30
        while (r := http.post("/models/songs/observe", json=obs)).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.json() == {**r.json(), "duplicate": True, "duplicates": 1, "lsn": 1}
        assert [(x.user, x.id) for x in read_log(HomeLayout(home).log_dir("songs"))] == [("fresh", "stalled")]
        np.testing.assert_allclose(_weights(velox, "fresh"), expected_weights("fresh", [("fresh", 101, 4.0)]))


def test_a_retry_at_another_server_over_redis_is_learned_once(tmp_path: Path, redis_url: str) -> None:
    home = _home(tmp_path)
    a, b = (ServerProcess(home, "--store", redis_url, "--instance", name) for name in ("a", "b"))
    try:
        a.wait_ready(), b.wait_ready()
        obs = {
            "observations": [
                {"user": "fresh-ab", "item": 100 + n, "score": float(n), "id": f"ab-{n}"} for n in range(3)
            ]
        }
        first = httpx.post(f"{a.url}/models/songs/observe", json=obs, timeout=60).json()
        retry = httpx.post(f"{b.url}/models/songs/observe", json=obs, timeout=60).json()
        assert (first["duplicates"], retry["duplicates"]) == (0, 3)
        racing = {"user": "fresh-ab", "item": 120, "score": 1.0, "id": "ab-race"}
        answers: list = []
        threads = [
            threading.Thread(
                target=lambda s=s: answers.append(
                    httpx.post(f"{s.url}/models/songs/observe", json=racing, timeout=60).json()
                )
            )
            for s in (a, b, a, b)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(x["duplicate"] for x in answers) == [False, True, True, True]
        logged = [(r.user, int(r.item), r.score) for _, r in read_merged(HomeLayout(home).log_dir("songs"))]
        assert sorted(logged) == sorted([("fresh-ab", 100 + n, float(n)) for n in range(3)] + [("fresh-ab", 120, 1.0)])
        w = expected_weights("fresh-ab", logged)
        for server in (a, b):
            got = httpx.get(f"{server.url}/models/songs/predict", params={"user": "fresh-ab", "item": 117}).json()
            assert got["score"] == pytest.approx(F[17] @ w, rel=1e-9)
    finally:
        a.stop(), b.stop()


def test_keys_of_a_refused_batch_are_forgotten_and_the_others_kept(tmp_path: Path) -> None:
    window = LocalWindow(seconds=3600, max_keys=100)
    window.claim(["a", "b", None, "c", "d"], ["u"] * 5, 1)  # LSNs 1, 2, (3), 4, 5
    window.forget_range(2, 4)  # the log refused the batch of LSNs 2-4
    assert [o is None for o in window.claim(["a", "b", "c", "d"], ["u"] * 4, 6)] == [False, True, True, False]


def test_over_http_a_decision_of_another_user_is_a_400_naming_the_field(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from tests.helpers import admin_headers
    from veloxserve.api import create_app

    home = _home(tmp_path)
    with Velox(home, config=FAST) as velox, TestClient(create_app(velox), headers=admin_headers(home)) as http:
        answer = http.get("/models/songs/top_k", params={"user": "0", "k": 2}).json()
        item = answer["items"][0]["item"]
        wrong = http.post(
            "/models/songs/observe", json={"user": "1", "item": item, "score": 1.0, "decision": answer["decision"]}
        )
        assert wrong.status_code == 400 and wrong.json()["field"] == "observations[0].decision"
        assert "served to user '1'" in wrong.json()["message"]
        right = http.post(
            "/models/songs/observe", json={"user": "0", "item": item, "score": 1.0, "decision": answer["decision"]}
        )
        assert right.status_code == 200 and right.json()["lsn"] == 1  # the refused one logged nothing


def test_a_busy_window_keeps_one_expiry_entry_per_second_and_expires_old_keys(tmp_path: Path) -> None:
    window = LocalWindow(seconds=2.0, max_keys=1_000_000)
    for n in range(1000):
        window.claim([f"k{n}"], ["u"], n + 1)
    assert len(window._times) <= 2  # claims within a second share one entry
    time.sleep(3.2)
    assert window.claim(["k0", "fresh"], ["u", "u"], 1001) == [None, None]  # expired: learnable again
    assert len(window) == 2


def test_an_id_whose_batch_the_full_disk_refused_is_learned_on_retry(tmp_path: Path, monkeypatch) -> None:
    """The log refuses the batch (507) and carries on; the id's claim goes with it, so the retry
    once the disk has room is logged and learned — once — instead of repeating a refused LSN."""
    import os

    import veloxserve.storage.observation_log as log_module

    real, failing = os.fdatasync, {"on": True}

    def full_disk(fd: int) -> None:
        if failing["on"]:
            raise OSError(28, "No space left on device")
        real(fd)

    home = _home(tmp_path)
    with Velox(home, config=ServingConfig(commit_delay=0.0)) as velox:
        monkeypatch.setattr(log_module.os, "fdatasync", full_disk)
        with pytest.raises(StoreUnavailable):
            velox.observe("songs", "fresh", 101, 4.0, id="full")
        failing["on"] = False
        deadline = time.monotonic() + 30
        while True:  # refused at once while the log still counts the disk as failing, then a probe heals it
            try:
                retry = velox.observe("songs", "fresh", 101, 4.0, id="full")
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        assert retry.duplicates == 0  # learned now: its original never was
        assert velox.observe("songs", "fresh", 101, 4.0, id="full").duplicates == 1
        np.testing.assert_allclose(_weights(velox, "fresh"), expected_weights("fresh", [("fresh", 101, 4.0)]))
    assert [(r.user, r.id) for r in read_log(HomeLayout(home).log_dir("songs"))] == [("fresh", "full")]
