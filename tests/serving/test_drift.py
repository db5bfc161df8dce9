"""The drift detectors against river's on the same streams (Page–Hinkley and DDM value by value,
ADWIN within a clock, KSWIN near its detections), and on the shifts they exist for."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from river.drift import ADWIN as RiverADWIN
from river.drift import KSWIN as RiverKSWIN
from river.drift import PageHinkley as RiverPageHinkley
from river.drift.binary import DDM as RiverDDM
from scipy.stats import ks_2samp, kstwo

from veloxserve.serving.drift import (
    ADWIN,
    DDM,
    DETECTORS,
    KSWIN,
    ADWINConfig,
    DDMConfig,
    KSWINConfig,
    PageHinkley,
    PageHinkleyConfig,
    ks_distance,
    make_detector,
)


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


# ---- ADWIN, DDM, KSWIN against river on the same streams -----------------------------------
def _river(detector, values: np.ndarray) -> list[int]:
    hits = []
    for t, x in enumerate(values.tolist()):
        detector.update(x)
        if detector.drift_detected:
            hits.append(t)
    return hits


def _batched(detector, values: np.ndarray, batch: int) -> list[int]:
    return [s + int(h) for s in range(0, len(values), batch) for h in detector.update(values[s : s + batch])]


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    before=st.floats(0.0, 0.5),
    after=st.floats(0.0, 1.0),
    shift_at=st.integers(0, 1500),
    warm_start=st.integers(0, 60),
    threshold=st.floats(1.0, 4.0),
    batch=st.integers(1, 300),
)
def test_ddm_matches_river_value_by_value(seed, before, after, shift_at, warm_start, threshold, batch) -> None:
    rng = np.random.default_rng(seed)
    p = np.where(np.arange(2000) < shift_at, before, after)
    misses = (rng.random(2000) < p).astype(float)
    ours = _batched(DDM(DDMConfig(warm_start=warm_start, drift_threshold=threshold)), misses, batch)
    assert ours == _river(RiverDDM(warm_start=warm_start, drift_threshold=threshold), misses)


def test_ddm_counts_values_above_miss_as_misses() -> None:
    rng = np.random.default_rng(4)
    squared = rng.normal(size=3000) ** 2
    ours = DDM(DDMConfig(miss=1.0)).update(squared).tolist()
    assert ours == _river(RiverDDM(), (squared > 1.0).astype(float))


def _first_after(hits: list[int], t: int) -> int | None:
    return next((h for h in hits if h >= t), None)


def test_adwin_detects_each_change_where_river_does_within_two_clocks() -> None:
    """River keeps ADWIN's window in exponential buckets and tries the buckets' boundaries as
    splits; ours keeps the window whole (bounded) and tries max_buckets splits per doubling, so
    the cut is found at the same check (the value at the same index) or one or two checks apart."""
    same = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        first, shift, delta = int(rng.integers(200, 3000)), rng.uniform(0.3, 3.0), (0.002, 0.01)[seed % 2]
        values = np.concatenate(
            [rng.exponential(1.0, first), rng.exponential(1.0 + shift, 2000), rng.exponential(1.0, 1500)]
        )
        ours = _batched(ADWIN(ADWINConfig(delta=delta)), values, int(rng.integers(1, 500)))
        theirs = _river(RiverADWIN(delta=delta), values)
        same += ours == theirs
        for change in (first, first + 2000):
            river_hit, our_hit = _first_after(theirs, change), _first_after(ours, change)
            assert river_hit is not None and river_hit < change + 1000  # the streams' changes are detectable
            assert our_hit is not None and abs(our_hit - river_hit) <= 2 * ADWINConfig().clock, (seed, ours, theirs)
    assert same >= 20  # most streams: every detection at the same index as river's


def test_adwin_does_not_fire_on_stationary_streams_where_river_does_not() -> None:
    for seed in range(5):
        values = np.random.default_rng(seed).exponential(1.0, 20_000)
        assert ADWIN().update(values).tolist() == _river(RiverADWIN(), values) == []


def test_kswin_distance_is_scipys_ks_statistic() -> None:
    rng = np.random.default_rng(2)
    for _ in range(50):
        a, b = rng.normal(size=rng.integers(5, 80)), rng.normal(0.5, 1, size=rng.integers(5, 40))
        if rng.random() < 0.5:
            a, b = np.round(a), np.round(b)  # ties
        assert np.isclose(ks_distance(a, b), ks_2samp(a, b).statistic)


def test_kswin_critical_distance_is_where_scipys_asymptotic_p_value_reaches_alpha() -> None:
    config = KSWINConfig(alpha=0.005, window_size=100, stat_size=30)
    assert np.isclose(kstwo.sf(config.critical_distance, round(30 * 70 / 100)), 0.005)


def test_kswin_detects_a_change_where_river_does_and_not_a_stationary_stream() -> None:
    """River tests a random subsample of the older values (so its detections vary with its seed);
    ours tests all of them. Both detect the change within a window of it, and neither fires on a
    stationary stream at a small alpha."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        values = np.concatenate([rng.normal(0, 1, 600), rng.normal(1.5, 1, 400)])
        ours = KSWIN(KSWINConfig(alpha=1e-4)).update(values).tolist()
        theirs = _river(RiverKSWIN(alpha=1e-4, seed=seed), values)
        assert ours and theirs and 600 <= ours[0] < 700 and abs(ours[0] - theirs[0]) <= 30
        stationary = rng.normal(size=2000)
        assert KSWIN(KSWINConfig(alpha=1e-5)).update(stationary).size == 0
        assert _river(RiverKSWIN(alpha=1e-5, seed=seed), stationary) == []


def test_one_design_every_detector_by_name_batches_as_values_and_resets_after_a_detection() -> None:
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.exponential(1.0, 3000), rng.exponential(6.0, 1000)])
    settings_ = {"page_hinkley": {"threshold": 50.0}, "ddm": {"miss": 2.0}, "adwin": {}, "kswin": {"alpha": 1e-4}}
    assert set(DETECTORS) == set(settings_)
    for name, config in settings_.items():
        whole, batched = make_detector(name, **config), make_detector(name, **config)
        hits = whole.update(values).tolist()
        assert hits and 3000 <= hits[0] < 3400, name
        assert whole.drift_detected and whole.detections == len(hits)
        assert _batched(batched, values, 37) == hits  # batches see what one batch sees
        assert not make_detector(name, **config).update(values[:3000]).size  # and nothing before the change
    with pytest.raises(ValueError, match="no drift detector 'nope'"):
        make_detector("nope")
