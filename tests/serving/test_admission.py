"""Admission control: service-time estimates, in-flight bound, deadlines and objectives."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veloxserve.errors import Overloaded
from veloxserve.serving import admission as admission_module
from veloxserve.serving.admission import Admission, AdmissionConfig, LoopClock, ServiceTime


def _reference_estimate(samples: list[float]) -> float:
    """Jacobson/Karels as RFC 6298 writes it (gains 1/8 and 1/4), here with weight 2 on the deviation
    and a zero initial deviation."""
    srtt, rttvar = samples[0], 0.0
    for r in samples[1:]:
        rttvar = (1 - 1 / 4) * rttvar + 1 / 4 * abs(srtt - r)
        srtt = (1 - 1 / 8) * srtt + 1 / 8 * r
    return srtt + 2 * rttvar


@given(st.lists(st.floats(min_value=1e-5, max_value=1.0), min_size=1, max_size=60))
def test_service_estimate_follows_rfc6298(samples: list[float]) -> None:
    admission = Admission()
    for seconds in samples:
        Admission.release(admission.admit("m", "predict", 0.0), seconds)
    assert admission.gate("m").routes["predict"].estimate() == pytest.approx(_reference_estimate(samples), rel=1e-9)


def test_without_budget_only_the_in_flight_bound_refuses() -> None:
    admission = Admission(AdmissionConfig(max_in_flight=2))
    places = [admission.admit("m", "observe", waited=10.0) for _ in range(2)]
    with pytest.raises(Overloaded) as refused:
        admission.admit("m", "observe", waited=0.0)
    assert refused.value.status == 503 and int(refused.value.headers()["retry-after"]) >= 1
    assert admission.admit("other", "observe", waited=0.0)  # the bound is per model
    Admission.release(places[0], 0.01)
    Admission.release(admission.admit("m", "observe", waited=0.0), None)  # a place came free
    assert admission.gate("m").in_flight == 1
    assert admission.describe("m")["shed"] == {"in_flight": 1, "deadline": 0}
    assert admission.describe("other")["shed"] == {"in_flight": 0, "deadline": 0}


def _trained(config: AdmissionConfig, seconds: float = 0.010) -> Admission:
    admission = Admission(config)
    for _ in range(20):
        Admission.release(admission.admit("m", "top_k", 0.0), seconds)
    return admission


def test_deadline_refuses_what_would_finish_late_and_admits_what_fits() -> None:
    admission = _trained(AdmissionConfig(headroom=0.2))  # estimate = 10 ms exactly (no deviation)
    Admission.release(admission.admit("m", "top_k", waited=0.029, deadline_s=0.050), 0.010)  # 29 + 10 <= 0.8 * 50
    with pytest.raises(Overloaded, match="deadline of 50.0 ms"):
        admission.admit("m", "top_k", waited=0.031, deadline_s=0.050)  # 31 + 10 > 0.8 * 50
    with pytest.raises(Overloaded):
        admission.admit("m", "top_k", waited=0.0, deadline_s=0.005)  # cannot be met even at once
    assert admission.gate("m").in_flight == 0  # refusals take no place
    assert admission.describe("m")["shed"] == {"in_flight": 0, "deadline": 2}  # counted by cause, per model


def test_the_tighter_of_objective_and_header_wins() -> None:
    admission = _trained(AdmissionConfig(objectives_ms={"m": 30.0}, default_objective_ms=1000.0, headroom=0.0))
    assert admission.gate("m").objective_s == 0.030
    with pytest.raises(Overloaded):
        admission.admit("m", "top_k", waited=0.025)  # the objective alone
    with pytest.raises(Overloaded):
        admission.admit("m", "top_k", waited=0.015, deadline_s=0.020)  # the header is tighter
    Admission.release(admission.admit("m", "top_k", waited=0.015, deadline_s=5.0), 0.010)  # looser header: objective
    other = _trained(AdmissionConfig(default_objective_ms=1000.0))
    assert other.gate("x").objective_s == 1.0 and math.isinf(Admission().gate("x").objective_s)


def test_a_route_refusing_everything_probes_once_a_while(monkeypatch) -> None:
    admission = Admission(AdmissionConfig(objectives_ms={"m": 5.0}))
    gate = admission.gate("m")
    gate.routes["top_k"] = ServiceTime(gate)
    gate.routes["top_k"].update(0.050, time.perf_counter())  # one slow first request
    with pytest.raises(Overloaded):
        admission.admit("m", "top_k", waited=0.0)
    monkeypatch.setattr(admission_module, "PROBE_S", 0.0)
    Admission.release(admission.admit("m", "top_k", waited=0.0), 0.001)  # admitted as a probe
    assert admission.gate("m").routes["top_k"].mean < 0.050


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError):
        AdmissionConfig(max_in_flight=0)
    with pytest.raises(ValueError):
        AdmissionConfig(headroom=1.0)
    with pytest.raises(ValueError, match="objective of m"):
        AdmissionConfig(objectives_ms={"m": 0.0})


def test_loop_clock_bounds_the_wait_behind_a_long_iteration() -> None:
    async def scenario() -> tuple[float, float]:
        clock = LoopClock()
        clock.start(asyncio.get_running_loop())
        await asyncio.sleep(0.02)
        blocked_at = time.perf_counter()
        time.sleep(0.03)  # one long iteration, as when many requests were read at once
        await asyncio.sleep(0)
        bound_after_block = time.perf_counter() - clock.earlier
        await asyncio.sleep(0.02)  # idle: the clock keeps beating, the bound shrinks to a few ms
        idle_bound = time.perf_counter() - clock.earlier
        clock.stop()
        assert clock.previous > blocked_at
        return bound_after_block, idle_bound

    bound_after_block, idle_bound = asyncio.run(scenario())
    assert bound_after_block >= 0.03
    assert idle_bound < bound_after_block  # the shape: once idle, heartbeats shrink the bound again
