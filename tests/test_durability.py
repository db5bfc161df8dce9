"""kill -9 of a real server under load loses no acknowledged observation."""

from __future__ import annotations

import threading
from pathlib import Path

import httpx
import numpy as np

from tests.conftest import synthetic_version_arrays
from tests.helpers import ServerProcess
from veloxserve.config import HomeLayout
from veloxserve.serving.velox import Velox
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.storage.versions import VersionStore


def test_sigkill_under_load_loses_no_acknowledged_observation(tmp_path: Path) -> None:
    arrays, meta = synthetic_version_arrays(name="songs")
    VersionStore(HomeLayout(tmp_path).versions_dir("songs")).write(arrays, meta)
    server = ServerProcess(tmp_path)
    server.wait_ready()
    acked: list[tuple[str, int, float]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(worker: int) -> None:
        rng = np.random.default_rng(worker)
        with httpx.Client(base_url=server.url, timeout=5) as http:
            n = 0
            while not stop.is_set():
                obs = {"user": f"crash-{worker}-{n % 5}", "item": int(100 + rng.integers(0, 50)), "score": float(n % 7)}
                n += 1
                try:
                    r = http.post("/models/songs/observe", json=obs)
                except httpx.HTTPError:
                    return
                if r.status_code == 200:
                    with lock:
                        acked.append((obs["user"], obs["item"], obs["score"]))

    threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    while len(acked) < 400:
        threading.Event().wait(0.05)
    server.kill()
    stop.set()
    for t in threads:
        t.join(10)
    assert server.proc.returncode == -9

    restarted = ServerProcess(tmp_path)  # recovery happens on start; then inspect it in-process
    restarted.wait_ready()
    restarted.stop()

    with ObservationLog(HomeLayout(tmp_path).log_dir("songs")) as obs_log:
        logged = [(r.user, int(r.item), r.score) for r in obs_log.replay(0)]
    remaining = list(logged)
    for obs in acked:  # every acknowledged observation is in the log (as a multiset)
        remaining.remove(obs)

    F = np.column_stack([arrays["item_factors"], 3.0 + arrays["item_bias"], np.ones(50)])
    lam, w0 = meta["prior_precision"], arrays["prior_mean"]
    with Velox(tmp_path) as velox:
        table = velox.server("songs").users
        for user in {u for u, _, _ in logged}:
            rows = [(i - 100, y) for u, i, y in logged if u == user]
            Fu = F[[i for i, _ in rows]]
            expected = np.linalg.solve(lam * np.eye(6) + Fu.T @ Fu, lam * w0 + Fu.T @ np.array([y for _, y in rows]))
            np.testing.assert_allclose(table.weights(user), expected, rtol=1e-6, atol=1e-8)
