"""The alert book: raised once, suppressed within its window, resolved when the condition goes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.serving.alerts import FIRING, RESOLVED, SUPPRESSED, AlertBook, Condition


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def _condition(holds: bool, value: float = 0.3) -> Condition:
    return Condition("unknown_items_share", holds, value, 0.2, f"{value:.0%} unknown", "retrain")


def test_raised_once_then_not_again_within_the_window_and_resolved_says_so() -> None:
    clock = Clock()
    book = AlertBook(suppress_seconds=600, clock=clock)
    assert book.evaluate([_condition(False)]) == []  # never held: no alert at all
    [alert] = book.evaluate([_condition(True)])
    assert (alert["status"], alert["raised"], alert["raised_at"], alert["fix"]) == (FIRING, 1, 1_000.0, "retrain")
    assert alert["suppressed_until"] == 1_600.0
    clock.now += 60
    [alert] = book.evaluate([_condition(True)])
    assert (alert["status"], alert["raised"]) == (FIRING, 1)  # still holding: not raised again
    clock.now += 60
    [alert] = book.evaluate([_condition(False, 0.1)])
    assert (alert["status"], alert["resolved_at"]) == (RESOLVED, 1_120.0)
    assert alert["fix"].startswith("resolved: 10% unknown")
    clock.now += 60
    [alert] = book.evaluate([_condition(True)])  # back within the window: shown, not raised
    assert (alert["status"], alert["raised"], alert["suppressed"]) == (SUPPRESSED, 1, 1)
    clock.now = 1_600.0
    [alert] = book.evaluate([_condition(True)])  # the window is over: raised again
    assert (alert["status"], alert["raised"], alert["raised_at"]) == (FIRING, 2, 1_600.0)
    assert book.raised() == {"unknown_items_share": 2}


@settings(max_examples=50, deadline=None)
@given(events=st.lists(st.tuples(st.floats(0, 500), st.booleans()), max_size=40), window=st.floats(1, 1_000))
def test_never_raised_twice_within_a_window(events, window) -> None:
    """Over any sequence of checks, raises are at least a window apart, and a condition that
    holds at a check is raised unless one was raised within the window before it."""
    clock = Clock()
    book = AlertBook(suppress_seconds=window, clock=clock)
    raises: list[float] = []
    for step, holds in events:
        clock.now += step
        before = book.raised().get("unknown_items_share", 0)
        alerts = book.evaluate([_condition(holds)])
        if book.raised().get("unknown_items_share", 0) > before:
            raises.append(clock.now)
        if holds:
            assert raises and clock.now - raises[-1] < window or raises[-1] == clock.now
            assert alerts[0]["status"] in (FIRING, SUPPRESSED)
        elif alerts:
            assert alerts[0]["status"] == RESOLVED
    assert all(b - a >= window for a, b in zip(raises, raises[1:]))


def test_firing_alerts_come_first() -> None:
    book = AlertBook(60, clock=Clock())
    book.evaluate([Condition("a", True, 1, 0, "", ""), Condition("b", True, 1, 0, "", "")])
    alerts = book.evaluate([Condition("a", False, 0, 0, "", ""), Condition("b", True, 1, 0, "", "")])
    assert [(a["alert"], a["status"]) for a in alerts] == [("b", FIRING), ("a", RESOLVED)]
