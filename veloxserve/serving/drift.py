"""Drift detection on the prequential error: one detector design, four detectors.

Every detector watches a stream of values (each observation's squared error, predicted before
learned) and answers, per batch, the positions at which it detected a change; it then starts
afresh with the values after it, as river's detectors do. `DriftDetector` is that protocol:

    update(values) -> indices of detections      drift_detected: whether the last batch had one

    page_hinkley  Page–Hinkley: the cumulative excess of values over their running mean rises more
                  than λ above its minimum (an upward shift of the mean). Matches river value by value.
    adwin         ADWIN (Bifet & Gavaldà, SDM 2007): every `clock` values, the window is cut where
                  the means of its older and newer parts differ by more than the Hoeffding-style
                  bound ε(δ); exact over a window bounded to `max_window` values (river compresses
                  the window into buckets instead), so detections agree with river's within a clock.
    ddm           DDM (Gama et al., 2004): the miss rate p and its s.d. s = √(p(1−p)/n); drift when
                  p + s exceeds the minimum seen by 3 of its s.d. A miss is a value above `miss`
                  (a squared error beyond the tolerance). Matches river value by value.
    kswin         KSWIN (Raab et al., 2020): a two-sample Kolmogorov–Smirnov test of the newest
                  `stat_size` values against the rest of a sliding window; deterministic (river
                  draws a random subsample), tested against scipy's KS and river's detections.

Each is compiled (numba), so a batch of observations costs no Python loop: river's ADWIN and DDM
are fast enough per value (0.3 and 0.5 µs) but are called once per value from Python, and its
KSWIN runs scipy's KS test on every value (380 µs); see docs/monitoring.md.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from numba import njit
from scipy.stats import kstwo


class DriftDetector(Protocol):
    """What the monitor and the retrainer feed: values in, the positions of detected changes out."""

    name: str
    detections: int

    def update(self, values: np.ndarray) -> np.ndarray: ...

    @property
    def drift_detected(self) -> bool: ...


class _Detector:
    """The batch loop every detector shares: run the compiled kernel until it reports no more
    detections; a kernel resets its own state at a detection and returns where it happened."""

    name = ""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.detections = 0
        self.drift_detected = False

    def _kernel(self, xs: np.ndarray) -> int:
        raise NotImplementedError

    def _prepare(self, values: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(values, dtype=np.float64).ravel()

    def update(self, values: np.ndarray) -> np.ndarray:
        """Feed a batch in order; the indices of the values at which drift was detected."""
        xs = self._prepare(values)
        hits: list[int] = []
        with self._lock:
            offset = 0
            while offset < xs.size:
                hit = self._kernel(xs[offset:])
                if hit < 0:
                    break
                hits.append(offset + hit)
                offset += hit + 1
            self.detections += len(hits)
            self.drift_detected = bool(hits)
        return np.asarray(hits, dtype=np.int64)


# state vector: [n, mean, sum_increase, min_increase]
_N, _MEAN, _SUM, _MIN = range(4)


@njit(cache=True, nogil=True)
def _page_hinkley(
    state: np.ndarray, xs: np.ndarray, delta: float, alpha: float, threshold: float, min_instances: int
) -> int:
    """Feed xs in order; returns the index at which drift is detected (state then reset), or -1."""
    for t in range(xs.shape[0]):
        x = xs[t]
        state[_N] += 1.0
        state[_MEAN] += (x - state[_MEAN]) / state[_N]
        state[_SUM] = alpha * state[_SUM] + (x - state[_MEAN]) - delta
        if state[_SUM] < state[_MIN]:
            state[_MIN] = state[_SUM]
        if state[_N] >= min_instances and state[_SUM] - state[_MIN] > threshold:
            state[_N] = 0.0
            state[_MEAN] = 0.0
            state[_SUM] = 0.0
            state[_MIN] = np.inf
            return t
    return -1


@dataclass(frozen=True)
class PageHinkleyConfig:
    delta: float = 0.005
    threshold: float = 50.0
    alpha: float = 1 - 0.0001
    min_instances: int = 30

    def __post_init__(self) -> None:
        if self.threshold <= 0 or self.delta < 0 or not 0 < self.alpha <= 1 or self.min_instances < 1:
            raise ValueError(
                f"Page-Hinkley needs threshold > 0, delta >= 0, 0 < alpha <= 1, min_instances >= 1; got {self}"
            )


class PageHinkley(_Detector):
    """Page–Hinkley change detector for an upward shift in a stream's mean."""

    name = "page_hinkley"

    def __init__(self, config: PageHinkleyConfig | None = None) -> None:
        super().__init__()
        self.config = config or PageHinkleyConfig()
        self._state = np.array([0.0, 0.0, 0.0, np.inf])

    def _kernel(self, xs: np.ndarray) -> int:
        c = self.config
        return int(_page_hinkley(self._state, xs, c.delta, c.alpha, c.threshold, c.min_instances))


# ---- ADWIN -------------------------------------------------------------------------------
@dataclass(frozen=True)
class ADWINConfig:
    delta: float = 0.002  # confidence of the cut: smaller, fewer false alarms and later detections
    clock: int = 32  # check for a cut every this many values
    min_window_length: int = 5  # neither part of a cut is shorter than this
    grace_period: int = 10  # no check before this many values
    max_window: int = 10_000  # values kept (river keeps them all, compressed into buckets)
    max_buckets: int = 5  # splits tried per doubling of the newer part (river: buckets of each size)

    def __post_init__(self) -> None:
        if (
            not 0 < self.delta < 1
            or min(self.clock, self.min_window_length, self.max_buckets) < 1
            or self.grace_period < 0
        ):
            raise ValueError(
                f"ADWIN needs 0 < delta < 1, clock, min_window_length, max_buckets >= 1, grace_period >= 0; got {self}"
            )
        if self.max_window < 2 * self.min_window_length:
            raise ValueError(f"ADWIN max_window must be >= 2 * min_window_length, got {self}")


@njit(cache=True, nogil=True)
def _adwin_cut(sums: np.ndarray, state: np.ndarray, delta: float, min_len: int, per_doubling: int) -> bool:
    """Whether some split of the window has older and newer means further apart than ε. `sums`
    holds, per position of the ring, the cumulative sum and sum of squares up to that value, so a
    split costs O(1); splits are tried about `per_doubling` times per doubling of the newer part's
    length (river tries its buckets' boundaries: max_buckets buckets of each size)."""
    cap = sums.shape[0]
    start, n = int(state[0]), int(state[1])
    newest = (start + n - 1) % cap
    total = sums[newest, 0] - state[3]
    mean = total / n
    var = max((sums[newest, 1] - state[4]) / n - mean * mean, 0.0)
    dd = np.log(2.0 * np.log(n) / delta)
    n1 = min_len
    while n1 <= n - min_len:
        tail = sums[newest, 0] - sums[(newest - n1) % cap, 0]
        n0 = n - n1
        m = 1.0 / (n0 - min_len + 1) + 1.0 / (n1 - min_len + 1)
        eps = np.sqrt(2.0 * m * var * dd) + 2.0 / 3.0 * dd * m
        if abs((total - tail) / n0 - tail / n1) > eps:
            return True
        n1 += max(1, n1 // per_doubling)
    return False


@njit(cache=True, nogil=True)
def _adwin(
    sums: np.ndarray,
    state: np.ndarray,
    xs: np.ndarray,
    delta: float,
    clock: int,
    min_len: int,
    grace: int,
    per: int,
) -> int:
    """state: [start, length, values since reset, cumulative sum and sum of squares before the
    window's oldest value]. Returns the index of a detection (then reset), or -1."""
    cap = sums.shape[0]
    for t in range(xs.shape[0]):
        start, n = int(state[0]), int(state[1])
        before = (start + n - 1) % cap
        s0, q0 = (sums[before, 0], sums[before, 1]) if n > 0 else (state[3], state[4])
        if n == cap:  # bounded: the oldest value leaves
            state[3], state[4] = sums[start, 0], sums[start, 1]
            start = (start + 1) % cap
            n -= 1
        at = (start + n) % cap
        sums[at, 0], sums[at, 1] = s0 + xs[t], q0 + xs[t] * xs[t]
        n += 1
        state[0], state[1] = start, n
        state[2] += 1.0
        ticks = int(state[2])
        if ticks % clock == 0 and ticks > grace and n >= 2 * min_len and _adwin_cut(sums, state, delta, min_len, per):
            state[:] = 0.0
            return t
    return -1


class ADWIN(_Detector):
    """Adaptive windowing: a change in the mean of the window, at confidence δ."""

    name = "adwin"

    def __init__(self, config: ADWINConfig | None = None) -> None:
        super().__init__()
        self.config = config or ADWINConfig()
        self._sums = np.zeros((self.config.max_window, 2))
        self._state = np.zeros(5)

    def _kernel(self, xs: np.ndarray) -> int:
        c = self.config
        return int(
            _adwin(self._sums, self._state, xs, c.delta, c.clock, c.min_window_length, c.grace_period, c.max_buckets)
        )


# ---- DDM ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DDMConfig:
    warm_start: int = 30  # values before the first check
    drift_threshold: float = 3.0  # s.d.s above the minimum of p + s
    miss: float | None = None  # a value above this is a miss (None: values are already 0/1)

    def __post_init__(self) -> None:
        if self.warm_start < 0 or self.drift_threshold <= 0 or (self.miss is not None and self.miss < 0):
            raise ValueError(f"DDM needs warm_start >= 0, drift_threshold > 0, miss >= 0 or None; got {self}")


@njit(cache=True, nogil=True)
def _ddm(state: np.ndarray, xs: np.ndarray, warm_start: int, threshold: float) -> int:
    """state: [n, p, p_min, s_min, ps_min]. Returns the index of a detection (then reset), or -1."""
    for t in range(xs.shape[0]):
        state[0] += 1.0
        n = state[0]
        state[1] += (xs[t] - state[1]) / n
        p = state[1]
        s = np.sqrt(p * (1.0 - p) / n)
        if n > warm_start:
            if p + s <= state[4]:
                state[2], state[3], state[4] = p, s, p + s
            if p + s > state[2] + threshold * state[3]:
                state[0], state[1], state[2], state[3], state[4] = 0.0, 0.0, 0.0, 0.0, np.inf
                return t
    return -1


class DDM(_Detector):
    """Drift detection method on a stream of misses (0/1): the miss rate rising beyond its noise."""

    name = "ddm"

    def __init__(self, config: DDMConfig | None = None) -> None:
        super().__init__()
        self.config = config or DDMConfig()
        self._state = np.array([0.0, 0.0, 0.0, 0.0, np.inf])

    def _prepare(self, values: np.ndarray) -> np.ndarray:
        xs = super()._prepare(values)
        return xs if self.config.miss is None else (xs > self.config.miss).astype(np.float64)

    def _kernel(self, xs: np.ndarray) -> int:
        return int(_ddm(self._state, xs, self.config.warm_start, self.config.drift_threshold))


# ---- KSWIN -------------------------------------------------------------------------------
@dataclass(frozen=True)
class KSWINConfig:
    alpha: float = 0.005  # KS p-value at or below which the newest values differ from the older ones
    window_size: int = 100
    stat_size: int = 30  # the newest values, tested against the window's older values
    every: int = 1  # test every this many values (river: every value)
    min_statistic: float = 0.1  # and the KS distance is above this (river's rule)

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1 or not 0 < self.stat_size < self.window_size or self.every < 1:
            raise ValueError(f"KSWIN needs 0 < alpha < 1, 0 < stat_size < window_size, every >= 1; got {self}")

    @property
    def critical_distance(self) -> float:
        """The KS distance whose p-value is alpha (scipy's asymptotic two-sample p-value)."""
        n1, n2 = self.stat_size, self.window_size - self.stat_size
        return float(kstwo.isf(self.alpha, round(n1 * n2 / (n1 + n2))))


@njit(cache=True, nogil=True)
def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov–Smirnov statistic sup |F_a − F_b| (scipy.stats.ks_2samp's)."""
    a, b = np.sort(a), np.sort(b)
    i = j = 0
    d = 0.0
    while i < a.size and j < b.size:
        x = min(a[i], b[j])
        while i < a.size and a[i] <= x:
            i += 1
        while j < b.size and b[j] <= x:
            j += 1
        d = max(d, abs(i / a.size - j / b.size))
    return d


@njit(cache=True, nogil=True)
def _kswin(
    buf: np.ndarray, state: np.ndarray, xs: np.ndarray, stat_size: int, every: int, critical: float, min_d: float
) -> int:
    """state: [start, length, values since reset]; buf holds window_size values (a ring)."""
    cap = buf.size
    for t in range(xs.shape[0]):
        start, n = int(state[0]), int(state[1])
        if n == cap:
            start = (start + 1) % cap
            n -= 1
        buf[(start + n) % cap] = xs[t]
        n += 1
        state[0], state[1] = start, n
        state[2] += 1.0
        if n == cap and int(state[2]) % every == 0:
            window = np.empty(cap)
            for i in range(cap):
                window[i] = buf[(start + i) % cap]
            d = ks_distance(window[: cap - stat_size], window[cap - stat_size :])
            if d >= critical and d > min_d:
                state[0], state[1], state[2] = 0.0, 0.0, 0.0
                return t
    return -1


class KSWIN(_Detector):
    """Kolmogorov–Smirnov windowing: the newest values' distribution against the window's older part."""

    name = "kswin"

    def __init__(self, config: KSWINConfig | None = None) -> None:
        super().__init__()
        self.config = config or KSWINConfig()
        self._critical = self.config.critical_distance
        self._buf = np.zeros(self.config.window_size)
        self._state = np.zeros(3)

    def _kernel(self, xs: np.ndarray) -> int:
        c = self.config
        return int(_kswin(self._buf, self._state, xs, c.stat_size, c.every, self._critical, c.min_statistic))


# ---- the detectors by name ---------------------------------------------------------------
DETECTORS: dict[str, tuple[Callable[..., Any], Callable[[Any], DriftDetector]]] = {
    "page_hinkley": (PageHinkleyConfig, PageHinkley),
    "adwin": (ADWINConfig, ADWIN),
    "ddm": (DDMConfig, DDM),
    "kswin": (KSWINConfig, KSWIN),
}


# Settings for squared prequential errors (heavy-tailed; monitoring and the retraining trigger use
# them): Page–Hinkley as the retraining policy's defaults (serving/retraining.py says why), KSWIN
# tested every 50 values at a level that makes a false alarm rare over days of traffic, DDM's miss
# an absolute error above 1 (the monitor sets it from MonitoringConfig.drift_miss and the link).
ON_SQUARED_ERRORS: dict[str, dict[str, Any]] = {
    "page_hinkley": {"threshold": 100.0, "delta": 0.2},
    "adwin": {"delta": 0.002},
    "ddm": {"warm_start": 100, "miss": 1.0},
    "kswin": {"alpha": 1e-4, "window_size": 500, "stat_size": 100, "every": 50},
}


def make_detector(name: str, **settings: Any) -> DriftDetector:
    """A detector by name ("adwin", "ddm", "kswin", "page_hinkley") with its settings."""
    try:
        config_type, detector_type = DETECTORS[name]
    except KeyError:
        raise ValueError(f"no drift detector {name!r}; expected one of {', '.join(sorted(DETECTORS))}") from None
    return detector_type(config_type(**settings))
