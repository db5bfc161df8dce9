"""Shared fixtures: small synthetic model versions built independently of the trainer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest

if TYPE_CHECKING:
    from tests.helpers import RedisClusterServers


def synthetic_version_arrays(
    n_users: int = 30,
    n_items: int = 50,
    rank: int = 4,
    prior_precision: float = 2.0,
    seed: int = 0,
    name: str = "songs",
    version: str = "v1",
    link: str = "identity",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A version that obeys the directory contract, with user statistics computed from scratch."""
    rng = np.random.default_rng(seed)
    V = rng.normal(size=(n_items, rank))
    bias = rng.normal(scale=0.3, size=n_items)
    mu = 3.0
    F = np.column_stack([V, mu + bias, np.ones(n_items)])
    k = rank + 2
    w0 = np.concatenate([rng.normal(scale=0.1, size=rank), [1.0, 0.0]])
    grams, rhss, weights, counts, seen = [], [], [], [], []
    for _ in range(n_users):
        items = rng.choice(n_items, size=rng.integers(3, 10), replace=False)
        y = F[items] @ (w0 + rng.normal(scale=0.5, size=k)) + rng.normal(scale=0.1, size=len(items))
        if link == "logistic":
            y = (y > np.median(y)).astype(float)
        A = prior_precision * np.eye(k) + F[items].T @ F[items]
        r = prior_precision * w0 + F[items].T @ y
        grams.append(A), rhss.append(r), weights.append(np.linalg.solve(A, r))
        counts.append(len(items)), seen.append(np.sort(items))
    arrays = {
        "item_ids": np.array([str(100 + i) for i in range(n_items)]),
        "item_factors": V,
        "item_bias": bias,
        "user_ids": np.array([str(u) for u in range(n_users)]),
        "user_weights": np.array(weights),
        "user_gram": np.array(grams),
        "user_rhs": np.array(rhss),
        "user_counts": np.array(counts, dtype=np.int64),
        "seen_indptr": np.concatenate([[0], np.cumsum([len(s) for s in seen])]).astype(np.int64),
        "seen_items": np.concatenate(seen).astype(np.int64),
        "prior_mean": w0,
        "prior_precision": np.full(k, prior_precision),
    }
    meta = {
        "model": name,
        "version": version,
        "kind": "matrix_factorization",
        "link": link,
        "rank": rank,
        "k": k,
        "prior_precision": prior_precision,
        "global_mean": mu,
        "log_position": 0,
    }
    return arrays, meta


def referenced_version_arrays(
    n_users: int = 200, n_items: int = 100, link: str = "identity", seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, Any], np.ndarray, np.ndarray]:
    """A synthetic version with a training reference (models/reference.py) sampled from its own
    training rows, and those rows as (user ids, item ids): a clean stream draws from them."""
    from veloxserve.models.reference import sample_reference

    arrays, meta = synthetic_version_arrays(n_users=n_users, n_items=n_items, link=link, seed=seed)
    counts = np.diff(arrays["seen_indptr"])
    users = np.repeat(arrays["user_ids"], counts)
    items = arrays["item_ids"][arrays["seen_items"]]
    reference, about = sample_reference(
        arrays, meta["global_mean"], users, items, logistic=link == "logistic", seed=seed
    )
    return {**arrays, **reference}, {**meta, "reference": about}, users, items


@pytest.fixture
def version_arrays() -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    return synthetic_version_arrays()


@pytest.fixture(scope="session")
def redis_base_url(tmp_path_factory) -> Iterator[str]:
    """REDIS_URL when set (CI and this machine: the shared 127.0.0.1:6379), else a redis-server of
    our own on a free port. Without either, the test fails under CI=true and is skipped elsewhere."""
    import shutil

    from tests.helpers import RedisServer

    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if shutil.which("redis-server") is None:
        message = "Redis tests need REDIS_URL or redis-server on PATH"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[RedisClusterServers]:
    """A Redis Cluster of our own (three masters, one replica each), for the whole session. Without
    redis-server and redis-cli the test fails under CI=true and is skipped elsewhere."""
    import shutil

    from tests.helpers import RedisClusterServers

    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        message = "Redis Cluster tests need redis-server and redis-cli on PATH"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    cluster = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster: RedisClusterServers) -> str:
    """The cluster's URL with a key prefix of this test's own (the cluster is ours: nothing to clean)."""
    import uuid

    redis_cluster.wait_ok()  # a test before may have failed a master over
    return f"{redis_cluster.url}&prefix=test{uuid.uuid4().hex[:12]}"


@pytest.fixture
def redis_url(redis_base_url: str) -> Iterator[str]:
    """A Redis URL with a key prefix of this test's own; its keys are deleted afterwards."""
    import uuid

    import redis

    prefix = f"test{uuid.uuid4().hex[:12]}"
    yield f"{redis_base_url}?prefix={prefix}"
    client = redis.Redis.from_url(redis_base_url)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


# The longest files, started first: under `make test`'s two workers (--dist loadfile hands out whole files
# in collection order) a long file collected last would leave one worker running it alone at the end.
LONGEST_FILES = (
    "tests/test_bench_scripts.py",
    "tests/training/test_spark_als.py",
    "tests/test_packaging.py",
    "tests/api/test_fuzz.py",
    "tests/clipper/test_runtime.py",
    "tests/api/test_clipper_routes.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Stable: a file's tests keep their order and stay together (its module fixtures are built once)."""
    first = {name: rank for rank, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: first.get(item.nodeid.split("::", 1)[0], len(first)))
