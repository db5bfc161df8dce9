"""Page–Hinkley against river's implementation, value by value, and on the shift it exists for."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from river.drift import PageHinkley as RiverPageHinkley

from veloxserve.serving.drift import PageHinkley, PageHinkleyConfig


def _river_detections(values: np.ndarray, config: PageHinkleyConfig) -> list[int]:
    detector = RiverPageHinkley(
        min_instances=config.min_instances,
        delta=config.delta,
        threshold=config.threshold,
        alpha=config.alpha,
        mode="up",
    )
    hits = []
    for t, x in enumerate(values):
        detector.update(float(x))
        if detector.drift_detected:
            hits.append(t)
    return hits


def _our_detections(values: np.ndarray, config: PageHinkleyConfig, batch: int) -> list[int]:
    detector = PageHinkley(config)
    return [
        start + int(hit)
        for start in range(0, len(values), batch)
        for hit in detector.update(values[start : start + batch])
    ]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    shift_at=st.integers(0, 400),
    shift=st.floats(0, 5),
    threshold=st.floats(0.5, 30),
    delta=st.floats(0, 0.5),
    min_instances=st.integers(1, 50),
    batch=st.integers(1, 97),
)
def test_detections_match_river(seed, shift_at, shift, threshold, delta, min_instances, batch) -> None:
    rng = np.random.default_rng(seed)
    values = rng.exponential(1.0, size=500)
    values[shift_at:] += shift
    config = PageHinkleyConfig(delta=delta, threshold=threshold, min_instances=min_instances)
    assert _our_detections(values, config, batch) == _river_detections(values, config)


def test_detects_an_upward_shift_soon_and_not_a_stationary_stream() -> None:
    rng = np.random.default_rng(1)
    config = PageHinkleyConfig(threshold=100.0)
    stationary = rng.normal(1.0, 0.3, size=20_000)
    assert PageHinkley(config).update(stationary).size == 0
    shifted = np.concatenate([rng.normal(1.0, 0.3, size=2_000), rng.normal(2.0, 0.3, size=2_000)])
    hits = PageHinkley(config).update(shifted)
    assert 2_000 <= hits[0] < 2_200
