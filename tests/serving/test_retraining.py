"""The retraining policy's drift trigger: any detector of serving/drift.py, chosen by name."""

from __future__ import annotations

import numpy as np
import pytest

from veloxserve.errors import InvalidInput
from veloxserve.serving.drift import ADWIN, DDM, KSWIN, PageHinkley
from veloxserve.serving.retraining import RetrainPolicy


@pytest.mark.parametrize(
    ("name", "kind"), [("page_hinkley", PageHinkley), ("adwin", ADWIN), ("ddm", DDM), ("kswin", KSWIN)]
)
def test_the_policy_builds_the_detector_it_names_and_it_sees_the_error_rise(name: str, kind: type) -> None:
    policy = RetrainPolicy.from_dict({"drift": True, "drift_detector": name})
    detector = policy.detector()
    assert isinstance(detector, kind)
    rng = np.random.default_rng(0)
    assert detector.update(rng.normal(0, 1, 5_000) ** 2).size == 0  # stationary squared errors
    hits = detector.update(rng.normal(0, 3, 1_000) ** 2)  # the error's s.d. triples
    assert hits.size and hits[0] < 500


def test_without_drift_there_is_no_detector_and_an_unknown_one_is_refused() -> None:
    assert RetrainPolicy(drift_detector="adwin").detector() is None
    assert RetrainPolicy().drift_detector == "page_hinkley"  # as policies written before the field
    with pytest.raises(InvalidInput, match="adwin or ddm or kswin or page_hinkley"):
        RetrainPolicy.from_dict({"drift": True, "drift_detector": "cusum"})
