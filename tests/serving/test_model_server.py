"""ModelServer: predictions, top-k and online learning against independent computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import synthetic_version_arrays
from veloxserve.config import ServingConfig
from veloxserve.errors import InvalidInput, ItemNotFound
from veloxserve.models.version import ModelVersion
from veloxserve.serving.model_server import ModelServer
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.storage.user_store import MemoryUserStore


@pytest.fixture
def parts(tmp_path: Path):
    arrays, meta = synthetic_version_arrays()
    version = ModelVersion.from_arrays(arrays, meta)
    store = MemoryUserStore()
    obs_log = ObservationLog(tmp_path / "log")
    yield version, store, obs_log, arrays
    obs_log.close()


@pytest.fixture
def server(parts) -> ModelServer:
    version, store, obs_log, _ = parts
    return ModelServer(version, store, obs_log, ServingConfig(max_batch=100))


def observe(server: ModelServer, obs_log: ObservationLog, rows: list) -> int:
    """Observe and wait until the batch is durable: only then is it learned (and acknowledged)."""
    return obs_log.wait_durable(server.observe_many(rows))


def features(arrays) -> np.ndarray:
    return np.column_stack([arrays["item_factors"], 3.0 + arrays["item_bias"], np.ones(len(arrays["item_bias"]))])


def test_predict_is_the_dot_product_of_trained_weights_and_item_features(server, parts) -> None:
    arrays = parts[3]
    F = features(arrays)
    assert server.predict(3, 105) == pytest.approx(arrays["user_weights"][3] @ F[5])
    assert server.predict("3", "105") == pytest.approx(arrays["user_weights"][3] @ F[5])


def test_new_user_is_scored_with_the_prior_mean(server, parts) -> None:
    arrays = parts[3]
    assert server.predict("stranger", 101) == pytest.approx(arrays["prior_mean"] @ features(arrays)[1])


def test_an_observation_is_visible_to_the_next_prediction_and_equals_a_batch_ridge_solve(server, parts) -> None:
    arrays = parts[3]
    F = features(arrays)
    before = server.predict(2, 110)
    observe(server, parts[2], [(2, 110, 5.0), (2, 111, 1.0)])
    A = arrays["user_gram"][2] + np.outer(F[10], F[10]) + np.outer(F[11], F[11])
    r = arrays["user_rhs"][2] + 5.0 * F[10] + 1.0 * F[11]
    expected = np.linalg.solve(A, r)
    np.testing.assert_allclose(server.users.weights("2"), expected, atol=1e-9)
    assert server.predict(2, 110) == pytest.approx(expected @ F[10])
    assert server.predict(2, 110) != pytest.approx(before)


def test_top_k_matches_a_full_sort(server, parts) -> None:
    F = features(parts[3])
    scores = F @ parts[3]["user_weights"][4]
    expected = [100 + i for i in np.argsort(-scores)[:7]]
    ranked = server.top_k(4, 7)
    assert [item for item, _ in ranked] == expected
    np.testing.assert_allclose([s for _, s in ranked], np.sort(scores)[::-1][:7])


def test_top_k_excludes_seen_items_and_respects_candidates(server, parts) -> None:
    arrays = parts[3]
    seen = {100 + i for i in arrays["seen_items"][arrays["seen_indptr"][4] : arrays["seen_indptr"][5]]}
    ranked = [item for item, _ in server.top_k(4, 50, exclude_seen=True)]
    assert len(ranked) == 50 - len(seen) and not seen & set(ranked)
    ranked = [item for item, _ in server.top_k(4, 3, candidates=[101, "102", 103, 104, 101])]
    assert set(ranked) <= {101, 102, 103, 104} and len(ranked) == 3


def test_observed_item_becomes_seen(server, parts) -> None:
    observe(server, parts[2], [("fresh", 120, 4.0)])
    assert 120 not in [item for item, _ in server.top_k("fresh", 50, exclude_seen=True)]


@pytest.mark.parametrize("k", [0, -1, 51, 2.5, "3", None, True])
def test_top_k_rejects_k_outside_the_catalogue(server, k) -> None:
    with pytest.raises(InvalidInput, match="'k'"):
        server.top_k(1, k)


def test_unknown_item_is_not_found(server) -> None:
    with pytest.raises(ItemNotFound, match="99999"):
        server.predict(1, 99999)


@pytest.mark.parametrize(
    "bad_row, field",
    [
        ((1, 101, float("nan")), "observations[1].score"),
        ((1, 101, float("inf")), "observations[1].score"),
        ((1, 101, "5"), "observations[1].score"),
        ((None, 101, 1.0), "observations[1].user"),
        ((1, 424242, 1.0), "observations[1].item"),
    ],
)
def test_a_batch_with_one_bad_row_changes_no_state(server, parts, bad_row, field) -> None:
    obs_log = parts[2]
    lsn_before, weights_before = obs_log.last_lsn, server.users.W[: len(server.users)].copy()
    with pytest.raises((InvalidInput, ItemNotFound)) as info:
        server.observe_many([(1, 101, 3.0), bad_row])
    assert info.value.field == field
    assert obs_log.last_lsn == lsn_before
    np.testing.assert_array_equal(server.users.W[: len(server.users)], weights_before)


def test_oversized_batches_are_rejected(server) -> None:
    with pytest.raises(InvalidInput, match="at most 100"):
        server.observe_many([(1, 101, 1.0)] * 101)
    with pytest.raises(InvalidInput, match="at most 100"):
        server.predict_many([(1, 101)] * 101)


def test_batch_predict_equals_single_predictions(server) -> None:
    queries = [(1, 101), ("nobody", 102), (7, 149)]
    np.testing.assert_allclose(server.predict_many(queries), [server.predict(u, i) for u, i in queries])


def test_restart_replays_the_log_after_the_checkpoint(parts, tmp_path) -> None:
    version, store, obs_log, _ = parts
    first = ModelServer(version, store, obs_log, ServingConfig())
    observe(first, obs_log, [(1, 101, 5.0), ("new", 102, 2.0)])
    first.checkpoint()
    observe(first, obs_log, [(1, 103, 1.0), ("new", 104, 4.0)])  # after the checkpoint: only in the log
    expected = {u: first.users.weights(u).copy() for u in ("1", "new")}
    obs_log.close()
    reopened = ObservationLog(tmp_path / "log")
    try:
        second = ModelServer(version, store, reopened, ServingConfig())
        assert second.replayed == 2
        for user, w in expected.items():
            np.testing.assert_allclose(second.users.weights(user), w, atol=1e-12)
    finally:
        reopened.close()


def test_logistic_model_scores_are_probabilities_and_labels_are_checked(tmp_path) -> None:
    arrays, meta = synthetic_version_arrays(link="logistic")
    with ObservationLog(tmp_path / "log") as obs_log:
        server = ModelServer(ModelVersion.from_arrays(arrays, meta), MemoryUserStore(), obs_log, ServingConfig())
        assert 0.0 < server.predict(1, 101) < 1.0
        before = server.predict(1, 101)
        for _ in range(20):
            observe(server, obs_log, [(1, 101, 1.0)])
        assert server.predict(1, 101) > before
        with pytest.raises(InvalidInput, match=r"\[0, 1\]"):
            server.observe_many([(1, 101, 3.0)])


def test_durable_waiter_releases_on_commit_and_times_out_on_a_stalled_log(tmp_path, monkeypatch) -> None:
    import asyncio
    import threading

    from veloxserve.errors import StoreUnavailable
    from veloxserve.serving.durability import DurableWaiter
    from veloxserve.storage import observation_log as module

    gate = threading.Event()
    real = module.os.fdatasync
    monkeypatch.setattr(module.os, "fdatasync", lambda fd: (gate.wait(5), real(fd)))

    async def scenario(obs_log: ObservationLog) -> None:
        waiter = DurableWaiter(obs_log, asyncio.get_running_loop())
        lsn = obs_log.append([("u", "i", 1.0, "v1")])
        with pytest.raises(StoreUnavailable, match="durable within 0.05 s"):
            await waiter.wait(lsn, 0.05)
        second = obs_log.append([("u", "i", 2.0, "v1")])
        gate.set()
        await waiter.wait(second, 5)
        assert obs_log.durable_lsn >= second

    with ObservationLog(tmp_path / "log") as obs_log:
        asyncio.run(scenario(obs_log))
