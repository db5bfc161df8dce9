"""Learning through Redis learns exactly what one process learns in memory, once per log record,
however many processes learn the same users at once."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import synthetic_version_arrays
from veloxserve.learning.shared_table import SharedUserTable
from veloxserve.learning.user_table import UserTable
from veloxserve.models.version import ModelVersion
from veloxserve.storage.redis_store import RedisUserStore


def _version(link: str = "identity") -> ModelVersion:
    arrays, meta = synthetic_version_arrays(n_users=5, n_items=20, link=link)
    return ModelVersion.from_arrays(arrays, meta)


def _before(version: ModelVersion, user: str) -> np.ndarray:
    ids = list(version.users.ids)
    return version.users.weights[ids.index(user)] if user in ids else version.prior.mean


def _tables(version: ModelVersion, store: RedisUserStore, namespace: str) -> tuple[UserTable, SharedUserTable]:
    local = UserTable(version.dim, version.prior, version.link)
    local.load_trained(version.users)
    baseline = UserTable(version.dim, version.prior, version.link)
    baseline.load_trained(version.users)
    return local, SharedUserTable(store, namespace, baseline)


@pytest.fixture
def store(redis_url: str):
    s = RedisUserStore(redis_url)
    yield s
    s.close()


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)  # fresh namespace per example
@given(
    st.lists(
        st.tuples(st.sampled_from(["0", "3", "new-a", "new-b"]), st.integers(0, 19), st.floats(-5, 5, allow_nan=False)),
        min_size=1,
        max_size=30,
    ),
    st.sampled_from(["identity", "logistic"]),
)
def test_redis_update_equals_the_compiled_kernel(store, observations, link) -> None:
    version = _version(link)
    if link == "logistic":
        observations = [(u, i, float(y > 0)) for u, i, y in observations]
    local, shared = _tables(version, store, f"m/{link}/{np.random.default_rng().integers(1 << 60)}")
    F = version.features.matrix
    for user, item, y in observations:
        local.observe(local.ensure(user), F, item, y)
    users = [u for u, _, _ in observations]
    items, ys = np.array([i for _, i, _ in observations]), np.array([y for _, _, y in observations])
    errors = shared.learn("a", range(1, len(users) + 1), users, items, ys, F)
    before = np.einsum("ij,ij->i", F[items], np.array([_before(version, u) for u in users]))
    expected_errors = ys - (before if link == "identity" else 1 / (1 + np.exp(-before)))
    np.testing.assert_allclose(errors, expected_errors, rtol=1e-9, atol=1e-12)  # predicted before the batch
    for user in set(users) | {"1"}:
        np.testing.assert_allclose(shared.weights(user), local.weights(user), rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(shared.covariance(user), local.covariance(user), rtol=1e-9, atol=1e-12)
        assert set(shared.seen_rows(user).tolist()) == set(local.seen_rows(user).tolist())
    np.testing.assert_allclose(shared.weights_many(users), local.weights_many(users), rtol=1e-9, atol=1e-12)
    assert len(shared) == len(local)


def test_replaying_learned_records_changes_nothing(store) -> None:
    version = _version()
    _, shared = _tables(version, store, "m/v1")
    F = version.features.matrix
    args = (["u", "u", "v"], np.array([1, 2, 3]), np.array([4.0, 1.0, 2.0]), F)
    assert shared.learn("a", [1, 2, 3], *args).size == 3
    before = shared.weights("u").copy()
    assert shared.learn("a", [1, 2, 3], *args).size == 0  # the same log records again
    assert shared.learn("b", [1], ["u"], np.array([1]), np.array([4.0]), F).size == 1  # another instance's LSN 1
    assert not np.allclose(shared.weights("u"), before)


def test_concurrent_learners_of_the_same_users_lose_no_update(store, redis_url) -> None:
    version = _version()
    F = version.features.matrix
    rng = np.random.default_rng(7)
    streams = {
        inst: [(str(rng.integers(0, 3)), int(rng.integers(0, 20)), float(rng.normal())) for _ in range(300)]
        for inst in ("a", "b", "c")
    }

    def learner(instance: str) -> None:
        own = RedisUserStore(redis_url)  # a process of its own: its own connection and table
        _, table = _tables(version, own, "m/v1")
        obs = streams[instance]
        for start in range(0, len(obs), 7):
            chunk = obs[start : start + 7]
            table.learn(
                instance,
                range(start + 1, start + 1 + len(chunk)),
                [u for u, _, _ in chunk],
                np.array([i for _, i, _ in chunk]),
                np.array([y for _, _, y in chunk]),
                F,
            )
        own.close()

    threads = [threading.Thread(target=learner, args=(inst,)) for inst in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _, shared = _tables(version, store, "m/v1")
    users = version.users
    for user in ("0", "1", "2"):
        row = list(users.ids).index(user)
        rows = [(i, y) for obs in streams.values() for u, i, y in obs if u == user]
        Fu = F[[i for i, _ in rows]]
        A = users.gram[row] + Fu.T @ Fu
        r = users.rhs[row] + Fu.T @ np.array([y for _, y in rows])
        np.testing.assert_allclose(shared.weights(user), np.linalg.solve(A, r), rtol=1e-7, atol=1e-9)
