"""Arrival traces: rate and burstiness as asked, seeded, and the file format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from veloxserve.errors import InvalidInput
from veloxserve.pipelines.traces import gamma_trace, load_trace, rate_change_trace, save_trace, scaled


@pytest.mark.parametrize("cv", [0.5, 1.0, 4.0])
def test_gamma_trace_has_the_rate_and_the_coefficient_of_variation(cv: float) -> None:
    trace = gamma_trace(200.0, cv, 200.0, seed=3)
    gaps = np.diff(trace)
    assert (gaps >= 0).all() and trace[0] >= 0 and trace[-1] < 200.0
    assert trace.size / 200.0 == pytest.approx(200.0, rel=0.05 * max(cv, 1.0))
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.06)


def test_seeded_traces_repeat() -> None:
    assert np.array_equal(gamma_trace(50, 2, 10, seed=1), gamma_trace(50, 2, 10, seed=1))
    assert not np.array_equal(gamma_trace(50, 2, 10, seed=1), gamma_trace(50, 2, 10, seed=2))


def test_rate_change_trace_changes_rate_at_the_boundary() -> None:
    trace = rate_change_trace([(100.0, 1.0, 30.0), (400.0, 1.0, 30.0)], seed=4)
    before, after = (trace < 30).sum() / 30, (trace >= 30).sum() / 30
    assert before == pytest.approx(100, rel=0.1) and after == pytest.approx(400, rel=0.1)
    assert (np.diff(trace) >= 0).all() and trace[-1] < 60


def test_scaled_multiplies_the_rate() -> None:
    trace = gamma_trace(10.0, 1.0, 100.0, seed=0)
    fast = scaled(trace, 100.0)
    assert fast.size == trace.size and fast[-1] == pytest.approx(trace[-1] / 100)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    trace = gamma_trace(30.0, 2.0, 5.0, seed=8)
    save_trace(tmp_path / "t.txt", trace)
    assert np.array_equal(load_trace(tmp_path / "t.txt"), trace)


def test_load_skips_comments_and_names_a_bad_line(tmp_path: Path) -> None:
    (tmp_path / "t.txt").write_text("# arrivals\n0.5\n\n1.25  # late\n")
    assert load_trace(tmp_path / "t.txt").tolist() == [0.5, 1.25]
    (tmp_path / "bad.txt").write_text("0.5\nsoon\n")
    with pytest.raises(InvalidInput, match="Line 2"):
        load_trace(tmp_path / "bad.txt")
    (tmp_path / "unsorted.txt").write_text("2\n1\n")
    with pytest.raises(InvalidInput, match="sorted"):
        load_trace(tmp_path / "unsorted.txt")


@pytest.mark.parametrize(
    ("args", "field"), [((0, 1, 1), "rate"), ((1, -1, 1), "cv"), ((1, 1, float("inf")), "duration_s")]
)
def test_bad_parameters_name_the_field(args: tuple[float, float, float], field: str) -> None:
    with pytest.raises(InvalidInput) as info:
        gamma_trace(*args)
    assert info.value.field == field
