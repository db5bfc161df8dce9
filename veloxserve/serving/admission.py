"""Admission control: refuse at once (503 + Retry-After) what cannot be served in time.

What "the queue" is in this server. It is one asyncio event loop, and predict and top_k run
synchronously on it: at most one such request is ever inside the app, so counting requests in
flight sees no queue at all. The queue is the loop's. Requests read from the sockets during one
loop iteration become tasks that run one after another in the next iteration; requests that
arrive meanwhile wait in the kernel until the loop polls again. A request whose task starts now
was read in the previous iteration, and so arrived after the start of the iteration before that
one (uvicorn reads a request in one iteration and its task first runs in the next; measured: a
bound one iteration shorter let served p99 exceed the objective by the length of a busy
iteration). `LoopClock` marks iteration starts with a 1 ms heartbeat timer (timers run first in
each iteration), so `now - clock.earlier` bounds from above how long the request has waited —
an upper bound, so what is admitted is not late because the wait was underestimated.

A request is admitted when

    waited + service estimate <= (1 - headroom) * budget,   budget = min(X-Deadline-Ms, the model's objective)

The headroom (10% by default) is left for what the server cannot see: the network, a proxy, the
client's own scheduling.

The service estimate of each (model, route) is the EWMA of its served times plus twice their
EWMA deviation (Jacobson's estimator, as TCP's retransmission timer). Requests that *await* —
observe waits for the log's group commit — hold a place in the model's bounded in-flight count,
the second queue; when it is full, requests are refused whatever their deadline.

A refused request costs parsing and a 503: a few tens of microseconds against the milliseconds
of the work it would have queued behind, so the loop drains and served requests stay on time.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field

from veloxserve.errors import Overloaded

HEARTBEAT_S = 0.001
PROBE_S = 1.0  # a route refused everything for this long admits one request to refresh its estimate
_GAIN, _DEV_GAIN, _DEV_WEIGHT = 1 / 8, 1 / 4, 2.0


@dataclass(frozen=True)
class AdmissionConfig:
    """Per-model limits. `objectives_ms` maps a model to its latency objective; `default_objective_ms`
    applies to the others (None: only a request's own X-Deadline-Ms bounds its latency)."""

    max_in_flight: int = 512
    default_objective_ms: float | None = None
    objectives_ms: dict[str, float] = field(default_factory=dict)
    headroom: float = 0.1

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if not 0 <= self.headroom < 1:
            raise ValueError(f"headroom must be in [0, 1), got {self.headroom}")
        for model, ms in [("default", self.default_objective_ms), *self.objectives_ms.items()]:
            if ms is not None and not ms > 0:
                raise ValueError(f"the latency objective of {model} must be > 0 ms, got {ms}")

    def objective_s(self, model: str) -> float:
        ms = self.objectives_ms.get(model, self.default_objective_ms)
        return math.inf if ms is None else ms / 1000.0


class LoopClock:
    """Marks the start of event-loop iterations: `latest` this one's, `previous` the one before,
    `earlier` the one before that."""

    def __init__(self) -> None:
        self.earlier = self.previous = self.latest = time.perf_counter()
        self._handle: asyncio.TimerHandle | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Beat on `loop` (again: a clock moves to a new loop when the old one is gone)."""
        self.stop()
        self.earlier = self.previous = self.latest = time.perf_counter()
        self._loop = loop
        self._handle = loop.call_later(HEARTBEAT_S, self._beat)

    def _beat(self) -> None:
        self.earlier, self.previous, self.latest = self.previous, self.latest, time.perf_counter()
        self._handle = self._loop.call_later(HEARTBEAT_S, self._beat)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class ServiceTime:
    """EWMA of one route's served times and of their deviation, in seconds."""

    __slots__ = ("gate", "mean", "deviation", "samples", "last_served")

    def __init__(self, gate: ModelGate) -> None:
        self.gate = gate
        self.mean = self.deviation = 0.0
        self.samples = 0
        self.last_served = time.perf_counter()

    def update(self, seconds: float, now: float) -> None:
        self.last_served = now
        if self.samples == 0:
            self.mean = seconds
        else:
            error = seconds - self.mean
            self.mean += _GAIN * error
            self.deviation += _DEV_GAIN * (abs(error) - self.deviation)
        self.samples += 1

    def estimate(self) -> float:
        return self.mean + _DEV_WEIGHT * self.deviation


class ModelGate:
    """One model's in-flight count, objective, per-route service times and refusals by cause."""

    __slots__ = ("name", "objective_s", "in_flight", "routes", "shed")

    def __init__(self, name: str, objective_s: float) -> None:
        self.name = name
        self.objective_s = objective_s
        self.in_flight = 0
        self.routes: dict[str, ServiceTime] = {}
        self.shed = {"in_flight": 0, "deadline": 0}  # requests refused: the in-flight bound, a deadline


class Admission:
    """Decide, per request and in O(1), whether it can be served within its budget."""

    def __init__(self, config: AdmissionConfig | None = None, clock: LoopClock | None = None) -> None:
        self.config = config or AdmissionConfig()
        self.clock = clock or LoopClock()
        self._gates: dict[str, ModelGate] = {}
        self._usable = 1.0 - self.config.headroom

    def gate(self, model: str) -> ModelGate:
        gate = self._gates.get(model)
        if gate is None:
            gate = self._gates[model] = ModelGate(model, self.config.objective_s(model))
        return gate

    def admit(self, model: str, route: str, waited: float, deadline_s: float | None = None) -> ServiceTime:
        """Take a place for a request that has waited `waited` seconds, or raise Overloaded. The
        caller must `release` what this returns."""
        gate = self._gates.get(model) or self.gate(model)
        service = gate.routes.get(route)
        if service is None:
            service = gate.routes[route] = ServiceTime(gate)
        if gate.in_flight >= self.config.max_in_flight:
            gate.shed["in_flight"] += 1
            raise Overloaded(
                f"Model {model!r} already has {gate.in_flight} requests in flight (the limit); retry shortly.",
                retry_after=max(1, math.ceil(gate.in_flight * service.mean)),
            )
        budget = gate.objective_s if deadline_s is None or deadline_s > gate.objective_s else deadline_s
        if budget != math.inf:
            expected = service.estimate()
            # An estimate only served requests can lower: one slow outlier (a cold first request)
            # must not refuse a route forever, so a route that served nothing for PROBE_S admits one.
            if waited + expected > self._usable * budget and time.perf_counter() - service.last_served < PROBE_S:
                gate.shed["deadline"] += 1
                raise Overloaded(
                    f"The {route} request to model {model!r} cannot meet its deadline of {budget * 1000:.1f} ms: "
                    f"it has waited up to {waited * 1000:.1f} ms and takes about {expected * 1000:.1f} ms. "
                    "The server is overloaded; retry after Retry-After seconds or add servers.",
                    retry_after=max(1, math.ceil(waited)),
                )
        gate.in_flight += 1
        return service

    def describe(self, model: str) -> dict[str, object]:
        """The model's in-flight count, objective and service-time estimates, for /models/{name}/metrics."""
        gate = self.gate(model)
        return {
            "in_flight": gate.in_flight,
            "max_in_flight": self.config.max_in_flight,
            "objective_ms": None if gate.objective_s == math.inf else gate.objective_s * 1000,
            "shed": dict(gate.shed),
            "service_ms": {
                route: {
                    "mean": round(st.mean * 1000, 3),
                    "deviation": round(st.deviation * 1000, 3),
                    "samples": st.samples,
                }
                for route, st in gate.routes.items()
            },
        }

    @staticmethod
    def release(service: ServiceTime, seconds: float | None, now: float = 0.0) -> None:
        """Give the place back; `seconds` is the served time (None if the request failed), `now`
        the perf_counter time it ended."""
        service.gate.in_flight -= 1
        if seconds is not None:
            service.update(seconds, now or time.perf_counter())
