"""The prediction cache: byte-bounded LRU against an independent model, and in-flight coalescing
with a real container."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.clipper.conftest import constant_model, write_callable
from veloxserve.clipper import Clipper
from veloxserve.clipper.cache import PredictionCache, input_digest
from veloxserve.config import ApproximateSettings

ops = st.lists(st.tuples(st.sampled_from(["put", "get"]), st.integers(0, 9), st.integers(0, 40)), max_size=80)


@given(ops, st.integers(300, 3000))
def test_cache_is_an_lru_bounded_by_bytes(operations, max_bytes: int) -> None:
    cache = PredictionCache(max_bytes)
    model: OrderedDict[int, int] = OrderedDict()  # key -> size, least recent first
    for op, key, length in operations:
        k = ("m", "v1", bytes([key]))
        if op == "get":
            found, _ = cache.get(k)
            assert found == (key in model)
            if found:
                model.move_to_end(key)
            continue
        value = np.zeros(length)
        size = value.nbytes + 200
        cache.put(k, value)
        if size > max_bytes:
            continue
        model.pop(key, None)
        model[key] = size
        while sum(model.values()) > max_bytes:
            model.popitem(last=False)
        assert cache.bytes == sum(model.values()) <= max_bytes
        assert list(model) == [k[2][0] for k in cache._entries]


def test_input_digest_separates_values_dtypes_and_shapes() -> None:
    a = np.arange(4.0)
    assert input_digest(a) == input_digest(a.copy())
    assert input_digest(a) != input_digest(a.reshape(2, 2))
    assert input_digest(a) != input_digest(a.astype(np.float32))
    assert input_digest({"b": 1, "a": 2}) == input_digest({"a": 2, "b": 1})
    assert input_digest("x") != input_digest("y")


def test_identical_queries_in_flight_share_one_computation(clipper: Clipper, tmp_path: Path) -> None:
    clipper.deploy(
        "slow", "callable", write_callable(tmp_path / "m.pkl", constant_model(7.0, sleep=0.3)), adaptive=False
    )
    clipper.create_app("app", ["slow"], objective_ms=20_000)

    async def burst():
        same = [clipper.runtime.predict("app", f"user{i}", [1.0, 2.0]) for i in range(10)]
        other = [clipper.runtime.predict("app", "user", [3.0, 4.0])]
        return await asyncio.gather(*same, *other)

    answers = clipper._run(burst())
    assert [a["output"] for a in answers] == [7.0] * 11
    replica = clipper.describe_model("slow")["replicas"][0]
    assert replica["queries"] == 2  # ten identical queries cost one evaluation, the other input one more
    cache = clipper.describe_model("slow")["cache"]
    assert cache["coalesced"] == 9 and cache["misses"] == 2
    assert clipper.predict("app", "later", [1.0, 2.0])["output"] == 7.0  # now a plain hit
    assert clipper.describe_model("slow")["cache"]["hits"] == 1
    assert clipper.describe_model("slow")["replicas"][0]["queries"] == 2


def test_failures_are_shared_but_not_cached(clipper: Clipper, tmp_path: Path) -> None:
    def flaky(batch):
        import os

        marker = os.environ.get("FLAKY_MARKER")
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
            raise RuntimeError("first call fails")
        return [1.0] * len(batch)

    import os

    os.environ["FLAKY_MARKER"] = str(tmp_path / "failed-once")
    try:
        clipper.deploy("flaky", "callable", write_callable(tmp_path / "f.pkl", flaky))
    finally:
        del os.environ["FLAKY_MARKER"]
    clipper.create_app("app", ["flaky"], objective_ms=20_000, default=-1.0)
    assert clipper.predict("app", "u", [0.0])["default"] is True
    assert clipper.predict("app", "u", [0.0]) == {
        "output": 1.0,
        "default": False,
        "models": [{"model": "flaky", "status": "ok"}],
    }


LSH = ApproximateSettings(tables=4, bits=16, seed=2)


def _fetch_all(cache: PredictionCache, vectors: list[np.ndarray], near: bool) -> tuple[list[float], list[int]]:
    """Outputs of f(x) = Σx through the cache, and the indices of the queries that were computed."""
    computed: list[int] = []

    async def run() -> list[float]:
        outputs = []
        for i, x in enumerate(vectors):

            def compute(i: int = i, x: np.ndarray = x) -> asyncio.Future:
                computed.append(i)
                future = asyncio.get_running_loop().create_future()
                future.set_result(float(x.sum()))
                return future

            key = ("m", "v1", input_digest(x))
            outputs.append(await cache.fetch(key, compute, (LSH, x.reshape(1, -1)) if near else None))
            await asyncio.sleep(0)  # the done callbacks (which store the output) run
        return outputs

    return asyncio.run(run()), computed


def test_a_near_identical_vector_is_answered_with_the_cached_output() -> None:
    rng = np.random.default_rng(4)
    x = rng.normal(size=64)
    near, far = x + rng.normal(scale=1e-4, size=64), rng.normal(size=64)
    cache = PredictionCache()
    outputs, computed = _fetch_all(cache, [x, near, far, x], near=True)
    assert computed == [0, 2] and outputs == [x.sum(), x.sum(), far.sum(), x.sum()]
    assert cache.describe()["approximate_hits"] == 1 and cache.describe()["hits"] == 2


def test_approximate_caching_off_is_exact_caching() -> None:
    """Without settings (near=None) the cache behaves exactly as before: only identical inputs hit."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=64)
    vectors = [x, x + 1e-9, x, rng.normal(size=64)]
    cache = PredictionCache()
    outputs, computed = _fetch_all(cache, vectors, near=False)
    assert computed == [0, 1, 3] and outputs == [v.sum() for v in vectors]
    described = cache.describe()
    assert (described["hits"], described["misses"], described["approximate_hits"]) == (1, 3, 0)
    assert described["approximate_entries"] == 0


def test_a_deployment_with_lsh_settings_answers_near_queries_from_the_cache(clipper: Clipper, tmp_path: Path) -> None:
    model = write_callable(tmp_path / "sum.pkl", lambda batch: [float(sum(x)) for x in batch])
    x = [0.5, 1.5, -2.0, 3.0]
    lsh = {"tables": 4, "bits": 16, "seed": 1}
    clipper.deploy("approx", "callable", model, adaptive=False, approximate=lsh, sample=x)  # its shape: [4]
    clipper.deploy("exact", "callable", model, adaptive=False, sample=x)
    clipper.create_app("a", ["approx"], objective_ms=20_000)
    clipper.create_app("e", ["exact"], objective_ms=20_000)
    nudged = [0.5 + 1e-6, 1.5, -2.0, 3.0]
    for app in ("a", "e"):
        assert clipper.predict(app, "u", x)["output"] == 3.0
    assert clipper.predict("a", "u", nudged)["output"] == 3.0  # the near query's cached output
    assert clipper.predict("e", "u", nudged)["output"] == pytest.approx(3.0 + 1e-6)  # computed
    approx, exact = clipper.describe_model("approx"), clipper.describe_model("exact")
    probe = 1  # the deploy ran the sample once in each replica
    assert approx["replicas"][0]["queries"] == probe + 1 and exact["replicas"][0]["queries"] == probe + 2
    assert approx["approximate"]["bits"] == 16 and exact["approximate"] is None
    assert approx["cache"]["approximate_hits"] == 1
    clipper.deploy("approx", "callable", model, adaptive=False, approximate=lsh, sample=x)
    assert clipper.predict("a", "u", nudged)["output"] == pytest.approx(3.0 + 1e-6)  # v2 never sees v1's entries
    assert clipper.describe_model("approx")["version"] == "v2"
    assert clipper.describe_model("approx")["replicas"][0]["queries"] == probe + 1


def test_without_a_known_input_shape_a_deployment_caches_exactly(clipper: Clipper, tmp_path: Path) -> None:
    """A callable deployed without a sample declares no shape: no hasher is built for whatever
    dimension a client sends, so the approximate setting waits for a shape (exact caching meanwhile)."""
    model = write_callable(tmp_path / "sum.pkl", lambda batch: [float(sum(x)) for x in batch])
    clipper.deploy("approx", "callable", model, adaptive=False, approximate={"bits": 8})
    clipper.create_app("a", ["approx"], objective_ms=20_000)
    assert clipper.predict("a", "u", [1.0, 2.0])["output"] == 3.0
    assert clipper.predict("a", "u", [1.0, 2.0 + 1e-6])["output"] == pytest.approx(3.0 + 1e-6)
    assert clipper.describe_model("approx")["cache"]["approximate_entries"] == 0
