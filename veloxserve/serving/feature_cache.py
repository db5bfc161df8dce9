"""FeatureCache: f(x; θ) computed once and shared by every user who is scored on x.

Feature computation is the user-independent, expensive half of a prediction (the Velox papers'
"order-of-magnitude" latency gain comes from caching it), and online learning never changes it:
only the user's weights move. So entries are keyed by (model, feature-model version, input) and
are never invalidated by feedback; a new version simply has different keys, and its old entries
age out of the LRU. The cache is bounded by bytes (rows plus keys), not by entry count, because
feature width differs per model: veloxserve/lru.py's ByteLRU, the LRU Clipper's prediction cache uses too.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from veloxserve.lru import ByteLRU

_ENTRY_OVERHEAD = 160  # bytes of an OrderedDict slot, key tuple and array header, measured with sys.getsizeof


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_bytes: int

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**self.__dict__, "hit_rate": self.hit_rate}


class FeatureCache:
    """An LRU of feature rows bounded by `max_bytes`; 0 disables it (every lookup computes)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._rows: ByteLRU[tuple[Hashable, ...], np.ndarray] = ByteLRU(max_bytes, _entry_size)
        self._lock = threading.Lock()
        self._hits = self._misses = 0

    def features(
        self, namespace: tuple[str, str], inputs: Sequence[str], compute: Callable[[Sequence[str]], np.ndarray]
    ) -> np.ndarray:
        """f of every input, shape (len(inputs), dim): cached rows where present, the misses
        computed together in one call of `compute` (duplicates in the batch computed once)."""
        keys = [(*namespace, x) for x in inputs]
        with self._lock:
            found = [self._rows.get(key) for key in keys]
            misses = [i for i, row in enumerate(found) if row is None]
            unique = list(dict.fromkeys(inputs[i] for i in misses))
            self._misses += len(unique)  # a repeat within the batch is computed once: a hit
            self._hits += len(keys) - len(unique)
        if not misses:
            rows = cast(list[np.ndarray], found)
            return rows[0][None, :] if len(rows) == 1 else np.stack(rows)
        computed = compute(unique)
        by_input = dict(zip(unique, computed))
        for i in misses:
            found[i] = by_input[inputs[i]]
        if self.max_bytes:
            with self._lock:
                for text, row in by_input.items():
                    key = (*namespace, text)
                    if key not in self._rows:  # another batch computed it meanwhile: keep that one
                        self._rows.put(key, np.array(row))  # a copy: never a view of a batch
        return np.stack(cast(list[np.ndarray], found))

    def drop(self, namespace: tuple[str, ...]) -> int:
        """Forget every entry whose key starts with `namespace` (a retired version); returns how many."""
        width = len(namespace)
        with self._lock:
            stale = [key for key in self._rows if key[:width] == namespace]
            for key in stale:
                self._rows.remove(key)
            return len(stale)

    def stats(self) -> CacheStats:
        with self._lock:
            rows = self._rows
            return CacheStats(self._hits, self._misses, rows.evictions, len(rows), rows.bytes, self.max_bytes)


def _entry_size(key: tuple[Hashable, ...], row: np.ndarray) -> int:
    return row.nbytes + sys.getsizeof(key[-1]) + _ENTRY_OVERHEAD
