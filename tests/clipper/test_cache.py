"""The prediction cache: byte-bounded LRU against an independent model, and in-flight coalescing
with a real container."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from tests.clipper.conftest import constant_model, write_callable
from veloxserve.clipper import Clipper
from veloxserve.clipper.cache import PredictionCache, input_digest

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
