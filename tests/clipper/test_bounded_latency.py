"""Bounded latency: deadlines with slow containers, anytime substitution, default outputs, and
restarts of crashed and hung containers without a hanging query. Time bounds are generous sanity
bounds (the machine is shared); speed itself is measured in bench/."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.clipper.conftest import constant_model, write_callable
from veloxserve.clipper import Clipper


def _sleep_when_flagged(value: float, seconds: float):
    """Answers `value`; sleeps `seconds` first for inputs whose second entry is 1."""

    def predict(batch):
        import time

        import numpy as np

        batch = np.asarray(batch)
        if (batch[:, 1] == 1).any():
            time.sleep(seconds)
        return np.full(len(batch), value)

    return predict


def test_a_slow_container_gets_the_default_output_within_the_objective(clipper: Clipper, tmp_path: Path) -> None:
    model_s = 8.0
    clipper.deploy("slow", "callable", write_callable(tmp_path / "s.pkl", constant_model(1.0, sleep=model_s)))
    clipper.create_app("app", ["slow"], objective_ms=50, default={"label": "unknown"})
    started = time.perf_counter()
    answer = clipper.predict("app", "u", [1.0, 2.0])
    # The shape, not a latency figure (bench_clipper_stragglers.py measures that): the answer
    # came back before the model could have produced it.
    assert time.perf_counter() - started < model_s
    assert answer["default"] is True and answer["output"] == {"label": "unknown"}
    assert "no model answered within 50 ms" in answer["reason"] and "deadline" in answer["reason"]


def test_a_late_model_is_replaced_by_its_running_mean(clipper: Clipper, tmp_path: Path) -> None:
    clipper.deploy("fast", "callable", write_callable(tmp_path / "f.pkl", constant_model(10.0)))
    late_s = 8.0
    clipper.deploy("late", "callable", write_callable(tmp_path / "l.pkl", _sleep_when_flagged(2.0, late_s)))
    clipper.create_app("app", ["fast", "late"], policy="exp4", objective_ms=300)
    first = clipper.predict("app", "u", [0.0, 0.0])  # both answer: late's mean is now 2
    assert first["output"] == pytest.approx(6.0) and [m["status"] for m in first["models"]] == ["ok", "ok"]
    started = time.perf_counter()
    anytime = clipper.predict("app", "u", [5.0, 1.0])  # late sleeps on this one
    assert time.perf_counter() - started < late_s  # not waited for
    assert [m["status"] for m in anytime["models"]] == ["ok", "mean"]
    assert anytime["default"] is False and anytime["output"] == pytest.approx((10.0 + 2.0) / 2)


def test_a_killed_container_is_restarted_and_no_query_hangs(clipper: Clipper, tmp_path: Path) -> None:
    clipper.deploy("m", "callable", write_callable(tmp_path / "m.pkl", constant_model(3.0)))
    clipper.create_app("app", ["m"], objective_ms=200, default=-1.0)
    assert clipper.predict("app", "u", [0.0])["output"] == 3.0
    old_pid = clipper.describe_model("m")["replicas"][0]["pid"]
    os.kill(old_pid, signal.SIGKILL)
    answers, deadline = [], time.monotonic() + 60
    while time.monotonic() < deadline:
        started = time.perf_counter()
        answer = clipper.predict("app", "u", [float(len(answers) + 1)])  # new inputs: no cache hits
        assert time.perf_counter() - started < 30  # never hangs, restarted or not
        answers.append(answer)
        if not answer["default"]:
            break
    assert answers[-1]["output"] == 3.0
    assert all(a["output"] == -1.0 for a in answers[:-1])
    replica = clipper.describe_model("m")["replicas"][0]
    assert replica["restarts"] == 1 and replica["pid"] != old_pid and replica["ready"]
    assert "exited with code -9" in replica["last_failure"]


def test_a_hung_container_is_killed_and_restarted(clipper: Clipper, tmp_path: Path) -> None:
    clipper.deploy(
        "m", "callable", write_callable(tmp_path / "m.pkl", _sleep_when_flagged(4.0, 3600.0)), hang_timeout_s=0.5
    )
    clipper.create_app("app", ["m"], objective_ms=100, default=0.0)
    old_pid = clipper.describe_model("m")["replicas"][0]["pid"]
    started = time.perf_counter()
    assert clipper.predict("app", "u", [1.0, 1.0])["default"] is True  # hangs the container
    assert time.perf_counter() - started < 60  # answered without waiting for the hang (3600 s)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and clipper.describe_model("m")["replicas"][0]["restarts"] == 0:
        time.sleep(0.05)
    replica = clipper.describe_model("m")["replicas"][0]
    assert replica["restarts"] == 1 and "hung" in replica["last_failure"] and replica["pid"] != old_pid
    answer, deadline = clipper.predict("app", "u", [2.0, 0.0]), time.monotonic() + 60
    while answer["default"] and time.monotonic() < deadline:
        answer = clipper.predict("app", "u", [2.0, 0.0])
    assert answer["output"] == 4.0
    with pytest.raises(ProcessLookupError):
        os.kill(old_pid, 0)
