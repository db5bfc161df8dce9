"""Coordinators of several processes (here: threads over one real Redis) apply and acknowledge."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from veloxserve.errors import Conflict, NotAcknowledged
from veloxserve.serving.coordination import Coordinator
from veloxserve.storage.redis_lifecycle import FORGET, SWITCH, Announcement, FencedOut, Lease, RedisLifecycle
from veloxserve.storage.redis_store import RedisUserStore


class _Process:
    """What a served model would do on an announcement: record it."""

    def __init__(self) -> None:
        self.version: str | None = None
        self.forgotten: set[str] = set()
        self.gate = threading.Event()
        self.gate.set()

    def apply(self, a: Announcement) -> None:
        self.gate.wait()
        if a.kind == SWITCH:
            self.version = a.what
        else:
            self.forgotten.add(a.what)

    def converge(self, version: str | None) -> None:
        self.version = version


@pytest.fixture
def store(redis_url: str):
    s = RedisUserStore(redis_url)
    yield s
    s.close()


def _coordinator(store, name: str, process: _Process) -> Coordinator:
    return Coordinator(RedisLifecycle(store, "m"), name, process.apply, process.converge, heartbeat=0.05).start()


def test_a_switch_returns_once_every_live_instance_applied_it(store) -> None:
    a, b = _Process(), _Process()
    ca, cb = _coordinator(store, "a", a), _coordinator(store, "b", b)
    try:
        seq = ca.announce_and_wait(SWITCH, "v2", timeout=30)
        assert a.version == b.version == "v2"  # applied by both before it returned
        ca.announce_and_wait(FORGET, "u1", timeout=30)
        assert a.forgotten == b.forgotten == {"u1"}
        assert ca.lifecycle.acknowledged("b") >= seq + 1
    finally:
        ca.close()
        cb.close()


def test_an_instance_that_does_not_apply_is_named_and_applies_it_later(store) -> None:
    a, b = _Process(), _Process()
    ca, cb = _coordinator(store, "a", a), _coordinator(store, "b", b)
    b.gate.clear()  # b hangs in its swap
    try:
        with pytest.raises(NotAcknowledged, match="instances b did not apply") as caught:
            ca.announce_and_wait(SWITCH, "v3", timeout=0.5)
        assert caught.value.status == 504
        assert a.version == "v3" and b.version is None and ca.lifecycle.active()[0] == "v3"
        b.gate.set()
        deadline = time.monotonic() + 30
        while b.version != "v3":
            assert time.monotonic() < deadline, "b never converged"
            time.sleep(0.02)
    finally:
        b.gate.set()
        ca.close()
        cb.close()


def test_a_stopped_instance_is_not_waited_for_and_converges_on_restart(store) -> None:
    a, b = _Process(), _Process()
    ca, cb = _coordinator(store, "a", a), _coordinator(store, "b", b)
    cb.close()  # b stops (a killed one drops out when its heartbeat expires)
    try:
        ca.announce_and_wait(SWITCH, "v4", timeout=30)
        ca.announce_and_wait(FORGET, "u9", timeout=30)
        assert b.version is None
        restarted = _Process()
        cr = _coordinator(store, "b", restarted)  # converges at start, before it serves
        try:
            assert restarted.version == "v4" and restarted.forgotten == {"u9"}
            assert cr.lifecycle.acknowledged("b") == cr.lifecycle.last_seq()
        finally:
            cr.close()
    finally:
        ca.close()


_FOLLOWER = """
import sys
from veloxserve.serving.coordination import Coordinator
from veloxserve.storage.redis_lifecycle import RedisLifecycle
from veloxserve.storage.redis_store import RedisUserStore
life = RedisLifecycle(RedisUserStore(sys.argv[1]), "m")
lease = life.acquire("killed", 0.5)  # it trains, with a lease it renews...
Coordinator(life, "killed", lambda a: None, lambda v: None, heartbeat=0.1).start()
print(lease.token, flush=True)
import threading
while True:
    life.renew(lease, 0.5)
    threading.Event().wait(0.1)
"""


def test_a_process_killed_mid_way_is_no_longer_waited_for_and_its_lease_passes_on(store, redis_url) -> None:
    """kill -9 of a trainer that follows the stream: its heartbeat and lease expire, so a switch
    returns once the survivors applied it, another process may train, and the dead one's token is fenced."""
    follower = subprocess.Popen(
        [sys.executable, "-c", _FOLLOWER, redis_url], stdout=subprocess.PIPE, env={**os.environ}
    )
    a = _Process()
    ca = None
    try:
        assert follower.stdout is not None
        token = int(follower.stdout.readline())
        ca = _coordinator(store, "a", a)
        ca.announce_and_wait(SWITCH, "v1", timeout=30)  # both live: both acknowledged
        assert ca.lifecycle.acknowledged("killed") >= 1
        with pytest.raises(Conflict, match="already running on instance 'killed'"):
            ca.lifecycle.acquire("a", 5)
        follower.send_signal(signal.SIGKILL)
        follower.wait()
        ca.announce_and_wait(SWITCH, "v2", timeout=30)  # returns once the dead one's heartbeat expired
        assert a.version == "v2" and "killed" not in ca.lifecycle.live()
        deadline = time.monotonic() + 30
        while ca.lifecycle.holder() is not None:
            assert time.monotonic() < deadline, "the dead trainer's lease never expired"
            time.sleep(0.05)
        lease = ca.lifecycle.acquire("a", 5)
        assert lease.token > token
        with pytest.raises(FencedOut):
            ca.lifecycle.announce(SWITCH, "v-from-the-dead", Lease("killed", token))
        assert ca.lifecycle.active()[0] == "v2"
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
        if ca is not None:
            ca.close()


def test_two_serve_processes_switch_and_forget_together_and_a_killed_one_converges(tmp_path, redis_url) -> None:
    """Two real `veloxserve serve` processes over one Redis, under load through both: a switch and
    a forget issued on `a` are served by `b` when the call returns; with `b` killed -9 a switch
    returns once its heartbeat expired, a restarted `b` serves the pointer's version, and every
    acknowledged observation is learned in the version both serve."""
    from collections import Counter

    import httpx
    import numpy as np

    from tests.helpers import admin_headers, observe_load
    from tests.serving.test_shared_state import (
        ARRAYS,
        META,
        F,
        _assert_served_weights,
        _home,
        _logged,
        _servers,
        expected_weights,
    )
    from veloxserve.config import HomeLayout
    from veloxserve.storage.versions import VersionStore

    home = _home(tmp_path)
    v2 = VersionStore(HomeLayout(home).versions_dir("songs")).write(ARRAYS, META)
    headers = admin_headers(home)
    a, b = _servers(home, redis_url, ["a", "b"])

    def served(server) -> str:
        return httpx.get(f"{server.url}/models/songs/versions", headers=headers).json()["active_version"]

    def score(server, user: str, item: int) -> float:
        return httpx.get(f"{server.url}/models/songs/predict", params={"user": user, "item": item}).json()["score"]

    users = ["0", "fresh-q"]
    acked: list = []
    stop = threading.Event()
    threads = observe_load([a, b], users, acked, stop, workers=4)
    try:
        assert httpx.post(f"{b.url}/models/songs/observe", json={"user": "gone", "item": 101, "score": 5.0}).is_success
        while len(acked) < 100:
            time.sleep(0.05)
        switched = httpx.post(f"{a.url}/models/songs/versions/{v2}/activate", headers=headers, timeout=120)
        assert switched.status_code == 200, switched.text
        assert served(b) == v2  # before the call returned
        forgot = httpx.delete(f"{a.url}/models/songs/users/gone", headers=headers, timeout=120)
        assert forgot.status_code == 200, forgot.text
        prior = expected_weights("nobody", [])
        assert score(b, "gone", 117) == pytest.approx(F[17] @ prior, abs=1e-9)
        n = len(acked)
        while len(acked) < n + 50:
            time.sleep(0.05)
        b.kill()
        rolled = httpx.post(f"{a.url}/models/songs/versions/v1/activate", headers=headers, timeout=120)
        # As designed: b stops being waited for once its heartbeat expired (1.5 s < lifecycle_timeout).
        assert rolled.status_code == 200, rolled.text
        assert b.proc.returncode == -9
        b = _servers(home, redis_url, ["b"])[0]
        assert served(b) == served(a) == "v1"  # converged on the pointer (the home's ACTIVE agrees)
        threads += observe_load([b], users, acked, stop, workers=2)
        n = len(acked)
        while len(acked) < n + 50:
            time.sleep(0.05)
    except BaseException:
        for server in (a, b):
            if server.proc.poll() is None:
                server.kill()
        raise
    finally:
        stop.set()
        for t in threads:
            t.join()
    logged = _logged(home)
    assert not Counter(acked) - Counter(logged), "an acknowledged observation is missing from the logs"
    assert "gone" not in {u for u, _, _ in logged}
    for server in (a, b):
        _assert_served_weights(server, users, logged)
        assert score(server, "gone", 117) == pytest.approx(F[17] @ prior, abs=1e-9)
        assert np.isfinite(score(server, "0", 100))
    a.stop(), b.stop()
