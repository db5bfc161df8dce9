"""Arrival traces: sorted float64 arrays of arrival times in seconds from the trace's start.

Gamma inter-arrivals with shape k = 1/cv² and scale cv²/rate have mean 1/rate and coefficient of
variation cv (cv = 1: Poisson; cv > 1: burstier; cv < 1: smoother). A trace file holds one timestamp
per line; `load_trace` and `save_trace` are the only functions here that touch a file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from veloxserve.errors import InvalidInput, invalid_parameter

MAX_QUERIES = 50_000_000  # a trace this long (400 MB) is a mistake in rate or duration, not a plan


def _positive(value: float, field: str, where: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise invalid_parameter(field, where, "a finite number > 0", value)
    return float(value)


def gamma_trace(rate: float, cv: float, duration_s: float, seed: int = 0) -> np.ndarray:
    """Arrivals over [0, duration_s) at `rate` per second with inter-arrival coefficient of variation `cv`."""
    return _gamma(rate, cv, duration_s, np.random.default_rng(seed), 0.0)


def _gamma(rate: float, cv: float, duration_s: float, rng: np.random.Generator, start: float) -> np.ndarray:
    where = "a Gamma arrival trace"
    rate, cv, duration_s = (
        _positive(rate, "rate", where),
        _positive(cv, "cv", where),
        _positive(duration_s, "duration_s", where),
    )
    expected = rate * duration_s
    if expected > MAX_QUERIES:
        raise invalid_parameter("rate", where, f"at most {MAX_QUERIES} queries over the duration", expected)
    shape, scale = 1.0 / cv**2, cv**2 / rate
    n = int(expected + 6 * math.sqrt(expected) * max(cv, 1.0) + 16)
    gaps = rng.gamma(shape, scale, size=n)
    times = start + np.cumsum(gaps)
    while times[-1] < start + duration_s:  # rare: a short tail, extend
        more = times[-1] + np.cumsum(rng.gamma(shape, scale, size=n))
        times = np.concatenate([times, more])
    return times[times < start + duration_s]


def rate_change_trace(segments: Sequence[tuple[float, float, float]], seed: int = 0) -> np.ndarray:
    """Consecutive Gamma segments (rate, cv, duration_s), e.g. a rate change mid-run."""
    if not segments:
        raise invalid_parameter("segments", "a rate-change trace", "at least one (rate, cv, duration_s)", segments)
    rng = np.random.default_rng(seed)
    parts, start = [], 0.0
    for i, segment in enumerate(segments):
        if not (isinstance(segment, (tuple, list)) and len(segment) == 3):
            raise invalid_parameter(f"segments[{i}]", "a rate-change trace", "(rate, cv, duration_s)", segment)
        rate, cv, duration = segment
        parts.append(_gamma(rate, cv, duration, rng, start))
        start += float(duration)
    return np.concatenate(parts)


def scaled(trace: np.ndarray, factor: float) -> np.ndarray:
    """The same arrival pattern at `factor` × the rate: every time divided by factor (same count, shorter span).
    For a 100× load over the same span, generate the trace at 100× the rate instead."""
    factor = _positive(factor, "factor", "scaled")
    return np.asarray(trace, dtype=np.float64) / factor


def checked(trace: object, where: str = "a trace") -> np.ndarray:
    """A trace as a sorted, finite, non-negative float64 array, or an error saying what is wrong with it."""
    times = np.asarray(trace, dtype=np.float64)
    if times.ndim != 1 or times.size == 0:
        raise invalid_parameter("trace", where, "a non-empty 1-D sequence of times in seconds", trace)
    if not np.isfinite(times).all() or (times < 0).any():
        raise InvalidInput(f"The trace of {where} must hold finite times >= 0 seconds.", field="trace")
    if (np.diff(times) < 0).any():
        at = int(np.argmax(np.diff(times) < 0)) + 1
        raise InvalidInput(
            f"The trace of {where} must be sorted: time {at} ({times[at]}) is before time {at - 1} ({times[at - 1]}).",
            field="trace",
        )
    return times


def save_trace(path: str | Path, trace: np.ndarray) -> None:
    """One timestamp per line, full precision."""
    times = checked(trace, "save_trace")
    Path(path).write_text("".join(f"{t!r}\n" for t in times.tolist()))


def load_trace(path: str | Path) -> np.ndarray:
    """A file of timestamps in seconds, one per line (blank lines and '#' comments skipped), sorted."""
    values = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            values.append(float(text))
        except ValueError:
            raise InvalidInput(
                f"Line {number} of the trace file {str(path)!r} must be a time in seconds. Got {text[:40]!r}.",
                field="trace",
            ) from None
    return checked(values, f"the trace file {str(path)!r}")
