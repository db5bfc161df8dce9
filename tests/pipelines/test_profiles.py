"""StageProfile: interpolation, extrapolation, throughput, JSON round trip and refusals naming the field."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.errors import InvalidInput
from veloxserve.pipelines.profiles import BatchTiming, StageProfile, by_stage_and_kind


def _profile(points: dict[int, float], stage: str = "s", kind: str = "threads=1") -> StageProfile:
    return StageProfile(stage, kind, 1.0, tuple(BatchTiming(b, t, 2 * t, 1.1 * t) for b, t in reversed(points.items())))


def test_timings_are_sorted_and_measured_sizes_are_exact() -> None:
    p = _profile({1: 0.010, 4: 0.016, 8: 0.024})
    assert p.batch_sizes == (1, 4, 8)
    assert p.service_time(4, "p50") == pytest.approx(0.016)
    assert p.service_time(4, "p99") == pytest.approx(0.032)
    assert p.service_time(4) == pytest.approx(0.0176)


def test_between_sizes_is_linear_and_above_follows_the_last_slope() -> None:
    p = _profile({1: 0.010, 4: 0.016, 8: 0.024})
    assert p.service_time(2, "p50") == pytest.approx(0.010 + 0.006 / 3)
    assert p.service_time(6, "p50") == pytest.approx(0.020)
    assert p.service_time(16, "p50") == pytest.approx(0.024 + 8 * 0.002)
    single = _profile({4: 0.020})
    assert single.service_time(8, "p50") == pytest.approx(0.040)
    assert single.service_time(2, "p50") == pytest.approx(0.020)


def test_throughput_is_batch_over_mean_time() -> None:
    p = _profile({1: 0.010, 8: 0.020})
    assert p.throughput(8) == pytest.approx(8 / 0.022)
    assert p.throughput(1) == pytest.approx(1 / 0.011)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.integers(1, 64), st.floats(1e-4, 1.0), min_size=1, max_size=6), st.integers(1, 200))
def test_service_time_is_between_the_neighbouring_measurements(points: dict[int, float], b: int) -> None:
    p = _profile(points)
    t = p.service_time(b, "p50")
    sizes = sorted(points)
    if sizes[0] <= b <= sizes[-1]:
        lo = max(s for s in sizes if s <= b)
        hi = min(s for s in sizes if s >= b)
        assert min(points[lo], points[hi]) - 1e-12 <= t <= max(points[lo], points[hi]) + 1e-12
    elif b > sizes[-1]:
        assert t >= points[sizes[-1]] - 1e-12


def test_json_round_trip() -> None:
    p = _profile({1: 0.010, 4: 0.016})
    assert StageProfile.from_json(p.to_json()) == p


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.pop("kind"), "kind"),
        (lambda d: d.update(price_per_replica_s=-1), "price_per_replica_s"),
        (lambda d: d.update(timings=[]), "timings"),
        (lambda d: d.update(timings="x"), "timings"),
        (lambda d: d["timings"][0].update(batch_size=0), "batch_size"),
        (lambda d: d["timings"][0].update(p99_s=0.001), "p99_s"),
        (lambda d: d["timings"][0].update(mean_s=float("nan")), "mean_s"),
        (lambda d: d["timings"][0].pop("p50_s"), "p50_s"),
        (lambda d: d["timings"].append(dict(d["timings"][0])), "timings"),
    ],
)
def test_bad_json_names_the_field(change, field: str) -> None:
    data = _profile({1: 0.010, 4: 0.016}).to_json()
    change(data)
    with pytest.raises(InvalidInput) as info:
        StageProfile.from_json(data)
    assert info.value.field == field
    assert field in info.value.message


def test_service_time_refuses_a_bad_quantile_or_size() -> None:
    p = _profile({1: 0.01})
    with pytest.raises(InvalidInput, match="quantile"):
        p.service_time(1, "p90")
    with pytest.raises(InvalidInput, match="batch_size"):
        p.service_time(0)


def test_by_stage_and_kind_accepts_one_or_several_profiles() -> None:
    a, b = _profile({1: 0.01}, "s", "k1"), _profile({1: 0.02}, "s", "k2")
    assert by_stage_and_kind({"s": a}) == {"s": {"k1": a}}
    assert by_stage_and_kind({"s": [a, b]}) == {"s": {"k1": a, "k2": b}}
    with pytest.raises(InvalidInput):
        by_stage_and_kind({"t": a})
    with pytest.raises(InvalidInput):
        by_stage_and_kind({"s": [a, a]})
