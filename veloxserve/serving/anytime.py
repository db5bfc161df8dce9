"""AnytimeFeatures: f(x) = [f_1(x), …, f_k(x)] under a deadline, E[f_i(x)] in place of a late f_i.

The Velox paper's anytime features (and Clipper's anytime predictions, clipper/application.py):
when the basis functions are separate models, one straggler should cost accuracy, not latency.
Every basis runs on its own worker thread; at the deadline the blocks that arrived are used and
each late (or failed) basis is replaced by its expectation, the running mean of its outputs so
far, and flagged (a basis that raised is substituted too; one that broke its contract — rows,
width, finite outputs — raises ModelStateInvalid naming it). A late computation is not cancelled: when it finishes, its rows still update
the mean. A basis with `max_in_flight` computations still running is not started again — it is
substituted at once, so a hung model cannot pile up threads.

The means belong to one AnytimeFeatures, built per served version (a new version's bases start
their own expectations; `initial_means`, e.g. the training set's mean outputs, seed them). A basis
with no mean yet (nothing seen, none given) cannot be substituted, so the call waits for it.
Substituted rows are not f(x): the feature cache returns them but never stores them
(serving/feature_cache.py checks `AnytimeRows.approximated`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import numpy as np

from veloxserve.errors import ModelStateInvalid

Basis = Callable[[Any], np.ndarray]  # inputs (a sequence, an array, a sparse design) -> (n,) or (n, width)


@dataclass(frozen=True)
class AnytimeRows:
    """Features (n, Σ widths); `approximated[i]`: basis i was late or failed and its mean was used."""

    features: np.ndarray
    approximated: np.ndarray
    columns: tuple[slice, ...]  # basis i's columns in `features`

    @property
    def exact(self) -> bool:
        return not self.approximated.any()


class AnytimeFeatures:
    """Basis callables evaluated concurrently, at most `deadline_s` waited for (per call)."""

    def __init__(
        self,
        bases: Sequence[Basis],
        *,
        deadline_s: float,
        names: Sequence[str] | None = None,
        initial_means: Sequence[np.ndarray | None] | None = None,
        max_in_flight: int = 4,
    ) -> None:
        if not bases:
            raise ValueError("AnytimeFeatures needs at least one basis function")
        if not deadline_s > 0 or max_in_flight < 1:
            raise ValueError(f"deadline_s must be > 0 and max_in_flight >= 1, got {deadline_s}, {max_in_flight}")
        self._bases = list(bases)
        self.names = list(names) if names is not None else [f"f_{i + 1}" for i in range(len(bases))]
        self.deadline_s = deadline_s
        self.max_in_flight = max_in_flight
        k = len(self._bases)
        seeds = list(initial_means) if initial_means is not None else [None] * k
        if len(self.names) != k or len(seeds) != k:
            raise ValueError(f"{k} bases need {k} names and initial means, got {len(self.names)} and {len(seeds)}")
        self._means: list[np.ndarray | None] = [
            None if m is None else np.atleast_1d(np.asarray(m, dtype=np.float64)).copy() for m in seeds
        ]
        self._counts = [0 if m is None else 1 for m in self._means]
        self._in_flight = [0] * k
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=k * max_in_flight, thread_name_prefix="anytime")
        self._closed = False
        self.calls = 0
        self.late = np.zeros(k, dtype=np.int64)  # substitutions per basis

    def transform(self, inputs: Any, deadline_s: float | None = None) -> AnytimeRows:
        """Every basis on `inputs` (a sequence, or a matrix of rows such as a sparse design shared by
        the bases), waiting until the deadline; substitutes and flags the late ones."""
        until = time.monotonic() + (self.deadline_s if deadline_s is None else deadline_s)
        n = _count(inputs)
        if self._closed:  # a retired version still answering a request that reached it: no deadline
            blocks = [self._checked(i, basis(inputs), n) for i, basis in enumerate(self._bases)]
            return _rows(blocks, np.zeros(len(blocks), dtype=bool), n)
        futures: list[Future[np.ndarray] | None] = []
        for i, basis in enumerate(self._bases):
            with self._lock:
                busy = self._in_flight[i] >= self.max_in_flight and self._means[i] is not None
                if not busy:
                    self._in_flight[i] += 1
            futures.append(None if busy else self._pool.submit(self._run, i, basis, inputs))
        started = [f for f in futures if f is not None]
        if started:
            wait(started, timeout=max(0.0, until - time.monotonic()))
        blocks, approximated = [], np.zeros(len(self._bases), dtype=bool)
        for i, future in enumerate(futures):
            block = None
            if future is not None and (future.done() or self._mean(i) is None):
                try:
                    block = future.result()  # done, or nothing to substitute yet: wait for it
                except ModelStateInvalid:  # a broken contract (shape, non-finite) is an error, not a straggler
                    raise
                except Exception:
                    if self._mean(i) is None:
                        raise
            if block is None:
                mean = self._mean(i)
                assert mean is not None  # a basis without a mean was waited for above
                block = np.broadcast_to(mean, (n, mean.size))
                approximated[i] = True
            blocks.append(block)
        with self._lock:
            self.calls += 1
            self.late += approximated
        return _rows(blocks, approximated, n)

    def __call__(self, inputs: Any) -> AnytimeRows:
        return self.transform(inputs)

    def means(self) -> list[np.ndarray | None]:
        """E[f_i(x)] so far, per basis (None: nothing seen yet)."""
        with self._lock:
            return [None if m is None else m.copy() for m in self._means]

    def close(self) -> None:
        """Stop the workers (those running finish; nothing waits for them). Later calls compute
        every basis in the caller's thread, exactly and without a deadline."""
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _mean(self, i: int) -> np.ndarray | None:
        with self._lock:
            return self._means[i]

    def _run(self, i: int, basis: Basis, inputs: Any) -> np.ndarray:
        try:
            block = self._checked(i, basis(inputs), _count(inputs))
            with self._lock:
                mean, count = self._means[i], self._counts[i]
                if mean is not None and mean.shape != block.shape[1:]:
                    raise ModelStateInvalid(
                        f"Basis {self.names[i]!r} changed its output width from {mean.size} to {block.shape[1]}; "
                        "serve a version whose basis functions keep their shapes."
                    )
                total = count + block.shape[0]
                batch_mean = block.mean(axis=0) if block.shape[0] else np.zeros(block.shape[1])
                self._means[i] = batch_mean if mean is None else mean + (batch_mean - mean) * (block.shape[0] / total)
                self._counts[i] = total
            return block
        finally:
            with self._lock:
                self._in_flight[i] -= 1

    def _checked(self, i: int, output: Any, n: int) -> np.ndarray:
        block = np.asarray(output, dtype=np.float64)
        block = block[:, None] if block.ndim == 1 and block.size == n else block
        if block.ndim != 2 or block.shape[0] != n:
            raise ModelStateInvalid(
                f"Basis {self.names[i]!r} must answer one row per input, shape ({n},) or ({n}, width); "
                f"it answered shape {block.shape}."
            )
        if not np.isfinite(block).all():
            raise ModelStateInvalid(f"Basis {self.names[i]!r} answered non-finite outputs; nothing was served from it.")
        return block


def _rows(blocks: list[np.ndarray], approximated: np.ndarray, n: int) -> AnytimeRows:
    widths = np.cumsum([0] + [b.shape[1] for b in blocks])
    columns = tuple(slice(int(a), int(b)) for a, b in zip(widths[:-1], widths[1:]))
    return AnytimeRows(np.hstack(blocks) if blocks else np.empty((n, 0)), approximated, columns)


def _count(inputs: Any) -> int:
    """Rows of a batch: a matrix's first dimension (sparse matrices have no len), else its length."""
    shape = getattr(inputs, "shape", None)
    return int(shape[0]) if shape is not None else len(inputs)
