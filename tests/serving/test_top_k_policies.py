"""Top-k beyond greedy: the MIPS index, exploration policies and their propensities, filters."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import synthetic_version_arrays
from veloxserve import Velox
from veloxserve.config import HomeLayout, ServingConfig
from veloxserve.errors import InvalidInput
from veloxserve.models.version import ModelVersion
from veloxserve.serving.exploration import EpsilonGreedy, ExplorationPolicy, LinUCB, Thompson, epsilon_greedy_slate
from veloxserve.serving.model_server import ModelServer
from veloxserve.storage.decision_log import read_decisions
from veloxserve.storage.observation_log import ObservationLog, read_log
from veloxserve.storage.user_store import MemoryUserStore
from veloxserve.storage.versions import VersionStore


def _server(tmp_path: Path, n_items: int, index_min_items: int) -> tuple[ModelServer, np.ndarray, ObservationLog]:
    arrays, meta = synthetic_version_arrays(n_users=20, n_items=n_items, rank=6)
    version = ModelVersion.from_arrays(arrays, meta)
    obs_log = ObservationLog(tmp_path / "log")
    server = ModelServer(version, MemoryUserStore(), obs_log, ServingConfig(index_min_items=index_min_items))
    return server, version.features.matrix, obs_log


def _wait_for_index(server: ModelServer) -> None:
    deadline = time.monotonic() + 60
    while server.index is None:
        assert time.monotonic() < deadline, "index never built"
        time.sleep(0.01)


def test_index_top_k_matches_exact_search_and_scores_are_exact(tmp_path: Path) -> None:
    server, F, obs_log = _server(tmp_path, n_items=5000, index_min_items=1000)
    try:
        exact_answers = {u: server.top_k(str(u), 50) for u in range(20)} if server.index is None else None
        _wait_for_index(server)
        recalls = []
        for user in range(20):
            w = server.users.weights(str(user))
            truth = set(np.argsort(-(F @ w))[:50].tolist())
            got = server.top_k(str(user), 50)
            rows = [server.version.catalog.lookup(str(item)) for item, _ in got]
            recalls.append(len(truth & set(rows)) / 50)
            np.testing.assert_allclose([s for _, s in got], F[rows] @ w)  # re-scored exactly
            assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
        assert np.mean(recalls) >= 0.95
        if exact_answers is not None:  # answers served before the index existed were exact
            w = server.users.weights("0")
            assert {server.version.catalog.lookup(str(i)) for i, _ in exact_answers[0]} == set(
                np.argsort(-(F @ w))[:50].tolist()
            )
        # exclude_seen and filters still hold on the index path
        user = "3"
        seen = set(server.users.seen_rows(user).tolist())
        got = server.top_k(user, 100, exclude_seen=True)
        assert not seen & {server.version.catalog.lookup(str(i)) for i, _ in got} and len(got) == 100
    finally:
        obs_log.close()


def test_greedy_linucb_and_thompson_against_independent_computations(tmp_path: Path) -> None:
    server, F, obs_log = _server(tmp_path, n_items=300, index_min_items=10**9)
    try:
        user = "4"
        w, P = server.users.weights(user).copy(), server.users.covariance(user).copy()
        ucb = F @ w + 2.0 * np.sqrt(np.einsum("ij,jk,ik->i", F, P, F))
        rec = server.recommend(user, 10, policy=LinUCB(alpha=2.0))
        assert [server.version.catalog.lookup(str(i)) for i in rec.items] == np.argsort(-ucb)[:10].tolist()
        assert rec.propensities == [1.0] * 10
        np.testing.assert_allclose(rec.scores, F[np.argsort(-ucb)[:10]] @ w)  # scores stay the model's

        rng_a, rng_b = np.random.default_rng(7), np.random.default_rng(7)
        rec = server.recommend(user, 10, policy=Thompson(alpha=0.5), rng=rng_a)
        draw = w + 0.5 * np.linalg.cholesky(0.5 * (P + P.T) + 1e-12 * np.eye(len(w))) @ rng_b.standard_normal(len(w))
        assert [server.version.catalog.lookup(str(i)) for i in rec.items] == np.argsort(-(F @ draw))[:10].tolist()
        assert rec.propensities is None

        greedy = server.recommend(user, 10, policy=EpsilonGreedy(epsilon=0.0))
        assert greedy.items == server.recommend(user, 10).items and greedy.propensities == [1.0] * 10
    finally:
        obs_log.close()


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 40), k_frac=st.floats(0.1, 1.0), epsilon=st.floats(0.0, 1.0), seed=st.integers(0, 10**6))
def test_epsilon_greedy_slates_are_distinct_and_propensities_are_the_policy_probabilities(
    n, k_frac, epsilon, seed
) -> None:
    rng = np.random.default_rng(seed)
    k = max(1, int(k_frac * n))
    ranked = rng.permutation(n)
    rows, propensities = epsilon_greedy_slate(ranked[: 2 * k], k, epsilon, n, lambda m: rng.integers(0, n, m), rng)
    assert len(set(rows.tolist())) == k
    taken: list[int] = []
    for slot, row in enumerate(rows.tolist()):
        best = next(int(r) for r in ranked if int(r) not in taken)
        expected = (1 - epsilon) * (row == best) + epsilon / (n - slot)
        assert propensities[slot] == pytest.approx(expected)
        taken.append(row)


def test_epsilon_greedy_first_slot_frequencies_match_the_logged_propensity() -> None:
    n, epsilon, draws = 8, 0.4, 20_000
    rng = np.random.default_rng(0)
    ranked = np.arange(n)
    counts = Counter()
    logged = {}
    for _ in range(draws):
        rows, p = epsilon_greedy_slate(ranked[:2], 1, epsilon, n, lambda m: rng.integers(0, n, m), rng)
        counts[int(rows[0])] += 1
        logged[int(rows[0])] = p[0]
    for item, count in counts.items():
        assert count / draws == pytest.approx(logged[item], abs=0.015)


def test_http_policies_filters_decisions_and_bad_input(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from veloxserve.api import create_app

    arrays, meta = synthetic_version_arrays(name="songs")
    VersionStore(HomeLayout(tmp_path).versions_dir("songs")).write(arrays, meta)
    attributes = tmp_path / "items.csv"
    attributes.write_text(
        "item,genre\n" + "".join(f"{100 + i},{'jazz' if i % 5 == 0 else 'rock'}\n" for i in range(50))
    )
    with Velox(tmp_path) as velox:
        assert velox.set_item_attributes("songs", attributes)["attributes"] == ["genre"]
        with TestClient(create_app(velox), raise_server_exceptions=False) as client:
            jazz = client.get("/models/songs/top_k", params={"user": 1, "k": 10, "filter": "genre:jazz"}).json()
            assert len(jazz["items"]) == 10 and all(
                (item - 100) % 5 == 0 for item in (e["item"] for e in jazz["items"])
            )
            beyond = client.get("/models/songs/top_k", params={"user": 1, "k": 11, "filter": "genre:jazz"})
            assert beyond.status_code == 400 and beyond.json()["field"] == "k" and "[1, 10]" in beyond.json()["message"]
            beyond = client.post("/models/songs/top_k", json={"user": 1, "k": 3, "candidates": [101, 102]})
            assert beyond.status_code == 400 and beyond.json()["field"] == "k"
            body = client.post(
                "/models/songs/top_k", json={"user": 1, "k": 5, "policy": "epsilon_greedy", "epsilon": 0.5}
            ).json()
            assert body["policy"] == {"name": "epsilon_greedy", "epsilon": 0.5}
            assert all(0 < e["propensity"] <= 1 for e in body["items"]) and body["decision"]
            answered = client.post(
                "/models/songs/observe",
                json={"user": 1, "item": body["items"][0]["item"], "score": 4.0, "decision": body["decision"]},
            )
            assert answered.status_code == 200
            for params, field in (
                ({"policy": "ucb2"}, "policy"),
                ({"policy": "epsilon_greedy", "epsilon": "1.5"}, "epsilon"),
                ({"filter": "genre"}, "filter"),
                ({"filter": "mood:sad"}, "filter"),
                ({"epsilon": "x"}, "epsilon"),
            ):
                bad = client.get("/models/songs/top_k", params={"user": 1, "k": 3, **params})
                assert bad.status_code == 400 and bad.json()["field"] == field, params
            bad = client.post("/models/songs/observe", json={"user": 1, "item": 101, "score": 1.0, "decision": 5})
            assert bad.status_code == 400 and bad.json()["field"] == "observations[0].decision"
    decisions = list(read_decisions(tmp_path / "models" / "songs" / "decisions"))
    assert body["decision"] in {d["decision"] for d in decisions}
    logged = next(d for d in decisions if d["decision"] == body["decision"])
    assert logged["propensities"] == [e["propensity"] for e in body["items"]] and logged["user"] == "1"
    answers = [r for r in read_log(tmp_path / "models" / "songs" / "log") if r.decision == body["decision"]]
    assert len(answers) == 1 and answers[0].score == 4.0


def test_bad_policy_values_in_process(tmp_path: Path) -> None:
    for args in (("nope", None, None), ("epsilon_greedy", -0.1, None), ("linucb", None, -1.0), ("linucb", None, True)):
        with pytest.raises(InvalidInput):
            ExplorationPolicy.parse(*args)
