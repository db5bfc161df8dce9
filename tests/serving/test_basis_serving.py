"""A black-box basis version served like any other: by id and by text through the feature cache,
online ridge per user, top-k, exploration, forgetting, retraining from the log, and a failed
oracle fit that leaves the active version serving."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import cloudpickle
import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from sklearn.linear_model import Ridge
from starlette.testclient import TestClient

from veloxserve import Velox
from veloxserve.api import create_app
from veloxserve.errors import InvalidInput
from veloxserve.models.basis import KIND, BasisInputs
from veloxserve.serving.retraining import RetrainPolicy
from veloxserve.training.als import ALSConfig
from veloxserve.training.basis_trainer import BasisRecipe, train_basis_version
from veloxserve.training.corpus import generate_corpus, read_corpus, topic_ratings
from veloxserve.training.engines import BLACK_BOX
from veloxserve.training.oracle_mtl import OracleConfig

POISON = "VELOXSERVE_TEST_POISON_BASIS"


class PoisonableRidge(Ridge):
    """Ridge whose predictions turn NaN when POISON is set: a feature model that breaks in a
    retrain (which runs in its own process and inherits the environment)."""

    def predict(self, X):  # type: ignore[no-untyped-def]
        out = super().predict(X)
        return out * np.nan if os.environ.get(POISON) else out


# Pickled by value: the retrain worker (another process) need not import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def documents(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("docs")
    ids, topics, texts = read_corpus(generate_corpus(root / "corpus", topics=4, docs_per_topic=15, seed=2))
    pacsv.write_csv(pa.table({"item": ids, "text": texts}), root / "docs.csv")
    ratings, _ = topic_ratings(ids, topics, 40, 12, seed=3)
    return root / "docs.csv", ids, texts, ratings


RECIPE = BasisRecipe("oracle-mtl", BasisInputs(text="text", n_buckets=1024), solver=PoisonableRidge(alpha=1.0))


@pytest.fixture
def velox(tmp_path: Path, documents):
    table, _, _, ratings = documents
    with Velox(tmp_path / "home") as v:
        meta = train_basis_version(
            v.layout, "docs", ratings, items=table, recipe=RECIPE, config=OracleConfig(k=3, iterations=3)
        )
        v.activate("docs", meta["version"])
        yield v


def arrays(v: Velox) -> dict[str, np.ndarray]:
    return v.catalog("docs").versions.read_arrays(v.server("docs").version_id)


def test_scores_by_id_and_by_text_are_weights_dot_basis(velox, documents) -> None:
    _, ids, texts, _ = documents
    server = velox.server("docs")
    basis = server.version.content
    assert basis is not None and server.version.meta["kind"] == "black_box"
    F = arrays(velox)["item_features"]
    np.testing.assert_allclose(F, basis.transform(list(texts)), atol=1e-10)  # ids sorted like the corpus
    w = server.users.weights("u3")
    assert velox.predict("docs", "u3", ids[5]) == pytest.approx(F[5] @ w)
    by_text = velox.predict_text("docs", [("u3", texts[5]), ("u3", "an item nobody has seen")])
    assert by_text[0] == pytest.approx(F[5] @ w)
    assert by_text[1] == pytest.approx(basis.transform(["an item nobody has seen"])[0] @ w)


def test_text_features_are_computed_once_for_all_users(velox, documents) -> None:
    text = documents[2][1]
    velox.predict_text("docs", [(f"u{i}", text) for i in range(10)])
    stats = velox.feature_cache.stats()
    assert stats.misses == 1 and stats.hits == 9


def test_online_updates_equal_a_batch_ridge_solve(velox, documents) -> None:
    ids = documents[1]
    a = arrays(velox)
    F, row = a["item_features"], int(np.flatnonzero(a["user_ids"] == "u7")[0])
    velox.observe("docs", "u7", ids[1], 5.0)
    velox.observe("docs", "u7", ids[9], 1.5)
    A = a["user_gram"][row] + np.outer(F[1], F[1]) + np.outer(F[9], F[9])
    r = a["user_rhs"][row] + 5.0 * F[1] + 1.5 * F[9]
    np.testing.assert_allclose(velox.server("docs").users.weights("u7"), np.linalg.solve(A, r), atol=1e-9)
    # a new user: the prior plus their observations
    velox.observe("docs", "fresh", ids[2], 4.0)
    lam, w0 = a["prior_precision"], a["prior_mean"]
    expected = np.linalg.solve(np.diag(lam) + np.outer(F[2], F[2]), lam * w0 + 4.0 * F[2])
    np.testing.assert_allclose(velox.server("docs").users.weights("fresh"), expected, atol=1e-9)


def test_top_k_exploration_and_forgetting(velox, documents) -> None:
    ids = documents[1]
    F = arrays(velox)["item_features"]
    w = velox.server("docs").users.weights("u1")
    ranked = velox.top_k("docs", "u1", 5)
    assert [item for item, _ in ranked] == [ids[i] for i in np.argsort(-(F @ w), kind="stable")[:5]]
    rec = velox.recommend("docs", "u1", 4, policy="epsilon_greedy", epsilon=0.5)
    assert len(rec.items) == 4 and rec.propensities is not None
    velox.forget_user("u1", "docs")
    np.testing.assert_allclose(velox.server("docs").users.weights("u1"), arrays(velox)["prior_mean"])
    assert "u1" not in arrays(velox)["user_ids"]


def test_retrain_from_the_log_refits_the_basis(velox, documents) -> None:
    ids = documents[1]
    rng = np.random.default_rng(0)
    velox.observe_many("docs", [(f"u{i % 40}", ids[int(rng.integers(len(ids)))], 4.0) for i in range(60)])
    job = velox.retrain("docs", promote="always", wait=True)
    assert job.state == "promoted", job.detail
    version = velox.server("docs").version
    assert version.version == "v2" and version.meta["kind"] == "black_box" and version.content is not None
    assert version.meta["comparison"]["rows"] >= 1 and version.meta["comparison"]["parent_rmse"] is not None
    assert len(velox.predict_text("docs", [("u2", "words")])) == 1
    velox.activate("docs", "v1")  # a rollback reattaches v1's own basis
    assert velox.server("docs").version_id == "v1" and velox.server("docs").version.content is not None
    assert velox.predict_text("docs", [("u2", documents[2][0])])[0] == pytest.approx(
        velox.predict("docs", "u2", ids[0])
    )


def test_a_failed_oracle_fit_leaves_the_active_version_serving(velox, documents, monkeypatch) -> None:
    ids = documents[1]
    before = velox.predict("docs", "u4", ids[3])
    monkeypatch.setenv(POISON, "1")
    job = velox.retrain("docs", promote="always", wait=True)
    assert job.state == "failed" and "non-finite" in job.detail
    assert velox.server("docs").version_id == "v1"
    assert velox.catalog("docs").entry("v2")["status"] == "failed"
    monkeypatch.delenv(POISON)
    assert velox.predict("docs", "u4", ids[3]) == pytest.approx(before)
    velox.observe("docs", "u4", ids[3], 5.0)
    assert velox.predict("docs", "u4", ids[3]) != pytest.approx(before)


def test_an_item_table_without_the_declared_column_fails_before_training(tmp_path: Path, documents) -> None:
    _, ids, _, ratings = documents
    pacsv.write_csv(pa.table({"item": ids, "title": ["t"] * len(ids)}), tmp_path / "no_text.csv")
    with Velox(tmp_path / "home") as v:
        with pytest.raises(InvalidInput, match="'text'") as err:
            train_basis_version(v.layout, "docs", ratings, items=tmp_path / "no_text.csv", recipe=RECIPE)
        assert err.value.field == "text"
        assert v.catalog("docs").versions.versions() == []


def test_http_predict_by_text_and_id(velox, documents) -> None:
    _, ids, texts, _ = documents
    with TestClient(create_app(velox), raise_server_exceptions=False) as client:
        by_text = client.get("/models/docs/predict", params={"user": "u5", "text": texts[0]})
        by_id = client.get("/models/docs/predict", params={"user": "u5", "item": ids[0]})
        assert by_text.status_code == by_id.status_code == 200
        assert by_text.json()["score"] == pytest.approx(by_id.json()["score"])


def test_shared_redis_state_learns_a_basis_version_the_same_way(tmp_path: Path, documents, redis_url) -> None:
    from veloxserve.config import HomeLayout
    from veloxserve.storage.redis_store import RedisUserStore
    from veloxserve.storage.version_catalog import VersionCatalog

    table, ids, texts, ratings = documents
    layout = HomeLayout(tmp_path / "home")
    meta = train_basis_version(
        layout, "docs", ratings, items=table, recipe=RECIPE, config=OracleConfig(k=3, iterations=2)
    )
    VersionCatalog(layout.model_dir("docs")).activate(meta["version"])
    with Velox(tmp_path / "home", store=RedisUserStore(redis_url), instance="a") as v:
        a = v.catalog("docs").versions.read_arrays(meta["version"])
        F, row = a["item_features"], int(np.flatnonzero(a["user_ids"] == "u2")[0])
        v.observe_many("docs", [("u2", ids[4], 4.5), ("u2", ids[8], 2.0)])
        A = a["user_gram"][row] + np.outer(F[4], F[4]) + np.outer(F[8], F[8])
        r = a["user_rhs"][row] + 4.5 * F[4] + 2.0 * F[8]
        np.testing.assert_allclose(v.server("docs").users.weights("u2"), np.linalg.solve(A, r), atol=1e-9)
        assert v.predict_text("docs", [("u2", texts[4])])[0] == pytest.approx(v.predict("docs", "u2", ids[4]))


def test_a_late_basis_model_is_replaced_by_its_catalogue_mean_and_the_others_stay_exact(
    tmp_path: Path, documents, monkeypatch
) -> None:
    """Anytime features over a black-box basis: each f_i is its own straggler, so one slow model
    costs its column (E[f_i] over the catalogue), not the answer. The deadline is generous (the on-time
    models must make it on a loaded machine); the late one waits on an event, so it is late whatever it is."""
    import threading

    from veloxserve.config import ServingConfig

    table, _, texts, ratings = documents
    with Velox(tmp_path / "home", config=ServingConfig(feature_deadline_ms=2000.0)) as v:
        meta = train_basis_version(
            v.layout, "docs", ratings, items=table, recipe=RECIPE, config=OracleConfig(k=3, iterations=2)
        )
        v.activate("docs", meta["version"])
        server = v.server("docs")
        basis = server.version.content
        assert server.anytime is not None and len(basis.models) == 3
        exact = basis.transform([texts[0]])[0]
        release = threading.Event()
        slow = basis.models[1]
        fast_predict = slow.predict
        monkeypatch.setattr(slow, "predict", lambda X: (release.wait(30), fast_predict(X))[1])
        score = v.predict_text("docs", [("u3", texts[0])])[0]
        F = arrays(v)["item_features"]
        expected = exact.copy()
        expected[1] = F[:, 1].mean()  # the late model's expectation over the catalogue
        assert score == pytest.approx(float(expected @ server.users.weights("u3")))
        assert server.anytime.late.tolist() == [0, 1, 0] and v.feature_cache.stats().entries == 0
        release.set()


def test_a_spark_engine_is_refused_for_a_basis_model_naming_the_field_and_changes_nothing(velox) -> None:
    """Its oracle-mtl refit runs in the trainer process whatever the policy says: a Spark engine
    would be silently ignored (and the retrain's record would claim the Spark master)."""
    with pytest.raises(InvalidInput, match="'engine'.*must be local. Got 'spark'.*oracle-mtl.*no Spark") as caught:
        velox.set_policy("docs", {"every_observations": 5, "engine": "spark", "spark_master": "spark://h:7077"})
    assert caught.value.field == "engine"
    assert velox.policy("docs") == RetrainPolicy()
    assert BLACK_BOX == KIND  # the engines module's copy of the kind, kept without importing the basis


def test_a_spark_policy_set_while_the_model_was_als_refuses_a_retrain_of_its_basis_version(
    tmp_path: Path, documents
) -> None:
    """The policy was valid when set; once a basis version is served, a retrain is refused before a
    version is reserved: the catalogue, the active version and the policy stay as they were."""
    table, ids, _, ratings = documents
    with Velox(tmp_path / "home") as v:
        v.train("docs", ratings, ALSConfig(rank=2, iterations=2))
        v.set_policy("docs", {"engine": "spark"})
        meta = train_basis_version(
            v.layout, "docs", ratings, items=table, recipe=RECIPE, config=OracleConfig(k=3, iterations=3)
        )
        v.activate("docs", meta["version"])
        listed = v.catalog("docs").list()
        with pytest.raises(InvalidInput, match="'engine'.*black-box basis") as caught:
            v.retrain("docs", promote="always")
        assert caught.value.field == "engine"
        assert v.catalog("docs").list() == listed and v.retrainer.job("docs") is None
        assert v.server("docs").version_id == meta["version"] and v.policy("docs").engine == "spark"
        v.set_policy("docs", {"engine": "local"})
        assert v.retrain("docs", promote="never", wait=True).state == "ready"
