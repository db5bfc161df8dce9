"""StoreCalls: Redis-bound calls off the event loop, each answered by the deadline."""

from __future__ import annotations

import asyncio
import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.errors import InvalidInput, StoreUnavailable
from veloxserve.serving.redis_watch import _POOL_THREADS, StoreCalls
from veloxserve.storage.redis_client import RedisSettings


def test_a_call_that_never_returns_answers_503_at_the_deadline_while_the_loop_goes_on() -> None:
    calls = StoreCalls(RedisSettings(deadline=0.3))
    release = threading.Event()
    ticks = []

    async def main() -> None:
        async def ticker() -> None:
            while True:
                ticks.append(len(ticks))
                await asyncio.sleep(0.01)

        tick = asyncio.create_task(ticker())
        # A hung Redis blocks every worker thread, not the loop; the calls queued behind them are
        # answered at the deadline too (they never run).
        hung = [calls.run(release.wait) for _ in range(_POOL_THREADS)] + [calls.run(lambda: "queued")]
        outcomes = await asyncio.gather(*hung, return_exceptions=True)
        tick.cancel()
        assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
        assert "did not answer within 0.3 s" in outcomes[0].message and outcomes[0].headers()["retry-after"]
        assert len(ticks) > 2  # the loop ran other work while the call hung (on blocking code: 1 tick)

    try:
        asyncio.run(main())
    finally:
        release.set()
        calls.close()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.one_of(st.integers(), st.none()), min_size=1, max_size=40))
def test_concurrent_calls_each_get_their_own_result_or_error(values: list[int | None]) -> None:
    calls = StoreCalls(RedisSettings(deadline=30.0))

    def work(value: int | None) -> int:
        if value is None:
            raise InvalidInput("no value", field="value")
        return value * 2

    async def main() -> list:
        return await asyncio.gather(*(calls.run(work, v) for v in values), return_exceptions=True)

    try:
        got = asyncio.run(main())
    finally:
        calls.close()
    for value, outcome in zip(values, got):
        if value is None:
            assert isinstance(outcome, InvalidInput)
        else:
            assert outcome == value * 2


def test_without_a_shared_store_calls_run_inline_on_the_loop_thread() -> None:
    calls = StoreCalls(None)

    async def main() -> tuple[int, int]:
        return await calls.run(threading.get_ident), threading.get_ident()

    ran_on, loop_thread = asyncio.run(main())
    assert ran_on == loop_thread
