"""A deployed model version: its replicas, its share of the prediction cache, its running mean.

Queries go to the replica with the least work waiting. The running mean of the model's outputs is
what an application substitutes when this model misses a deadline (Clipper's anytime
predictions: E[f_i(x)] in place of f_i(x)).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np
import zmq.asyncio

from veloxserve import lsh
from veloxserve.clipper.batching import BatchingConfig, Query
from veloxserve.clipper.cache import Near, PredictionCache, input_digest
from veloxserve.clipper.replica import AttachedReplica, ContainerSpec, Replica
from veloxserve.config import ApproximateSettings
from veloxserve.errors import ContainerUnavailable, VeloxError

STARTUP_TIMEOUT_S = 60.0
log = logging.getLogger(__name__)


class RunningMean:
    """Mean of a model's numeric outputs so far (outputs of other kinds are not averaged)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None

    def update(self, output: Any) -> None:
        try:
            value = np.asarray(output, dtype=np.float64)
        except (TypeError, ValueError):
            return
        if self.mean is None or self.mean.shape != value.shape:
            self.mean, self.count = value.copy(), 1
            return
        self.count += 1
        self.mean += (value - self.mean) / self.count


class ModelDeployment:
    """One version of one model, served by `len(replicas)` container processes."""

    def __init__(
        self,
        name: str,
        version: str,
        spec: ContainerSpec,
        batching: BatchingConfig,
        cache: PredictionCache,
        context: zmq.asyncio.Context,
    ) -> None:
        self.name = name
        self.version = version
        self.spec = spec
        self.batching = batching
        self.cache = cache
        self.mean = RunningMean()
        self.replicas: list[Replica] = []
        self._context = context
        self.example: Any = None  # what new and restarted replicas are warmed with (use_example)
        self.input_shape: list[int] | str | None = None  # checked before a query is queued; None: unknown
        self.output_shape: list[int] | str | None = None
        self.approximate: ApproximateSettings | None = None  # LSH caching of numeric inputs (deploy option)

    async def scale(self, replicas: int) -> None:
        """Start or stop replicas until there are `replicas`; new ones are ready on return."""
        started: list[Replica] = []
        while len(self.replicas) + len(started) < replicas:
            replica = Replica(self.spec, self.batching, self._context)
            await replica.start()
            started.append(replica)
        try:
            await asyncio.gather(*(r.wait_ready(STARTUP_TIMEOUT_S) for r in started))
        except ContainerUnavailable:
            await asyncio.gather(*(r.stop() for r in started))
            raise
        for replica in started:
            replica.warmup = self.example
        if self.example is not None and started:
            try:  # a fresh container's first batch is slow: pay it here, not on a query's deadline
                await self.probe(self.example, started)
            except VeloxError as exc:
                log.warning("warming the new replicas of %s %s failed: %s", self.name, self.version, exc.message)
        self.replicas.extend(started)
        while len(self.replicas) > replicas:
            retired = self.replicas.pop()
            for query in retired.queue.drain():  # what waited there goes to the replicas that stay
                min(self.replicas, key=Replica.load).submit(query)
            await retired.stop()

    async def attach(self, containers: list[dict[str, Any]]) -> None:
        """Serve through containers another frontend owns (frontends.py): `containers` as the owner
        publishes them, [{"attach": address, "pid": pid}, ...]. This frontend batches its own queries."""
        for container in containers:
            replica = AttachedReplica(self.spec, self.batching, self._context, container["attach"], container["pid"])
            await replica.start()
            self.replicas.append(replica)

    def containers(self) -> list[dict[str, Any]]:
        """What another frontend attaches to: each ready replica's attach address and pid."""
        return [{"attach": r.hello["attach"], "pid": r.pid} for r in self.replicas if r.ready and "attach" in r.hello]

    async def stop(self, drain_seconds: float = 0.0) -> None:
        until = time.monotonic() + drain_seconds
        while time.monotonic() < until and any(r.load() for r in self.replicas):
            await asyncio.sleep(0.01)
        await asyncio.gather(*(r.stop() for r in self.replicas))
        self.replicas = []

    def use_example(self, value: Any) -> None:
        """Warm replicas started or restarted from now on with `value` (veloxserve/clipper/shapes.py)."""
        self.example = value
        for replica in self.replicas:
            replica.warmup = value

    async def probe(self, value: Any, replicas: list[Replica] | None = None) -> Any:
        """Run the model once on `value` in every replica (each container's first batch, off any
        query's deadline) and return one output. Neither the cache nor the running mean sees it.
        ContainerUnavailable (or DeadlineExceeded) if a replica fails or hangs on it."""
        replicas = self.replicas if replicas is None else replicas
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + self.spec.hang_timeout + STARTUP_TIMEOUT_S
        futures = [loop.create_future() for _ in replicas]
        for replica, future in zip(replicas, futures):
            replica.submit(Query(value, deadline, future))
        outputs = await asyncio.gather(*futures)
        return outputs[0] if outputs else None

    def predict(self, value: Any, deadline: float) -> asyncio.Future:
        """A future of this model's output for `value`, computed by `deadline` (monotonic s) or
        failed with DeadlineExceeded / ContainerUnavailable."""
        key = (self.name, self.version, input_digest(value))
        return self.cache.fetch(key, lambda: self._submit(value, deadline), self._near(value))

    def _near(self, value: Any) -> Near | None:
        """The query as one vector for approximate caching, when this version caches approximately,
        its input shape is known (so one hasher serves it: a client cannot make the server build a
        projection per dimension it invents) and the input is numeric and finite (an image is
        hashed as its flattened pixels)."""
        if self.approximate is None or not isinstance(self.input_shape, list):
            return None
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "iuf" or value.size == 0:
            return None
        if not lsh.fits(self.approximate, value.size) or not np.isfinite(value).all():
            return None
        return self.approximate, value.reshape(1, -1)

    def _submit(self, value: Any, deadline: float) -> asyncio.Future:
        """Queue the query on the least loaded replica; its future is the query's answer (no task
        per query: the replica resolves it, a callback feeds the running mean)."""
        future = asyncio.get_running_loop().create_future()
        if not self.replicas:
            future.set_exception(ContainerUnavailable(f"Model {self.name!r} has no replicas; scale it up."))
            return future
        replica = min(self.replicas, key=lambda r: (not r.ready, r.load()))
        future.add_done_callback(self._learn_mean)
        replica.submit(Query(value, deadline, future))
        return future

    def why_late(self) -> str:
        """Why a query got no answer by its deadline, as far as this deployment can tell."""
        if not any(r.ready for r in self.replicas):
            return "no answer by the deadline (no replica is ready: its containers are starting or restarting)"
        if not any(r.computed for r in self.replicas):
            return (
                "no answer by the deadline (its containers had not answered a query yet: the first batch of a "
                "fresh container is slow; deploy with a sample to warm them)"
            )
        return "no answer by the deadline"

    def _learn_mean(self, future: asyncio.Future) -> None:
        if not future.cancelled() and future.exception() is None:
            self.mean.update(future.result())

    def describe(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "version": self.version,
            "framework": self.spec.framework.value,
            "method": self.spec.method,
            "input_shape": self.input_shape,
            "output_shape": self.output_shape,
            "replicas": [_replica_info(r) for r in self.replicas],
            "objective_ms": self.batching.objective * 1e3,
            "delay_ms": self.batching.delay * 1e3,
            "adaptive": self.batching.adaptive,
            "mean_output": None if self.mean.mean is None else self.mean.mean.tolist(),
            "approximate": None if self.approximate is None else self.approximate.to_json(),
        }


def _replica_info(replica: Replica) -> dict[str, Any]:
    recent = list(replica.recent)
    latencies = np.array([latency for _, latency in recent]) if recent else np.zeros(0)
    return {
        "pid": replica.pid,
        "ready": replica.ready,
        "restarts": replica.restarts,
        "last_failure": replica.last_failure,
        "batch_size": replica.controller.size,
        "queue_length": len(replica.queue),
        "batches": replica.batches,
        "queries": replica.computed,
        "dropped": replica.queue.dropped,
        "last_batch": recent[-1][0] if recent else None,
        "batch_latency_ms": None
        if not recent
        else {"p50": float(np.percentile(latencies, 50) * 1e3), "p99": float(np.percentile(latencies, 99) * 1e3)},
    }
