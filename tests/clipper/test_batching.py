"""AIMD batch sizing, delayed batching and deadline dropping, with real container processes."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
import zmq.asyncio
from hypothesis import given
from hypothesis import strategies as st

from tests.clipper.conftest import write_callable
from veloxserve.clipper.adapters import Framework
from veloxserve.clipper.batching import AIMDController, BatchingConfig, BatchQueue, Query
from veloxserve.clipper.replica import ContainerSpec, Replica
from veloxserve.errors import DeadlineExceeded


@given(st.lists(st.tuples(st.floats(0, 0.1), st.integers(1, 300)), max_size=60), st.integers(1, 200))
def test_aimd_adds_two_under_ninety_percent_holds_near_and_cuts_over_the_objective(steps, initial) -> None:
    config = BatchingConfig(objective=0.02, initial_size=min(initial, 256), max_size=256)
    controller = AIMDController(config)
    size = controller.size
    for latency, batch in steps:
        before = size
        if latency > 0.02:
            size = max(1, int(np.floor(before * 0.9)))
        elif latency < 0.9 * 0.02 and batch >= before:  # the same float the controller compares with
            size = min(256, before + 2)
        assert controller.update(latency, batch) == size


def test_aimd_without_adaptation_keeps_its_size() -> None:
    controller = AIMDController(BatchingConfig(initial_size=1, adaptive=False))
    assert [controller.update(latency, 1) for latency in (0.0, 1.0, 0.0)] == [1, 1, 1]


def _run(coroutine):
    return asyncio.run(coroutine)


def _slow_per_item(base: float, per_item: float):
    def predict(batch):
        import time

        import numpy as np

        time.sleep(base + per_item * len(batch))
        return np.full(len(batch), float(len(batch)))

    return predict


async def _replica(tmp_path: Path, function, batching: BatchingConfig, hang_timeout: float = 10.0) -> Replica:
    model = write_callable(tmp_path / "model.pkl", function)
    spec = ContainerSpec(Framework.CALLABLE, model, hang_timeout=hang_timeout)
    replica = Replica(spec, batching, zmq.asyncio.Context.instance())
    await replica.start()
    await replica.wait_ready(60)
    return replica


async def _flood(replica: Replica, n: int, seconds: float = 60.0) -> list:
    loop = asyncio.get_running_loop()
    futures = []
    for i in range(n):
        future = loop.create_future()
        replica.submit(Query(np.array([float(i)]), time.monotonic() + seconds, future))
        futures.append(future)
    return await asyncio.gather(*futures)


def test_batch_size_grows_under_load_and_stays_near_the_objective(tmp_path: Path) -> None:
    async def scenario():
        # 1 ms + 1 ms per query: batches of up to ~17 meet the 20 ms objective, 25 never do.
        replica = await _replica(tmp_path, _slow_per_item(0.001, 0.001), BatchingConfig(objective=0.02))
        try:
            outputs = await _flood(replica, 400)
            return outputs, list(replica.recent), replica.controller.size
        finally:
            await replica.stop()

    outputs, recent, final = _run(scenario())
    sizes = [size for size, _ in recent]
    assert sum(sizes) == 400 and len(outputs) == 400  # every query answered exactly once
    assert max(sizes) >= 8, sizes  # additive increase took it well above 1
    assert final <= 25, final  # and multiplicative decrease kept it where 25 ms batches are cut


def test_batch_size_shrinks_when_batches_are_over_the_objective(tmp_path: Path) -> None:
    async def scenario():
        config = BatchingConfig(objective=0.02, initial_size=64)
        replica = await _replica(tmp_path, _slow_per_item(0.001, 0.001), config)
        try:
            await _flood(replica, 600)
            return [size for size, _ in replica.recent], replica.controller.size
        finally:
            await replica.stop()

    sizes, final = _run(scenario())
    assert sizes[0] == 64  # the first batch was over the objective (65 ms)...
    assert final < 30 and min(sizes) < 30, sizes  # ...and the size was cut until batches fit


def test_delayed_batching_lets_a_batch_fill(tmp_path: Path) -> None:
    async def scenario(delay: float):
        replica = await _replica(
            tmp_path, _slow_per_item(0.0, 0.0), BatchingConfig(objective=1.0, delay=delay, initial_size=8)
        )
        try:
            loop = asyncio.get_running_loop()
            futures = []
            for i in range(6):
                future = loop.create_future()
                replica.submit(Query(np.array([float(i)]), time.monotonic() + 30, future))
                futures.append(future)
                await asyncio.sleep(0.01)
            await asyncio.gather(*futures)
            return [size for size, _ in replica.recent]
        finally:
            await replica.stop()

    assert max(_run(scenario(0.3))) >= 4  # queries 10 ms apart waited for each other
    assert max(_run(scenario(0.0))) <= 2  # without a delay each left as soon as it came


def test_a_query_past_its_deadline_is_dropped_with_a_clear_error_not_computed(tmp_path: Path) -> None:
    async def scenario():
        replica = await _replica(tmp_path, _slow_per_item(0.3, 0.0), BatchingConfig(objective=0.02))
        try:
            loop = asyncio.get_running_loop()
            first, late = loop.create_future(), loop.create_future()
            replica.submit(Query(np.array([1.0]), time.monotonic() + 30, first))
            await asyncio.sleep(0.05)  # the first batch is now being computed for 300 ms
            replica.submit(Query(np.array([2.0]), time.monotonic() + 0.05, late))
            with pytest.raises(DeadlineExceeded, match="deadline passed"):
                await late
            assert await first == 1.0
            return replica.computed, replica.queue.dropped
        finally:
            await replica.stop()

    assert _run(scenario()) == (1, 1)


def test_queue_take_skips_queries_whose_caller_gave_up() -> None:
    async def scenario():
        queue = BatchQueue()
        loop = asyncio.get_running_loop()
        gone, kept = loop.create_future(), loop.create_future()
        gone.cancel()
        queue.put(Query("a", time.monotonic() + 10, gone))
        queue.put(Query("b", time.monotonic() + 10, kept))
        return [q.input for q in await queue.take(5, 0.0)]

    assert _run(scenario()) == ["b"]


@pytest.mark.parametrize("ticks", [0, 1, 2, 3])
def test_a_take_cancelled_as_a_query_arrives_is_cancelled_not_left_waiting(ticks: int) -> None:
    """Replica.stop cancels the dispatcher and awaits it: a cancel that came just as a lingering
    take was woken by a new query was swallowed (asyncio.wait_for on 3.11) and stop hung."""

    async def scenario() -> str:
        queue = BatchQueue()
        loop = asyncio.get_running_loop()
        queue.put(Query("a", time.monotonic() + 60, loop.create_future()))
        taker = asyncio.ensure_future(queue.take(5, 30.0))  # one query: it lingers for more
        for _ in range(3):
            await asyncio.sleep(0)
        queue.put(Query("b", time.monotonic() + 60, loop.create_future()))  # the linger ends...
        for _ in range(ticks):
            await asyncio.sleep(0)
        taker.cancel()  # ...as the replica is stopped
        done, _ = await asyncio.wait([taker], timeout=10)  # a generous bound that only stops a hang
        return "cancelled" if taker in done and taker.cancelled() else "still waiting" if not done else "returned"

    assert _run(scenario()) == "cancelled"
