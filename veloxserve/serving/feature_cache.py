"""FeatureCache: f(x; θ) computed once and shared by every user who is scored on x.

Feature computation is the user-independent, expensive half of a prediction (the Velox papers'
"order-of-magnitude" latency gain comes from caching it), and online learning never changes it:
only the user's weights move. So entries are keyed by (model, feature-model version, input) and
are never invalidated by feedback; a new version simply has different keys, and its old entries
age out of the LRU. The cache is bounded by bytes (rows plus keys), not by entry count, because
feature width differs per model: veloxserve/lru.py's ByteLRU, the LRU Clipper's prediction cache uses too.

Feature coarsening (the paper's cache equivalence classes, docs/approximate-caching.md): with a
`Coarsening`, an input the exact rows miss is mapped to a cheap signature vector (a text's hashed
word counts, a numeric input itself) whose LSH bucket is its class; a class already holding a row
answers f(z) of its representative z — the first input that filled it — in place of f(x), and
only inputs of new classes are computed. Those rows live in veloxserve/approximate_cache.py's
ApproximateCache (the one Clipper's prediction cache uses), under a byte bound of its own (again
`max_bytes`; `stats().approximate_bytes`), keyed by version like the exact rows.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from veloxserve.approximate_cache import ApproximateCache
from veloxserve.config import ApproximateSettings
from veloxserve.lru import ByteLRU
from veloxserve.serving.anytime import AnytimeRows

_ENTRY_OVERHEAD = 160  # bytes of an OrderedDict slot, key tuple and array header, measured with sys.getsizeof


@dataclass(frozen=True)
class Coarsening:
    """A cache equivalence class: `signature` maps inputs to vectors (n, d), `settings` buckets them."""

    settings: ApproximateSettings
    signature: Callable[[Sequence[Any]], np.ndarray]


@dataclass(frozen=True)
class CacheStats:
    """`hits` are exact; `approximate_hits` answered f(z) of the input's class; `misses` computed f."""

    hits: int
    misses: int
    evictions: int
    entries: int
    bytes: int
    max_bytes: int
    approximate_hits: int = 0
    approximate_entries: int = 0
    approximate_bytes: int = 0

    @property
    def hit_rate(self) -> float:
        lookups = self.hits + self.approximate_hits + self.misses
        return (self.hits + self.approximate_hits) / lookups if lookups else 0.0

    def as_dict(self) -> dict[str, float]:
        return {**self.__dict__, "hit_rate": self.hit_rate}


class FeatureCache:
    """An LRU of feature rows bounded by `max_bytes`; 0 disables it (every lookup computes)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._rows: ByteLRU[tuple[Hashable, ...], np.ndarray] = ByteLRU(max_bytes, _entry_size)
        self._classes: ApproximateCache[np.ndarray] = ApproximateCache(max_bytes, lambda row: row.nbytes)
        self._lock = threading.Lock()
        self._hits = self._misses = self._approximate_hits = 0

    def features(
        self,
        namespace: tuple[str, str],
        inputs: Sequence[Any],
        compute: Callable[[Sequence[Any]], np.ndarray | AnytimeRows],
        *,
        keys: Sequence[Hashable] | None = None,
        coarsening: Coarsening | None = None,
    ) -> np.ndarray:
        """f of every input, shape (len(inputs), dim): cached rows where present, the misses
        computed together in one call of `compute` (duplicates in the batch computed once).

        `keys` identify the inputs for the exact rows (default: the inputs, e.g. texts; give
        digests for arrays). With `coarsening`, an exact miss whose class holds a row gets that
        row (f of the class's representative) and is not computed. Rows `compute` answers as
        AnytimeRows with a basis substituted by its mean (serving/anytime.py) are returned, not cached."""
        keys = inputs if keys is None else keys
        full = [(*namespace, key) for key in keys]
        with self._lock:
            found = [self._rows.get(key) for key in full]
        misses = [i for i, row in enumerate(found) if row is None]
        distinct = sorted({keys[i]: i for i in reversed(misses)}.values())  # one computation per input
        rows: dict[Hashable, np.ndarray] = {}
        todo, signatures = distinct, None
        if distinct and coarsening is not None and self.max_bytes:
            signatures = coarsening.signature([inputs[i] for i in distinct])
            with self._lock:
                answers = self._classes.get_many(namespace, coarsening.settings, signatures)
            rows = {keys[i]: cast(np.ndarray, row) for i, (hit, row) in zip(distinct, answers) if hit}
            todo = [i for i, (hit, _) in zip(distinct, answers) if not hit]
            signatures = signatures[[not hit for hit, _ in answers]]
        cacheable = True
        if todo:
            computed = compute([inputs[i] for i in todo])
            if isinstance(computed, AnytimeRows):
                cacheable, computed = computed.exact, computed.features
            rows.update(zip((keys[i] for i in todo), computed))
        with self._lock:
            self._hits += len(full) - len(distinct)  # a repeat within the batch is computed once: a hit
            self._approximate_hits += len(distinct) - len(todo)
            self._misses += len(todo)
            if self.max_bytes and cacheable:
                for key, row in rows.items():
                    if (*namespace, key) not in self._rows:  # another batch computed it meanwhile: keep that
                        self._rows.put((*namespace, key), np.array(row))  # a copy: never a view of a batch
                if coarsening is not None and signatures is not None and todo:
                    self._classes.put_many(namespace, coarsening.settings, signatures, [rows[keys[i]] for i in todo])
        if not misses:
            held = cast(list[np.ndarray], found)
            return held[0][None, :] if len(held) == 1 else np.stack(held)
        for i in misses:
            found[i] = rows[keys[i]]
        return np.stack(cast(list[np.ndarray], found))

    def drop(self, namespace: tuple[str, ...]) -> int:
        """Forget every entry whose key starts with `namespace` (a retired version); returns how many."""
        width = len(namespace)
        with self._lock:
            stale = [key for key in self._rows if key[:width] == namespace]
            for key in stale:
                self._rows.remove(key)
            self._classes.drop(namespace)
            return len(stale)

    def stats(self) -> CacheStats:
        with self._lock:
            rows, classes = self._rows, self._classes
            return CacheStats(
                self._hits,
                self._misses,
                rows.evictions + classes.evictions,
                len(rows),
                rows.bytes,
                self.max_bytes,
                self._approximate_hits,
                len(classes),
                classes.bytes,
            )


def _entry_size(key: tuple[Hashable, ...], row: np.ndarray) -> int:
    return row.nbytes + sys.getsizeof(key[-1]) + _ENTRY_OVERHEAD
