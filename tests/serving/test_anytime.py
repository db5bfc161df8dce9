"""AnytimeFeatures: a late basis is replaced by its running mean and flagged, the rest are exact;
late results still teach the mean; nothing substituted is ever cached. Slowness is an Event the
test holds (never a sleep raced against a bound), so every assertion is about shapes and values."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from starlette.testclient import TestClient

from veloxserve import Velox
from veloxserve.api import create_app
from veloxserve.config import ServingConfig
from veloxserve.errors import ModelStateInvalid
from veloxserve.serving.anytime import AnytimeFeatures
from veloxserve.serving.feature_cache import FeatureCache
from veloxserve.training.als import ALSConfig
from veloxserve.training.catify import catify_items, generate_catify

SHORT = 0.02  # the deadline; a blocked basis is late whatever the machine's speed


def double(xs):
    return np.asarray(xs, dtype=float)[:, None] * [2.0, 3.0]


def square(xs):
    return np.asarray(xs, dtype=float) ** 2


class Gate:
    """A basis (x ↦ x + 100) that blocks while the gate is closed, and tells when it finished."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.finished = threading.Semaphore(0)
        self.started = 0

    def __call__(self, xs):
        self.started += 1
        self.open.wait(30)
        try:
            return np.asarray(xs, dtype=float) + 100.0
        finally:
            self.finished.release()


def test_fast_bases_are_concatenated_exactly() -> None:
    anytime = AnytimeFeatures([double, square], deadline_s=5.0)
    rows = anytime.transform([1.0, 2.0])
    np.testing.assert_array_equal(rows.features, np.column_stack([double([1, 2]), square([1, 2])]))
    assert rows.exact and not rows.approximated.any()
    assert rows.columns == (slice(0, 2), slice(2, 3))
    anytime.close()


def test_a_late_basis_is_replaced_by_its_running_mean_and_flagged() -> None:
    gate = Gate()
    gate.open.set()
    anytime = AnytimeFeatures([double, gate, square], deadline_s=SHORT, names=["a", "slow", "c"])
    seen = [1.0, 2.0, 6.0]
    anytime.transform(seen[:2], deadline_s=30.0)
    anytime.transform(seen[2:], deadline_s=30.0)
    gate.open.clear()
    rows = anytime.transform([4.0, 5.0])
    assert rows.features.shape == (2, 4)
    np.testing.assert_array_equal(rows.approximated, [False, True, False])
    np.testing.assert_array_equal(rows.features[:, rows.columns[0]], double([4, 5]))
    np.testing.assert_array_equal(rows.features[:, rows.columns[2]], square([4, 5])[:, None])
    mean = np.mean(seen) + 100.0  # E[f_slow(x)] over every row it answered so far, by hand
    np.testing.assert_allclose(rows.features[:, rows.columns[1]], [[mean], [mean]])
    assert anytime.late.tolist() == [0, 1, 0] and anytime.calls == 3
    gate.open.set()
    for _ in range(3):
        gate.finished.acquire(timeout=30)
    late_mean = anytime.means()[1]
    assert late_mean is not None
    np.testing.assert_allclose(late_mean, [np.mean([*seen, 4.0, 5.0]) + 100.0])  # the late rows counted
    anytime.close()


def test_after_close_every_basis_is_computed_in_the_callers_thread() -> None:
    """A retired version's features (a request that reached it as it was replaced) stay exact."""
    anytime = AnytimeFeatures([double, square], deadline_s=SHORT)
    anytime.close()
    rows = anytime.transform([2.0])
    np.testing.assert_array_equal(rows.features, [[4.0, 6.0, 4.0]])
    assert rows.exact and rows.columns == (slice(0, 2), slice(2, 3))


def test_a_basis_with_no_expectation_yet_is_waited_for() -> None:
    gate = Gate()
    threading.Timer(0.05, gate.open.set).start()
    anytime = AnytimeFeatures([gate], deadline_s=SHORT)
    rows = anytime.transform([1.0])
    np.testing.assert_array_equal(rows.features, [[101.0]])
    assert rows.exact


def test_initial_means_let_the_first_call_substitute() -> None:
    gate = Gate()
    anytime = AnytimeFeatures([gate, square], deadline_s=SHORT, initial_means=[np.array([7.0]), None])
    rows = anytime.transform([3.0])
    np.testing.assert_array_equal(rows.features, [[7.0, 9.0]])
    np.testing.assert_array_equal(rows.approximated, [True, False])
    gate.open.set()
    anytime.close()


def test_a_hung_basis_is_not_started_again_past_max_in_flight() -> None:
    gate = Gate()
    anytime = AnytimeFeatures([gate], deadline_s=SHORT, initial_means=[np.array([0.0])], max_in_flight=1)
    for _ in range(5):
        assert anytime.transform([1.0]).approximated.all()
    assert gate.started == 1
    gate.open.set()
    anytime.close()


def test_a_failing_basis_is_substituted_when_it_has_a_mean_and_raises_otherwise() -> None:
    def broken(xs):
        raise RuntimeError("model crashed")

    assert AnytimeFeatures([broken], deadline_s=5.0, initial_means=[[1.5]]).transform([0.0]).features.tolist() == [
        [1.5]
    ]
    with pytest.raises(RuntimeError, match="model crashed"):
        AnytimeFeatures([broken], deadline_s=5.0).transform([0.0])


@pytest.mark.parametrize(
    ("basis", "message"),
    [
        (lambda xs: np.full(len(xs), np.nan), "'bad' answered non-finite"),
        (lambda xs: np.zeros((len(xs) + 1, 2)), r"'bad' must answer one row per input"),
    ],
)
def test_bad_outputs_name_the_basis(basis, message: str) -> None:
    with pytest.raises(ModelStateInvalid, match=message):
        AnytimeFeatures([basis], deadline_s=5.0, names=["bad"]).transform([1.0, 2.0])


def test_a_basis_that_changes_width_is_refused() -> None:
    widths = iter([1, 2])
    anytime = AnytimeFeatures([lambda xs: np.zeros((len(xs), next(widths)))], deadline_s=5.0, names=["shifty"])
    anytime.transform([1.0])
    with pytest.raises(ModelStateInvalid, match="'shifty' changed its output width from 1 to 2"):
        anytime.transform([1.0])


def test_substituted_rows_are_served_but_never_cached() -> None:
    gate = Gate()
    anytime = AnytimeFeatures([gate], deadline_s=SHORT, initial_means=[[0.0]])
    cache = FeatureCache(1 << 20)
    first = cache.features(("m", "v1"), ["a"], lambda xs: anytime.transform([1.0] * len(xs)))
    assert first.tolist() == [[0.0]] and cache.stats().entries == 0
    gate.open.set()
    second = cache.features(("m", "v1"), ["a"], lambda xs: anytime.transform([1.0] * len(xs), deadline_s=30.0))
    assert second.tolist() == [[101.0]] and cache.stats().entries == 1 and cache.stats().misses == 2


def test_content_features_under_a_deadline_fall_back_to_the_mean_item(tmp_path: Path, monkeypatch) -> None:
    data = generate_catify(n_users=60, n_items=80, rank=3, n_ratings=2000, seed=2)
    pacsv.write_csv(pa.table(catify_items(data, seed=2)), tmp_path / "items.csv")
    with Velox(tmp_path, config=ServingConfig(feature_deadline_ms=20.0)) as v:
        v.train("docs", data.ratings, ALSConfig(rank=3, iterations=2), items=tmp_path / "items.csv")
        server = v.server("docs")
        assert server.anytime is not None
        gate = Gate()
        monkeypatch.setattr(server.version.content, "transform", lambda texts: gate(np.zeros((len(texts), 5))))
        score = v.predict_text("docs", [(1, "a text the model is slow on")])[0]
        typical_item = server.version.features.matrix.mean(axis=0)
        assert score == pytest.approx(float(typical_item @ server.users.weights("1")))
        assert server.anytime.late.tolist() == [1] and v.feature_cache.stats().entries == 0
        with TestClient(create_app(v), raise_server_exceptions=False) as client:
            metrics = client.get("/metrics").text
        assert 'veloxserve_feature_substitutions_total{model="docs",version="v1"} 1.0' in metrics
        gate.open.set()


def test_bases_can_share_one_sparse_design() -> None:
    """The bases read one design matrix (e.g. hashed n-grams, computed once): rows are its rows."""
    import scipy.sparse as sp

    design = sp.csr_matrix(np.array([[1.0, 0.0, 2.0], [0.0, 3.0, 0.0]]))
    weights = [np.array([[1.0], [1.0], [1.0]]), np.array([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]])]
    anytime = AnytimeFeatures([lambda D, W=W: D @ W for W in weights], deadline_s=5.0)
    rows = anytime.transform(design)
    np.testing.assert_array_equal(rows.features, np.hstack([design @ W for W in weights]))
    anytime.close()
