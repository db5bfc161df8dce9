"""Request validation on the predict path: msgspec vs pydantic vs orjson + hand checks.

Two requests, as the HTTP app sees them: a GET predict query (the query string's dict of strings)
and a POST predict batch (the body's bytes, `--batch` queries). Each candidate turns the input
into validated values the handler can use, with the same rules (ids: non-empty strings of at
most 256 characters or integers; at most max_batch queries). Prints JSON: median and p99 µs
per request for each candidate and request.

    python bench/bench_validation.py [--quick] [--batch 32]
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Annotated, Any

import msgspec
import numpy as np
import orjson
import pydantic

MAX_ID, MAX_BATCH = 256, 10_000


# ---- msgspec ----------------------------------------------------------------------------------
class MQuery(msgspec.Struct):
    user: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)]
    item: Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)] | msgspec.UnsetType = msgspec.UNSET


MId = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_ID)] | int


class MEntry(msgspec.Struct):
    user: MId
    item: MId | msgspec.UnsetType = msgspec.UNSET


class MBatch(msgspec.Struct):
    queries: Annotated[list[MEntry], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


_M_BATCH = msgspec.json.Decoder(MBatch)


def msgspec_query(query: dict[str, str]) -> tuple[str, str]:
    q = msgspec.convert(query, MQuery, strict=False)
    return q.user, q.item  # type: ignore[return-value]


def msgspec_batch(raw: bytes) -> list[tuple[Any, Any]]:
    return [(q.user, q.item) for q in _M_BATCH.decode(raw).queries]


# ---- pydantic ---------------------------------------------------------------------------------
PStr = Annotated[str, pydantic.StringConstraints(min_length=1, max_length=MAX_ID)]


class PQuery(pydantic.BaseModel):
    user: PStr
    item: PStr | None = None


class PEntry(pydantic.BaseModel):
    user: PStr | pydantic.StrictInt
    item: PStr | pydantic.StrictInt | None = None


class PBatch(pydantic.BaseModel):
    queries: Annotated[list[PEntry], pydantic.Field(min_length=1, max_length=MAX_BATCH)]


def pydantic_query(query: dict[str, str]) -> tuple[str, str | None]:
    q = PQuery.model_validate(query)
    return q.user, q.item


def pydantic_batch(raw: bytes) -> list[tuple[Any, Any]]:
    return [(q.user, q.item) for q in PBatch.model_validate_json(raw).queries]


# ---- orjson + hand checks (veloxserve before the route table) ---------------------------------
def _id(value: Any) -> Any:
    if isinstance(value, str) and 0 < len(value) <= MAX_ID or isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(value)


def hand_query(query: dict[str, str]) -> tuple[str, str]:
    user, item = query.get("user"), query.get("item")
    if not user or not item:
        raise ValueError("user and item")
    return _id(user), _id(item)


def hand_batch(raw: bytes) -> list[tuple[Any, Any]]:
    body = orjson.loads(raw)
    if not isinstance(body, dict) or not isinstance(body.get("queries"), list):
        raise ValueError("queries")
    queries = body["queries"]
    if not 0 < len(queries) <= MAX_BATCH:
        raise ValueError("batch size")
    pairs = []
    for q in queries:
        if not isinstance(q, dict) or "user" not in q or "item" not in q:
            raise ValueError(q)
        pairs.append((_id(q["user"]), _id(q["item"])))
    return pairs


def _measure(fn: Any, arg: Any, repeats: int, inner: int) -> dict[str, float]:
    per_call = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(inner):
            fn(arg)
        per_call.append((time.perf_counter() - started) / inner * 1e6)
    return {"median_us": round(float(np.median(per_call)), 3), "p99_us": round(float(np.percentile(per_call, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a few samples only (CI smoke run)")
    parser.add_argument("--batch", type=int, default=32, help="queries in the POST predict batch (default 32)")
    args = parser.parse_args()
    repeats, inner = (20, 50) if args.quick else (400, 500)
    query = {"user": "1234", "item": "5678"}
    raw = orjson.dumps({"queries": [{"user": u, "item": str(100 + u)} for u in range(args.batch)]})
    candidates = {
        "msgspec": (msgspec_query, msgspec_batch),
        "pydantic": (pydantic_query, pydantic_batch),
        "orjson+hand": (hand_query, hand_batch),
    }
    for q_fn, b_fn in candidates.values():  # every candidate gives the same answer
        assert tuple(map(str, q_fn(query))) == ("1234", "5678") and len(b_fn(raw)) == args.batch
    results = {
        name: {
            "get_predict_query": _measure(q_fn, query, repeats, inner),
            f"post_predict_batch_{args.batch}": _measure(b_fn, raw, repeats, inner),
        }
        for name, (q_fn, b_fn) in candidates.items()
    }
    fastest = min(
        results,
        key=lambda n: (
            results[n]["get_predict_query"]["median_us"] + results[n][f"post_predict_batch_{args.batch}"]["median_us"]
        ),
    )
    print(
        json.dumps(
            {
                "bench": "validation",
                "quick": args.quick,
                "batch": args.batch,
                "repeats": repeats,
                "calls_per_sample": inner,
                "results": results,
                "fastest": fastest,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
