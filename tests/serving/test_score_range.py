"""Scores are bounded: a version accepts observations only inside its score range, recorded at
training; nothing non-finite is ever learned from the log or answered."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from tests.conftest import synthetic_version_arrays
from veloxserve.api import create_app
from veloxserve.api.auth import AuthConfig
from veloxserve.config import HomeLayout
from veloxserve.errors import InvalidInput, ModelStateInvalid
from veloxserve.models.version import DEFAULT_SCORE_LIMIT
from veloxserve.serving.validation import score_in_range
from veloxserve.serving.velox import Velox
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.storage.version_catalog import VersionCatalog
from veloxserve.storage.versions import VersionStore
from veloxserve.training.als import ALSConfig
from veloxserve.training.ratings import Ratings
from veloxserve.training.trainer import retrain_version, train_version

SMALL = ALSConfig(rank=2, iterations=3, heldout_fraction=0.1)


def _synthetic_home(root: Path) -> Path:
    arrays, meta = synthetic_version_arrays(name="songs")  # no score_range: an older home
    VersionStore(HomeLayout(root).versions_dir("songs")).write(arrays, meta)
    return root


def _ratings(rng: np.random.Generator, n: int = 600, low: float = 1.0, high: float = 5.0) -> Ratings:
    users = rng.integers(0, 40, n).astype(str)
    items = rng.integers(0, 30, n).astype(str)
    scores = rng.integers(int(low), int(high) + 1, n).astype(np.float64)
    scores[:2] = low, high  # both ends present
    return Ratings(users, items, scores)


@pytest.mark.parametrize("score", [1e308, -1e308, DEFAULT_SCORE_LIMIT * 1.5])
def test_a_score_outside_the_range_is_a_400_naming_the_field_and_changes_nothing(tmp_path: Path, score: float) -> None:
    with (
        Velox(_synthetic_home(tmp_path)) as velox,
        TestClient(create_app(velox, auth=AuthConfig(enabled=False)), raise_server_exceptions=False) as client,
    ):
        before = client.get("/models/songs/predict", params={"user": 3, "item": 101}).json()["score"]
        lsn = velox.observation_log("songs").last_lsn
        rows = {"observations": [{"user": 3, "item": 101, "score": 4.0}, {"user": 3, "item": 102, "score": score}]}
        r = client.post("/models/songs/observe", json=rows)
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "observations[1].score" and "score range" in r.json()["message"]
        assert client.get("/models/songs/predict", params={"user": 3, "item": 101}).json()["score"] == before
        assert velox.observation_log("songs").last_lsn == lsn  # the good row of the batch was not logged either


def test_training_records_the_data_range_widened_and_observe_enforces_it(tmp_path: Path) -> None:
    data = _ratings(np.random.default_rng(0))
    layout = HomeLayout(tmp_path)
    meta = train_version(layout, "stars", data, SMALL)
    span = 5.0 - 1.0
    assert meta["score_range"] == pytest.approx([1.0 - 0.1 * span, 5.0 + 0.1 * span])
    assert meta["score_range_source"] == "data"
    VersionCatalog(layout.model_dir("stars")).activate(meta["version"])
    with Velox(tmp_path) as velox:
        velox.observe_many("stars", [("0", "1", 5.4), ("0", "2", 0.6)])  # the ends are accepted
        with pytest.raises(InvalidInput) as err:
            velox.observe_many("stars", [("0", "1", 5.41)])
        assert err.value.field == "observations[0].score"


def test_an_overridden_range_is_recorded_and_kept_by_retrains(tmp_path: Path) -> None:
    data = _ratings(np.random.default_rng(1))
    layout = HomeLayout(tmp_path)
    meta = train_version(layout, "stars", data, SMALL, score_range=(-10.0, 10.0))
    assert meta["score_range"] == [-10.0, 10.0] and meta["score_range_source"] == "override"
    child = retrain_version(layout, "stars", "v2", parent=meta["version"], upto_lsn=0, reason="test")
    assert child["score_range"] == [-10.0, 10.0] and child["score_range_source"] == "override"
    with pytest.raises(InvalidInput):
        train_version(layout, "bad", data, SMALL, score_range=(3.0, 1.0))


def test_an_out_of_range_score_in_an_older_log_is_not_learned_on_recovery(tmp_path: Path) -> None:
    home = _synthetic_home(tmp_path)
    log = ObservationLog(HomeLayout(home).log_dir("songs"))
    log.append_and_wait([("7", "101", 4.0, "v1", None), ("7", "101", 1e308, "v1", None)])
    log.close()
    with Velox(home) as velox:
        assert math.isfinite(velox.predict("songs", 7, 101))
        assert velox.top_k("songs", 7, 3)


def test_a_non_finite_score_is_a_500_never_a_null(tmp_path: Path) -> None:
    with (
        Velox(_synthetic_home(tmp_path)) as velox,
        TestClient(create_app(velox, auth=AuthConfig(enabled=False)), raise_server_exceptions=False) as client,
    ):
        server = velox.server("songs")
        server.users.W[server.users.rows["3"]] = np.inf  # a state broken by whatever means
        for r in (
            client.get("/models/songs/predict", params={"user": 3, "item": 101}),
            client.post(
                "/models/songs/predict", json={"queries": [{"user": 3, "item": 101}, {"user": 4, "item": 101}]}
            ),
            client.get("/models/songs/top_k", params={"user": 3, "k": 2}),
        ):
            assert r.status_code == 500 and r.json()["error"] == ModelStateInvalid.__name__, r.text
            assert b"null" not in r.content
        assert client.get("/models/songs/predict", params={"user": 4, "item": 101}).status_code == 200


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.text(max_size=5),
        st.none(),
        st.booleans(),
    ),
    low=st.floats(-1e9, 1e9),
    width=st.floats(1e-6, 1e9),
)
def test_score_in_range_accepts_exactly_the_finite_numbers_inside(value, low: float, width: float) -> None:
    high = low + width
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        as_float = float(value) if is_number else math.nan
    except OverflowError:
        as_float = math.inf
    expected = is_number and math.isfinite(as_float) and low <= as_float <= high
    try:
        got = score_in_range(value, "observations[0].score", "observe", low, high)
    except InvalidInput as exc:
        assert not expected and exc.field == "observations[0].score" and exc.status == 400
        assert len(exc.message) < 500
    else:
        assert expected and got == as_float


def test_a_retrain_over_a_log_holding_1e308_trains_on_the_rest(tmp_path: Path) -> None:
    layout = HomeLayout(tmp_path)
    meta = train_version(layout, "stars", _ratings(np.random.default_rng(2)), SMALL)
    log = ObservationLog(layout.log_dir("stars"))
    lsn = log.append_and_wait(
        [
            ("0", "1", 4.0, meta["version"], None),
            ("0", "2", 1e308, meta["version"], None),
            ("1", "3", -1e308, meta["version"], None),
        ]
    )
    log.close()
    child = retrain_version(layout, "stars", "v2", parent=meta["version"], upto_lsn=lsn, reason="test")
    assert child["score_range"] == meta["score_range"]  # the data's range: the bad rows were left out
    assert math.isfinite(child["train_rmse"]) and child["rows_trained"] == len(_ratings(np.random.default_rng(2))) + 1


def test_train_cli_score_range_overrides_the_data_range(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    from veloxserve.training.ratings import write_ratings_csv

    write_ratings_csv(_ratings(np.random.default_rng(3)), tmp_path / "r.csv")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "veloxserve.cli",
            "train",
            "--home",
            str(tmp_path),
            "--model",
            "stars",
            "--ratings",
            str(tmp_path / "r.csv"),
            "--rank",
            "2",
            "--iterations",
            "2",
            "--score-range",
            "-3",
            "9",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads(result.stdout[result.stdout.index("{") :])
    assert meta["score_range"] == [-3.0, 9.0] and meta["score_range_source"] == "override"
