"""A server over a real Redis Cluster loses a master to kill -9: its replica is promoted, the
server answers 503 meanwhile and never dies, recovers by itself, and every acknowledged
observation is still learned (replica_wait=1: nothing is acknowledged that only the dead master held)."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

from tests.helpers import ServerProcess, observe_load
from tests.serving.test_shared_state import _assert_served_weights, _home, _logged


def test_kill_9_of_a_master_loses_no_acknowledged_observation(tmp_path: Path, redis_cluster, redis_cluster_url) -> None:
    home = _home(tmp_path)
    server = ServerProcess(home, "--store", redis_cluster_url + "&replica_wait=1", "--instance", "a")
    server.wait_ready()
    users = ["0", "1", "2", "fresh-a", "fresh-b", "fresh-c", "fresh-d"]
    victim = redis_cluster.master_of("{fresh-a}")  # the slot of a user's keys is its tag's
    on_victim = [u for u in users if redis_cluster.master_of(f"{{{u}}}") is victim]
    acked: list = []
    refused: list = []
    stop = threading.Event()
    threads = observe_load([server], users, acked, stop, workers=4, refused=refused)
    try:
        while len(acked) < 200:
            time.sleep(0.05)
        redis_cluster.kill(victim)
        at_kill = len(acked)
        redis_cluster.wait_ok()  # its replica is promoted
        victim.start()  # the old master comes back as the new one's replica: writes there have a replica again
        redis_cluster.wait_ok()
        while len([a for a in acked[at_kill:] if a[0] in on_victim]) < 50:  # the failed-over shard learns again
            assert server.proc.poll() is None, "the server died"
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
        assert server.proc.poll() is None
        assert redis_cluster.master_of("{fresh-a}") is not victim
        logged = _logged(home)
        assert not Counter(acked) - Counter(logged), "an acknowledged observation is missing from the log"
        _assert_served_weights(server, users, logged)  # Redis holds the replay of the whole log: nothing lost
    finally:
        stop.set()
        server.stop()
        if victim.proc is not None and victim.proc.poll() is not None:
            victim.start()  # the session's cluster stays whole for the tests after
