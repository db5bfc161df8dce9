import numpy as np
import pytest

from veloxserve.serving.evaluation import PrequentialError


def test_windows_equal_a_direct_computation_across_ring_wraparound() -> None:
    rng = np.random.default_rng(0)
    metric = PrequentialError(windows=(10, 50))
    predicted, observed = rng.normal(size=137), rng.normal(size=137)
    for start in range(0, 137, 13):  # batches of uneven size
        metric.update(observed[start : start + 13] - predicted[start : start + 13])
    errors = observed - predicted
    report = metric.report()
    assert report["observations"] == 137
    assert report["rmse"] == pytest.approx(np.sqrt(np.mean(errors**2)))
    for window in (10, 50):
        assert report["windows"][str(window)]["rmse"] == pytest.approx(np.sqrt(np.mean(errors[-window:] ** 2)))
        assert report["windows"][str(window)]["mae"] == pytest.approx(np.mean(np.abs(errors[-window:])))


def test_a_batch_larger_than_the_largest_window_keeps_its_tail() -> None:
    metric = PrequentialError(windows=(5,))
    metric.update(np.arange(12.0) - np.zeros(12))
    assert metric.report()["windows"]["5"]["mae"] == pytest.approx(np.mean(np.arange(7.0, 12.0)))


def test_empty_report_has_no_error_yet() -> None:
    report = PrequentialError().report()
    assert report["observations"] == 0 and report["rmse"] is None
