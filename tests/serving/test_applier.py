"""The Applier wakes when work arrives, not on its periodic tick: with the tick an hour long and
the watchdog and a synchronous waiter on the same lock, every observation is still learned and
acknowledged (a notify taken by another waiter used to leave the thread asleep until the tick)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from veloxserve.backoff import RetryPolicy
from veloxserve.serving import applier as applier_module
from veloxserve.serving.applier import Applier
from veloxserve.storage.observation_log import ObservationLog

HOUR = 3600.0


class RecordingTarget:
    def __init__(self) -> None:
        self.learned: list[tuple[list[int], list[str]]] = []
        self.lock = threading.Lock()

    def learn_now(self, lsns: list[int], users: list[str], rows: np.ndarray, scores: np.ndarray) -> None:
        with self.lock:
            self.learned.append((lsns, users))

    def check_generation(self) -> None:
        pass

    def raise_hint(self, instance: str, lsn: int) -> None:
        pass


@pytest.mark.timeout(120)
def test_each_observation_is_acknowledged_without_waiting_for_the_periodic_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(applier_module, "_HINT_SECONDS", HOUR)
    target = RecordingTarget()
    with ObservationLog(tmp_path / "log") as obs_log:
        applier = Applier(obs_log, "i0", RetryPolicy(), deadline=HOUR)  # deadline: the watchdog waits too
        try:
            for n in range(20):
                lsn = obs_log.append([(f"u{n}", "1", 3.0, "v1")])
                applier.enqueue(lsn, [f"u{n}"], np.zeros((1, 2)), np.array([3.0]), target)
                # Far below the hour-long tick: only a wake-up on enqueue/commit can meet it.
                assert applier.wait_durable(lsn, timeout=30) >= lsn
        finally:
            applier.close()
    learned = [lsn for lsns, _ in target.learned for lsn in lsns]
    assert learned == list(range(1, 21))  # each once, in log order
    assert [u for _, users in target.learned for u in users] == [f"u{n}" for n in range(20)]
