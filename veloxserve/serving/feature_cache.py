"""FeatureCache: f(x; θ) computed once and shared by every user who is scored on x.

Feature computation is the user-independent, expensive half of a prediction (the Velox papers'
"order-of-magnitude" latency gain comes from caching it), and online learning never changes it:
only the user's weights move. So entries are keyed by (model, feature-model version, input) and
are never invalidated by feedback; a new version simply has different keys, and its old entries
age out of the LRU. The cache is bounded by bytes (rows plus keys), not by entry count, because
feature width differs per model.
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np

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
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._rows: OrderedDict[tuple[Hashable, ...], np.ndarray] = OrderedDict()
        self._sizes: dict[tuple[Hashable, ...], int] = {}
        self._lock = threading.Lock()
        self._bytes = self._hits = self._misses = self._evictions = 0

    def features(
        self, namespace: tuple[str, str], inputs: Sequence[str], compute: Callable[[Sequence[str]], np.ndarray]
    ) -> np.ndarray:
        """f of every input, shape (len(inputs), dim): cached rows where present, the misses
        computed together in one call of `compute` (duplicates in the batch computed once)."""
        keys = [(*namespace, x) for x in inputs]
        with self._lock:
            found = [self._rows.get(key) for key in keys]
            for key, row in zip(keys, found):
                if row is not None:
                    self._rows.move_to_end(key)
            misses = [i for i, row in enumerate(found) if row is None]
            unique = list(dict.fromkeys(inputs[i] for i in misses))
            self._misses += len(unique)  # a repeat within the batch is computed once: a hit
            self._hits += len(keys) - len(unique)
        if not misses:
            return found[0][None, :] if len(found) == 1 else np.stack(found)
        computed = compute(unique)
        by_input = dict(zip(unique, computed))
        for i in misses:
            found[i] = by_input[inputs[i]]
        if self.max_bytes:
            with self._lock:
                for text, row in by_input.items():
                    self._insert((*namespace, text), np.array(row))  # a copy: never a view of a batch
        return np.stack(found)

    def _insert(self, key: tuple[Hashable, ...], row: np.ndarray) -> None:
        if key in self._rows:
            return
        size = row.nbytes + sys.getsizeof(key[-1]) + _ENTRY_OVERHEAD
        if size > self.max_bytes:
            return
        self._rows[key] = row
        self._sizes[key] = size
        self._bytes += size
        while self._bytes > self.max_bytes:
            old, _ = self._rows.popitem(last=False)
            self._bytes -= self._sizes.pop(old)
            self._evictions += 1

    def drop(self, namespace: tuple[str, ...]) -> int:
        """Forget every entry whose key starts with `namespace` (a retired version); returns how many."""
        width = len(namespace)
        with self._lock:
            stale = [key for key in self._rows if key[:width] == namespace]
            for key in stale:
                del self._rows[key]
                self._bytes -= self._sizes.pop(key)
            return len(stale)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, self._evictions, len(self._rows), self._bytes, self.max_bytes)
