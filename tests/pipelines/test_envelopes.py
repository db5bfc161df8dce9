"""Arrival envelopes against a direct O(n²) count; the tuner up at once on a burst, down after a lull."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.errors import InvalidInput
from veloxserve.pipelines.envelopes import ArrivalEnvelope, Tuner
from veloxserve.pipelines.plans import Plan, StagePlan
from veloxserve.pipelines.profiles import BatchTiming, StageProfile
from veloxserve.pipelines.traces import gamma_trace

WINDOWS = (0.005, 0.05, 0.3)


def _direct(times: np.ndarray, w: float, since: float = -np.inf) -> int:
    """max over arrivals t_j >= since of #{i : t_j - w < t_i <= t_j}, by brute force."""
    best = 0
    for tj in times:
        if tj >= since:
            best = max(best, int(sum(1 for ti in times if tj - w < ti <= tj)))
    return best


times_strategy = st.lists(st.integers(0, 2000), min_size=1, max_size=120).map(lambda xs: np.sort(np.array(xs)) / 1000.0)


@settings(max_examples=40, deadline=None)
@given(times_strategy, st.integers(1, 7))
def test_envelope_matches_a_direct_count(times: np.ndarray, chunk: int) -> None:
    one, many = ArrivalEnvelope(WINDOWS), ArrivalEnvelope(WINDOWS)
    for t in times:
        one.observe(float(t))
    for start in range(0, times.size, chunk):
        many.observe_many(times[start : start + chunk])
    for w in WINDOWS:
        assert one.max_count(w) == many.max_count(w) == _direct(times, w)
        assert one.max_rate(w) == pytest.approx(_direct(times, w) / w)


@settings(max_examples=40, deadline=None)
@given(times_strategy, st.sampled_from([0.05, 0.4, 1.0]), st.integers(1, 9))
def test_envelope_over_a_sliding_history_matches_a_direct_count(times: np.ndarray, history: float, chunk: int) -> None:
    one, many = ArrivalEnvelope(WINDOWS, history), ArrivalEnvelope(WINDOWS, history)
    for t in times:
        one.observe(float(t))
    for start in range(0, times.size, chunk):
        many.observe_many(times[start : start + chunk])
    now = float(times[-1])
    for w in WINDOWS:
        expected = _direct(times, w, since=now - history)
        assert one.max_count(w, now) == many.max_count(w, now) == expected
    later = now + 5.0  # everything has left the history
    assert one.max_count(WINDOWS[0], later) == 0


def test_a_long_run_stays_small() -> None:
    envelope = ArrivalEnvelope((0.01, 0.1), history_s=1.0)
    trace = gamma_trace(2000.0, 1.0, 20.0, seed=1)
    for t in trace[:20_000]:
        envelope.observe(float(t))
    assert len(envelope._times) < 3 * 4096 + 400  # only the largest window (and a compaction slack) is kept
    assert envelope.max_count(0.1) == _direct(
        trace[(trace >= trace[19_999] - 1.2) & (trace <= trace[19_999])], 0.1, trace[19_999] - 1.0
    )


def test_windows_must_be_positive_and_asked_for_by_size() -> None:
    with pytest.raises(InvalidInput, match="windows_s"):
        ArrivalEnvelope((0.0,))
    with pytest.raises(InvalidInput, match="window_s"):
        ArrivalEnvelope((0.1,)).max_count(0.2)


def _tuner(**kwargs: object) -> tuple[Tuner, np.ndarray]:
    profile = StageProfile("clf", "k", 1.0, (BatchTiming(4, 0.01, 0.02, 0.012),))
    plan = Plan({"clf": StagePlan("clf", "k", 4, 2)}, 0.05, 2.0, True)
    planned = gamma_trace(200.0, 1.0, 30.0, seed=2)
    return Tuner(plan, {"clf": profile}, ArrivalEnvelope.of_trace(planned, (0.1, 1.0)), **kwargs), planned  # type: ignore[arg-type]


def test_the_planned_load_scales_nothing() -> None:
    tuner, planned = _tuner(down_after_s=5.0)
    for second in range(1, 30):
        tuner.observe_many(planned[(planned >= second - 1) & (planned < second)])
        tuner.decide(float(second))
    assert all(a.replicas_to < a.replicas_from for a in tuner.actions)  # never above the plan it was planned for


def test_a_burst_scales_up_at_once_and_down_only_after_the_lull() -> None:
    tuner, _ = _tuner(down_after_s=5.0)
    burst = 30.0 + gamma_trace(800.0, 1.0, 1.0, seed=3)  # 4× the planned rate
    tuner.observe_many(burst)
    up = tuner.decide(31.0)
    assert len(up) == 1 and up[0].stage == "clf" and up[0].replicas_from == 2 and up[0].replicas_to >= 6
    assert "window" in up[0].reason
    assert tuner.replicas["clf"] == up[0].replicas_to
    quiet = 31.0 + gamma_trace(100.0, 1.0, 10.0, seed=4)  # half the planned rate
    for now in (32.5, 34.0, 36.0):
        tuner.observe_many(quiet[quiet < now])
        quiet = quiet[quiet >= now]
        assert tuner.decide(now) == []  # in the lull, not yet long enough
    tuner.observe_many(quiet[quiet < 38.0])
    down = tuner.decide(38.0)
    assert len(down) == 1 and down[0].replicas_to < up[0].replicas_to and down[0].replicas_to >= 1
    assert "stayed within" in down[0].reason


def test_a_new_burst_during_the_lull_restarts_it() -> None:
    tuner, _ = _tuner(down_after_s=5.0)
    tuner.observe_many(30.0 + gamma_trace(800.0, 1.0, 1.0, seed=3))
    tuner.decide(31.0)
    tuner.observe_many(31.0 + gamma_trace(100.0, 1.0, 2.0, seed=4))
    assert tuner.decide(33.5) == []  # the lull starts
    tuner.observe_many(33.5 + gamma_trace(800.0, 1.0, 1.0, seed=5))
    tuner.decide(34.5)  # back at the peak: the lull is over
    tuner.observe_many(34.5 + gamma_trace(100.0, 1.0, 4.0, seed=6))
    assert tuner.decide(38.6) == []  # 3.6 s after the lull started again, not 5


def test_scaling_up_can_wait() -> None:
    tuner, _ = _tuner(up_immediately=False, up_after_s=1.0)
    burst = 30.0 + gamma_trace(800.0, 1.0, 3.0, seed=3)
    decided = []
    for now in (31.0, 31.5, 32.0):
        tuner.observe_many(burst[(burst >= now - 0.5) & (burst < now)] if now > 31 else burst[burst < now])
        decided.append(len(tuner.decide(now)))
    assert decided == [0, 0, 1]
