"""ApproximateCache: values by the LSH buckets of their inputs, over the one ByteLRU.

The one approximate cache both Clipper's prediction cache (numeric query vectors, clipper/cache.py)
and Velox's feature cache (the signature of a text or a numeric input, serving/feature_cache.py)
put in front of their exact entries. An input is hashed by the setting's LSH (veloxserve/lsh.py)
into one code per table; the value is stored under every (table, code) and a lookup answers the
value of the first table whose bucket holds one: the value computed for the bucket's
representative z — the first input that filled it — in place of f(x). That is Clipper's
approximate caching and, with one table, the paper's cache equivalence class (f(x) ≈ f(z)).

Keys carry the caller's namespace (model, version), the settings and the dimension, so a new
version, a new setting or a differently shaped input never sees another's entries; a bucket keeps
its representative until evicted (a later input of the bucket is served, not stored). With
`radius` set, the representative's vector is kept beside its value and a bucket whose
representative is farther than the radius is a miss: accuracy bounded at the price of the
vector's bytes. The byte bound counts a value once per table (L tables hold L references to one
object, so the count is conservative). Not locked, like ByteLRU: the feature cache holds its own
lock, Clipper's cache lives on one event loop.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

import numpy as np

from veloxserve.config import ApproximateSettings
from veloxserve.lru import ByteLRU
from veloxserve.lsh import hasher

V = TypeVar("V")
Key = tuple[Hashable, ApproximateSettings, int, int, int]  # namespace, settings, dimension, table, code
_ENTRY_OVERHEAD = 240  # bytes of an OrderedDict slot, the key tuple and the entry tuple, by sys.getsizeof


class ApproximateCache(Generic[V]):
    """At most `max_bytes` of values (as `size(value)` counts) by the buckets of their inputs."""

    def __init__(self, max_bytes: int, size: Callable[[V], int]) -> None:
        self._value_size = size
        self._entries: ByteLRU[Key, tuple[V, np.ndarray | None]] = ByteLRU(max_bytes, self._size)
        self.hits = self.misses = 0

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

    def get_many(
        self, namespace: Hashable, settings: ApproximateSettings, vectors: np.ndarray
    ) -> list[tuple[bool, V | None]]:
        """(found, value) for each row of `vectors` (n, d): the cached value of its nearest bucket."""
        X = _rows(vectors)
        lsh = hasher(settings, X.shape[1])
        codes = lsh.codes(X).tolist()
        radius = settings.radius
        answers: list[tuple[bool, V | None]] = []
        for row, row_codes in enumerate(codes):
            found: tuple[bool, V | None] = (False, None)
            for table, code in enumerate(row_codes):
                entry = self._entries.get((namespace, settings, lsh.dim, table, code))
                if entry is None:
                    continue
                value, representative = entry
                if radius is None or representative is None or lsh.distance(X[row], representative) <= radius:
                    found = (True, value)
                    break
            answers.append(found)
            if found[0]:
                self.hits += 1
            else:
                self.misses += 1
        return answers

    def get(self, namespace: Hashable, settings: ApproximateSettings, vector: np.ndarray) -> tuple[bool, V | None]:
        return self.get_many(namespace, settings, np.asarray(vector).reshape(1, -1))[0]

    def put_many(
        self, namespace: Hashable, settings: ApproximateSettings, vectors: np.ndarray, values: Sequence[V]
    ) -> None:
        """Make each row the representative of its buckets that have none yet (an input landing in a
        bucket already held by another is not stored: the class keeps its representative)."""
        X = _rows(vectors)
        lsh = hasher(settings, X.shape[1])
        keep_vectors = settings.radius is not None
        for row, row_codes in enumerate(lsh.codes(X).tolist()):
            entry = (values[row], np.array(X[row]) if keep_vectors else None)
            for table, code in enumerate(row_codes):
                key = (namespace, settings, lsh.dim, table, code)
                if key not in self._entries:
                    self._entries.put(key, entry)

    def put(self, namespace: Hashable, settings: ApproximateSettings, vector: np.ndarray, value: V) -> None:
        self.put_many(namespace, settings, np.asarray(vector).reshape(1, -1), [value])

    def drop(self, namespace: Hashable) -> int:
        """Forget every entry of `namespace` (a retired version), or of every namespace it is a
        prefix of when both are tuples ((model,) drops every version); returns how many keys went."""
        stale = [key for key in self._entries if _within(key[0], namespace)]
        for key in stale:
            self._entries.remove(key)
        return len(stale)

    def _size(self, key: Key, entry: tuple[V, np.ndarray | None]) -> int:
        value, representative = entry
        held = 0 if representative is None else representative.nbytes
        return self._value_size(value) + held + sys.getsizeof(key[0]) + _ENTRY_OVERHEAD


def _within(held: Hashable, namespace: Hashable) -> bool:
    if isinstance(held, tuple) and isinstance(namespace, tuple):
        return held[: len(namespace)] == namespace
    return held == namespace


def _rows(vectors: np.ndarray) -> np.ndarray:
    X = np.asarray(vectors, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"an approximate cache looks up rows of vectors (n, d), got shape {X.shape}")
    return X
