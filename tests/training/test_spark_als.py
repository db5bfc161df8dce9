"""Spark MLlib ALS trainer, run for real in Spark local mode (Java 17, pyspark from `make test`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from veloxserve import Velox
from veloxserve.config import HomeLayout
from veloxserve.storage.log_export import export_parquet
from veloxserve.storage.versions import VersionStore
from veloxserve.training.als import ALSConfig
from veloxserve.training.catify import generate_catify
from veloxserve.training.spark_als import train_version_spark

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def catify():
    return generate_catify(300, 200, n_ratings=15_000, seed=1)


def test_spark_trains_a_version_the_server_serves(tmp_path: Path, catify) -> None:
    layout = HomeLayout(tmp_path)
    meta = train_version_spark(layout, "songs", catify.ratings, ALSConfig(rank=4, iterations=8), master="local[2]")
    assert meta["engine"] == "spark" and meta["version"] == "v1" and meta["spark_version"]
    # θ learned something beyond the item baseline: held-out error below the baseline-only model's.
    arrays = VersionStore(layout.versions_dir("songs")).read_arrays("v1")
    assert meta["heldout_rmse"] < _baseline_rmse(catify)
    assert np.isfinite(meta["spark_native_heldout_rmse"])
    # The served user statistics are the exact ridge solve against Spark's θ (independent check).
    F = np.column_stack(
        [arrays["item_factors"], meta["global_mean"] + arrays["item_bias"], np.ones(len(arrays["item_ids"]))]
    )
    base = catify.ratings
    lam, w0 = arrays["prior_precision"], arrays["prior_mean"]
    for index in (0, 17, len(arrays["user_ids"]) - 1):
        user = arrays["user_ids"][index]
        rows = arrays["seen_items"][arrays["seen_indptr"][index] : arrays["seen_indptr"][index + 1]]
        mask = base.users == user
        assert len(rows) <= mask.sum()  # the held-out part is not in the served statistics
        A = np.diag(lam) + F[rows].T @ F[rows]
        score_of = dict(zip(base.items[mask].tolist(), base.scores[mask].tolist()))
        y = np.array([score_of[str(arrays["item_ids"][row])] for row in rows])
        np.testing.assert_allclose(arrays["user_gram"][index], A, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(arrays["user_rhs"][index], lam * w0 + F[rows].T @ y, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(
            arrays["user_weights"][index], np.linalg.solve(A, lam * w0 + F[rows].T @ y), atol=1e-8
        )
    with Velox(tmp_path) as velox:  # the ordinary server loads and learns on it
        before = velox.predict("songs", "new-user", arrays["item_ids"][0])
        velox.observe("songs", "new-user", arrays["item_ids"][0], 5.0)
        assert velox.predict("songs", "new-user", arrays["item_ids"][0]) > before


def test_cli_trains_with_spark_from_the_parquet_log(tmp_path: Path, catify) -> None:
    home = tmp_path / "home"
    with Velox(home) as velox:  # a model whose observations are in its log
        velox.train("songs", catify.ratings, ALSConfig(rank=3, iterations=3))
        velox.observe_many(
            "songs",
            list(zip(catify.ratings.users[:3000], catify.ratings.items[:3000], catify.ratings.scores[:3000].tolist())),
        )
    export_parquet(HomeLayout(home).log_dir("songs"), tmp_path / "export")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "veloxserve.cli",
            "train",
            "--home",
            str(home),
            "--model",
            "from-log",
            "--ratings",
            str(tmp_path / "export"),
            "--engine",
            "spark",
            "--master",
            "local[2]",
            "--rank",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    meta = VersionStore(HomeLayout(home).versions_dir("from-log")).read_meta("v1")
    assert meta["engine"] == "spark" and meta["spark_master"] == "local[2]"
    assert meta["rows_trained"] + meta["heldout_rows"] == 3000
    with Velox(home) as velox:
        assert velox.server("from-log").version_id == "v1"


def _baseline_rmse(catify) -> float:
    """Held-out RMSE of μ + b_x alone (fit on everything: a generous baseline)."""
    r = catify.ratings
    mu = r.scores.mean()
    items, inverse = np.unique(r.items, return_inverse=True)
    bias = np.bincount(inverse, r.scores - mu) / (np.bincount(inverse) + 5.0)
    return float(np.sqrt(np.mean((r.scores - mu - bias[inverse]) ** 2)))
