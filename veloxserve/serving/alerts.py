"""Alerts that say what to fix, and are not raised so often that they get ignored.

A check (serving/monitoring.py) yields a `Condition` per thing it watches: whether it holds now,
the measured value, the threshold, the cause in numbers and what to do about it. The `AlertBook`
turns conditions into alerts with a suppression window:

    firing      the condition holds and the alert was raised (counted in `raised`)
    suppressed  the condition holds again within `suppress_seconds` of the last raise: it is
                shown, but not raised again (and not counted as raised)
    resolved    the condition held before and no longer does; `resolved_at` says since when

A condition that keeps holding is raised again once per window (a reminder, not a storm). The
book is evaluated when read (GET /models/{name}/alerts, a Prometheus scrape); the clock is
injectable, so the window is tested without waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

FIRING, SUPPRESSED, RESOLVED = "firing", "suppressed", "resolved"


@dataclass(frozen=True)
class Condition:
    name: str  # bounded (a Prometheus label): unknown_items_share, feature_ks:d3, drift:adwin, ...
    holds: bool
    value: float | None
    threshold: float
    cause: str  # what was measured, in numbers
    fix: str  # what to do about it


@dataclass
class _State:
    status: str
    condition: Condition
    raised: int = 0
    suppressed: int = 0
    raised_at: float | None = None
    resolved_at: float | None = None


class AlertBook:
    """Every alert of one served version, with its suppression window."""

    def __init__(self, suppress_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.suppress_seconds = suppress_seconds
        self._clock = clock
        self._states: dict[str, _State] = {}
        self._lock = threading.Lock()

    def evaluate(self, conditions: Iterable[Condition]) -> list[dict[str, Any]]:
        """Apply the conditions checked now; every alert known, firing ones first."""
        now = self._clock()
        with self._lock:
            for condition in conditions:
                state = self._states.get(condition.name)
                if condition.holds:
                    if state is None:
                        state = self._states[condition.name] = _State(FIRING, condition)
                        self._raise(state, now)
                    elif state.raised_at is None or now - state.raised_at >= self.suppress_seconds:
                        self._raise(state, now)  # first time, or once per window while it holds
                    elif state.status == RESOLVED:
                        state.status, state.resolved_at = SUPPRESSED, None
                        state.suppressed += 1
                    state.condition = condition
                elif state is not None:
                    if state.status != RESOLVED:
                        state.status, state.resolved_at = RESOLVED, now
                    state.condition = condition
            return [self._describe(name, s) for name, s in sorted(self._states.items(), key=_order)]

    def raised(self) -> dict[str, int]:
        """How many times each alert was raised (a Prometheus counter)."""
        with self._lock:
            return {name: state.raised for name, state in self._states.items()}

    def _raise(self, state: _State, now: float) -> None:
        state.status, state.raised_at, state.resolved_at = FIRING, now, None
        state.raised += 1

    def _describe(self, name: str, state: _State) -> dict[str, Any]:
        c = state.condition
        fix = c.fix if state.status != RESOLVED else f"resolved: {c.cause}; nothing to do"
        return {
            "alert": name,
            "status": state.status,
            "value": c.value,
            "threshold": c.threshold,
            "cause": c.cause,
            "fix": fix,
            "raised": state.raised,
            "suppressed": state.suppressed,
            "raised_at": state.raised_at,
            "resolved_at": state.resolved_at,
            "suppressed_until": None if state.raised_at is None else state.raised_at + self.suppress_seconds,
        }


def _order(item: tuple[str, _State]) -> tuple[int, str]:
    return ({FIRING: 0, SUPPRESSED: 1, RESOLVED: 2}[item[1].status], item[0])
