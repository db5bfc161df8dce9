"""A prediction cache keyed by (model, version, input hash), bounded in bytes, with coalescing.

The entries are veloxserve/lru.py's ByteLRU, the LRU the feature cache uses; what is Clipper's
is the layer on top: identical queries in flight share one computation: the second caller awaits the first caller's
future instead of enqueueing again, so a burst of one popular input costs one model evaluation.
Failures (a dropped deadline, a crashed container) are shared by the waiters but never cached.

Approximate caching (Clipper's, for continuous inputs; docs/approximate-caching.md): a deployment
with `approximate` settings passes its numeric query vector as `near`; an exact miss then looks
the vector's LSH buckets up in veloxserve/approximate_cache.py's ApproximateCache (the one the
feature cache coarsens with) and answers the output cached for a near-identical query, and a
computed output is stored under the vector's buckets too. Without `near` nothing changes.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from veloxserve.approximate_cache import ApproximateCache
from veloxserve.config import ApproximateSettings
from veloxserve.lru import ByteLRU

Key = tuple[str, str, bytes]
Near = tuple[ApproximateSettings, np.ndarray]  # the deployment's settings and the query as one vector
_ENTRY_OVERHEAD = 200  # bytes of dict entry, key tuple and digest around each value


def input_digest(value: Any) -> bytes:
    """A stable hash of one input: its dtype, shape and bytes for arrays, its JSON otherwise."""
    h = hashlib.blake2b(digest_size=16)
    if isinstance(value, np.ndarray):
        h.update(value.dtype.str.encode())
        h.update(str(value.shape).encode())
        h.update(np.ascontiguousarray(value).tobytes())
    else:
        h.update(orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY))
    return h.digest()


def _size(key: Key, value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes + _ENTRY_OVERHEAD
    if isinstance(value, (int, float)):
        return 8 + _ENTRY_OVERHEAD
    return len(orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)) + _ENTRY_OVERHEAD


class PredictionCache:
    """Bounded LRU of model outputs plus the computations in flight."""

    def __init__(self, max_bytes: int = 64 << 20) -> None:
        self._entries: ByteLRU[Key, tuple[Any]] = ByteLRU(max_bytes, lambda key, held: _size(key, held[0]))
        self.approximate: ApproximateCache[Any] = ApproximateCache(max_bytes, lambda value: _size(("", "", b""), value))
        self._in_flight: dict[Key, asyncio.Future] = {}
        self.hits = self.misses = self.coalesced = 0

    @property
    def max_bytes(self) -> int:
        return self._entries.max_bytes

    @property
    def bytes(self) -> int:
        return self._entries.bytes

    @property
    def evictions(self) -> int:
        return self._entries.evictions

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key) -> tuple[bool, Any]:
        held = self._entries.get(key)  # a 1-tuple, so that a None output is a hit too
        return (False, None) if held is None else (True, held[0])

    def put(self, key: Key, value: Any) -> None:
        self._entries.put(key, (value,))

    def fetch(self, key: Key, compute: Callable[[], asyncio.Future], near: Near | None = None) -> asyncio.Future:
        """A future of the output for `key`: cached, shared with an identical query in flight, or
        the future `compute()` returns (called at most once per key in flight). With `near`, an
        exact miss may be answered by the output of a near-identical query (its LSH bucket's)."""
        found, value = self.get(key)
        if not found and near is not None:
            found, value = self.approximate.get(key[:2], *near)
        if found:
            self.hits += 1
            future = asyncio.get_running_loop().create_future()
            future.set_result(value)
            return future
        shared = self._in_flight.get(key)
        if shared is not None:
            self.coalesced += 1
            return shared
        self.misses += 1
        future = compute()
        self._in_flight[key] = future
        future.add_done_callback(lambda done: self._settle(key, done, near))
        return future

    def _settle(self, key: Key, future: asyncio.Future, near: Near | None) -> None:
        self._in_flight.pop(key, None)
        if not future.cancelled() and future.exception() is None:
            self.put(key, future.result())
            if near is not None:
                self.approximate.put(key[:2], near[0], near[1], future.result())

    def describe(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self.bytes,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "approximate_hits": self.approximate.hits,  # counted in hits too: answered by a near query's output
            "approximate_entries": len(self.approximate),
            "misses": self.misses,
            "coalesced": self.coalesced,
            "evictions": self.evictions,
        }
