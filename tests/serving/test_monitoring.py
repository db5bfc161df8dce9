"""Every alert raised by the deviation it is for, and none on a clean stream from the training data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import referenced_version_arrays, synthetic_version_arrays
from veloxserve.config import HomeLayout, MonitoringConfig, ServingConfig
from veloxserve.errors import ItemNotFound
from veloxserve.serving.velox import Velox
from veloxserve.storage.versions import VersionStore

CONFIG = MonitoringConfig(min_requests=100, window=2_000, sample=1_000)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[tuple[Velox, np.ndarray, np.ndarray]]:
    arrays, meta, users, items = referenced_version_arrays()
    VersionStore(HomeLayout(tmp_path).versions_dir("songs")).write(arrays, meta)
    with Velox(tmp_path, config=ServingConfig(fsync=False, monitoring=CONFIG)) as velox:
        yield velox, users, items


def _clean(velox: Velox, users: np.ndarray, items: np.ndarray, n: int, seed: int = 1) -> None:
    """Requests drawn from the training rows: the distribution the version was trained on."""
    rows = np.random.default_rng(seed).integers(0, users.size, n)
    velox.predict_many("songs", list(zip(users[rows].tolist(), items[rows].tolist())))


def _holding(velox: Velox) -> dict[str, dict]:
    return {a["alert"]: a for a in velox.alerts("songs")["alerts"] if a["status"] != "resolved"}


def test_a_clean_stream_from_the_training_distribution_raises_nothing(home) -> None:
    velox, users, items = home
    for seed in range(3):
        _clean(velox, users, items, 1_000, seed)
        velox.top_k("songs", users[seed], 3)
    velox.server("songs").record_feedback(np.random.default_rng(0).normal(size=20_000))  # stationary errors
    report = velox.alerts("songs")
    assert report["reference"] and report["deviations"]["served_sample"] == 1_000
    assert report["alerts"] == [], report["alerts"]
    assert report["deviations"]["scores"]["ks_p"] > 0.01
    assert all(f["p"] > 0.01 for f in report["deviations"]["features"])


def test_unknown_items_raise_an_alert_naming_the_share_and_the_version(home) -> None:
    velox, users, items = home
    _clean(velox, users, items, 600)
    for i in range(300):
        with pytest.raises(ItemNotFound):
            velox.predict("songs", users[i], f"new-item-{i}")
    with pytest.raises(ItemNotFound):  # a batch with one unknown item counts each of its items
        velox.predict_many("songs", [(users[0], items[0]), (users[0], "new-item-x")])
    alert = _holding(velox)["unknown_items_share"]
    share = 301 / 902
    assert alert["status"] == "firing" and np.isclose(alert["value"], share)
    assert alert["fix"].startswith(f"retrain: {share:.0%} of requested items are unknown to version v1")
    assert "they arrived after its training data" in alert["fix"]


def test_unknown_items_in_observations_count_too(home) -> None:
    velox, users, items = home
    _clean(velox, users, items, 100)
    for i in range(60):
        with pytest.raises(ItemNotFound):
            velox.observe("songs", users[i], f"new-{i}", 3.0)
    assert np.isclose(_holding(velox)["unknown_items_share"]["value"], 60 / 160)


def test_new_users_raise_an_alert(home) -> None:
    velox, users, items = home
    _clean(velox, users, items, 300)
    velox.predict_many("songs", [(f"stranger-{i}", items[i]) for i in range(400)])
    alert = _holding(velox)["new_users_share"]
    assert np.isclose(alert["value"], 400 / 700) and alert["threshold"] == CONFIG.new_users_share
    assert "not trained on" in alert["fix"] and alert["fix"].startswith("retrain")


def test_shifted_scores_raise_score_psi(home) -> None:
    velox, users, items = home
    server = velox.server("songs")
    rows = np.random.default_rng(2).integers(0, users.size, 5_000)
    scores = server.predict_many(list(zip(users[rows].tolist(), items[rows].tolist())))
    high = rows[scores > np.quantile(scores, 0.7)][:1_000]  # training pairs, but only the best-scored
    velox.predict_many("songs", list(zip(users[high].tolist(), items[high].tolist())))
    alert = _holding(velox)["score_psi"]
    assert alert["value"] > CONFIG.score_psi and "PSI" in alert["cause"]


def test_a_shifted_feature_dimension_raises_feature_ks_on_that_dimension(home) -> None:
    velox, users, items = home
    server = velox.server("songs")
    F = server.version.features.matrix
    wanted = np.argsort(-F[:, 0])[:15]  # requests only for items high on f_0
    pick = np.random.default_rng(3).integers(0, 15, 1_000)
    velox.predict_many(
        "songs", [(users[i], server.version.catalog.external(int(wanted[j]))) for i, j in enumerate(pick)]
    )
    alert = _holding(velox)["feature_ks:d0"]
    assert alert["value"] < CONFIG.feature_ks_p and "dimension 0" in alert["cause"]


@pytest.mark.parametrize("detector", ["adwin", "ddm", "kswin", "page_hinkley"])
def test_a_drifting_error_raises_each_detectors_alert_and_it_resolves_once_quiet(home, detector: str) -> None:
    velox, _, _ = home
    server = velox.server("songs")
    rng = np.random.default_rng(4)
    server.record_feedback(rng.normal(0, 1.0, 3_000))
    assert f"drift:{detector}" not in _holding(velox)
    server.record_feedback(rng.normal(0, 3.0, 1_000))  # the error's s.d. triples
    alert = _holding(velox)[f"drift:{detector}"]
    assert alert["status"] == "firing" and alert["fix"].startswith("retrain: the prequential error")
    assert velox.alerts("songs")["detectors"][detector]["detections"] >= 1
    server.record_feedback(rng.normal(0, 1.0, 4_000))  # fixed (say, retrained): quiet again
    resolved = {a["alert"]: a for a in velox.alerts("songs")["alerts"]}[f"drift:{detector}"]
    assert resolved["status"] == "resolved" and resolved["fix"].startswith("resolved:")
    assert resolved["value"] >= CONFIG.drift_quiet and resolved["raised"] == 1


def test_observations_feed_the_detectors(home) -> None:
    velox, users, items = home
    velox.observe_many("songs", [(users[i], items[i], 3.0) for i in range(50)])
    assert velox.alerts("songs")["observations"] == 50


def test_a_version_without_reference_checks_shares_only(tmp_path: Path) -> None:
    arrays, meta = synthetic_version_arrays()
    VersionStore(HomeLayout(tmp_path).versions_dir("songs")).write(arrays, meta)
    with Velox(tmp_path, config=ServingConfig(fsync=False, monitoring=CONFIG)) as velox:
        velox.predict_many("songs", [(f"stranger-{i}", "100") for i in range(200)])
        report = velox.alerts("songs")
    assert not report["reference"] and report["deviations"]["scores"] is None
    assert {a["alert"] for a in report["alerts"]} == {"new_users_share"}


def test_an_unknown_detector_name_is_refused() -> None:
    arrays, meta = synthetic_version_arrays()
    from veloxserve.models.version import ModelVersion
    from veloxserve.serving.monitoring import Monitor

    with pytest.raises(ValueError, match="no detector 'cusum'"):
        Monitor(ModelVersion.from_arrays(arrays, meta), MonitoringConfig(drift_detectors=("cusum",)))
