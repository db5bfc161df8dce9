"""Items known only by their text: trained from an item table, scored through the shared cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from starlette.testclient import TestClient

from tests.models.test_content import by_hand
from veloxserve import Velox
from veloxserve.api import create_app
from veloxserve.config import ApproximateSettings, ServingConfig
from veloxserve.errors import InvalidInput
from veloxserve.training.als import ALSConfig
from veloxserve.training.catify import catify_items, generate_catify


@pytest.fixture(scope="module")
def catify():
    data = generate_catify(n_users=150, n_items=200, rank=4, n_ratings=6000, seed=5)
    return data, catify_items(data, seed=5)


@pytest.fixture
def velox(tmp_path: Path, catify):
    data, items = catify
    pacsv.write_csv(pa.table(items), tmp_path / "songs.csv")
    with Velox(tmp_path) as v:
        v.train("songs", data.ratings, ALSConfig(rank=4, iterations=4), items=tmp_path / "songs.csv")
        yield v


def test_text_scores_are_user_weights_dot_hand_computed_features(velox, catify) -> None:
    _, items = catify
    version = velox.server("songs").version
    arrays = velox.catalog("songs").versions.read_arrays(version.version)
    text = items["text"][7]
    scores = velox.predict_text("songs", [(3, text), ("stranger", text)])
    f = by_hand(text, arrays["content_basis"], version.meta["global_mean"], version.meta["content"]["ngram_max"])
    expected = [f @ velox.server("songs").users.weights(u) for u in ("3", "stranger")]
    np.testing.assert_allclose(scores, expected, atol=1e-9)
    assert version.meta["content"]["heldout_r2"] is not None


def test_one_text_is_computed_once_for_every_user(velox, catify) -> None:
    text = catify[1]["text"][11]
    velox.predict_text("songs", [(1, text)])
    velox.predict_text("songs", [(u, text) for u in range(2, 40)])
    stats = velox.feature_cache.stats()
    assert stats.misses == 1 and stats.hits == 38


def test_learning_does_not_change_cached_features_only_weights(velox, catify) -> None:
    text = catify[1]["text"][3]
    before = velox.predict_text("songs", [(9, text)])[0]
    velox.observe("songs", 9, 3, 5.0)
    after = velox.predict_text("songs", [(9, text)])[0]
    assert after != before and velox.feature_cache.stats().misses == 1


def test_a_retrain_keeps_content_features_under_new_cache_keys(velox, catify) -> None:
    text = catify[1]["text"][3]
    velox.predict_text("songs", [(1, text)])
    velox.retrain("songs", promote="always", wait=True)
    assert velox.server("songs").version_id == "v2" and velox.server("songs").version.content is not None
    velox.predict_text("songs", [(1, text)])
    assert velox.feature_cache.stats().misses == 2 and velox.feature_cache.stats().entries == 1


def test_a_model_without_texts_says_how_to_get_content_features(tmp_path: Path, catify) -> None:
    with Velox(tmp_path) as v:
        v.train("plain", catify[0].ratings, ALSConfig(rank=4, iterations=2))
        with pytest.raises(InvalidInput, match="--items") as err:
            v.predict_text("plain", [(1, "some words")])
        assert err.value.field == "text"


@pytest.mark.parametrize(
    "text, field",
    [("", "queries[0].text"), ("   ", "queries[0].text"), (42, "queries[0].text"), ("x" * 100_001, "queries[0].text")],
)
def test_bad_texts_are_rejected_naming_the_field(velox, text, field) -> None:
    with pytest.raises(InvalidInput) as err:
        velox.predict_text("songs", [(1, text)])
    assert err.value.field == field and velox.feature_cache.stats().misses == 0


def test_http_predict_by_text_single_batch_and_mixed(velox, catify) -> None:
    text = catify[1]["text"][2]
    with TestClient(create_app(velox), raise_server_exceptions=False) as client:
        one = client.get("/models/songs/predict", params={"user": 4, "text": text})
        assert one.status_code == 200 and one.json()["text"] == text
        batch = client.post(
            "/models/songs/predict",
            json={"queries": [{"user": 4, "text": text}, {"user": 4, "item": 2}, {"user": 5, "text": text}]},
        )
        assert batch.status_code == 200
        scores = batch.json()["scores"]
        assert scores[0] == pytest.approx(one.json()["score"])
        assert scores[1] == pytest.approx(velox.predict("songs", 4, 2))
        assert scores[2] == pytest.approx(velox.predict_text("songs", [(5, text)])[0])
        bad = client.post("/models/songs/predict", json={"queries": [{"user": 4, "text": ""}]})
        assert bad.status_code == 400 and bad.json()["field"] == "queries[0].text"
        metrics = client.get("/models/songs/metrics").json()["feature_cache"]
        assert metrics["hits"] >= 2 and 0 < metrics["hit_rate"] < 1
        assert "veloxserve_feature_cache_hit_rate" in client.get("/metrics").text


def _one_word_changed(text: str) -> str:
    words = text.split()
    words[len(words) // 2] = "zebra"
    return " ".join(words)


def test_approximate_features_serve_a_near_duplicate_text_the_originals_features(tmp_path: Path, catify) -> None:
    """Feature coarsening on: a text one word apart from a cached one shares its class (the LSH
    bucket of its word signature) and is scored with the original's f; a far text is computed."""
    data, items = catify
    pacsv.write_csv(pa.table(items), tmp_path / "songs.csv")
    config = ServingConfig(approximate_features=ApproximateSettings(tables=2, bits=10, seed=1))
    with Velox(tmp_path, config=config) as v:
        v.train("songs", data.ratings, ALSConfig(rank=4, iterations=2), items=tmp_path / "songs.csv")
        text = max(items["text"], key=lambda t: len(t.split()))
        near, far = _one_word_changed(text), "an entirely unrelated sentence about nothing"
        original = v.predict_text("songs", [(3, text)])
        scores = v.predict_text("songs", [(3, near), (3, far)])
        assert scores[0] == original[0]  # f(near) = f(text), the class representative's
        exact = v.server("songs").version.content.transform([near, far])
        assert scores[1] == pytest.approx(float(exact[1] @ v.server("songs").users.weights("3")))
        stats = v.feature_cache.stats()
        assert (stats.misses, stats.approximate_hits) == (2, 1)
        with TestClient(create_app(v), raise_server_exceptions=False) as client:
            assert client.get("/models/songs/metrics").json()["feature_cache"]["approximate_hits"] == 1
            metrics = client.get("/metrics").text
            assert 'veloxserve_feature_cache_lookups_total{outcome="approximate_hit"} 1.0' in metrics


def test_without_approximate_features_a_near_duplicate_is_computed_exactly(velox, catify) -> None:
    text = max(catify[1]["text"], key=lambda t: len(t.split()))
    near = _one_word_changed(text)
    scores = velox.predict_text("songs", [(3, text), (3, near)])
    f = velox.server("songs").version.content.transform([near])[0]
    assert scores[1] == pytest.approx(float(f @ velox.server("songs").users.weights("3")))
    assert velox.feature_cache.stats().approximate_hits == 0 and velox.feature_cache.stats().misses == 2
