"""One replica of a deployed model: a container process, its ZeroMQ socket, and its batch queue.

The replica is the serving side's RPC client of its container. It binds a ROUTER socket on a free
loopback port, starts the container process, which dials in and says hello, then sends one batch
at a time. Everything is asyncio (zmq.asyncio), so the event loop never blocks on a container.
A container that exits is restarted; one that does not answer a batch within `hang_timeout` is
killed and restarted. Either way the batch in flight fails at once with ContainerUnavailable,
so its callers fall back (to running means or the default output) instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import zmq
import zmq.asyncio

from veloxserve.backoff import RetryPolicy
from veloxserve.clipper import protocol
from veloxserve.clipper.adapters import Framework
from veloxserve.clipper.batching import AIMDController, BatchingConfig, BatchQueue, Query
from veloxserve.errors import ContainerUnavailable

log = logging.getLogger(__name__)

# A container that keeps exiting before it says hello is restarted at once, then after 0.05, 0.1, …
# up to 2 s: the project's one backoff formula.
_RESTART_BACKOFF = RetryPolicy(retries=0, base=0.025, cap=2.0)


def _stopped() -> ContainerUnavailable:
    return ContainerUnavailable("The model replica was stopped (scaled down, removed or the server shut down).")


@dataclass(frozen=True)
class ContainerSpec:
    """What a container process loads."""

    framework: Framework
    model: Path
    method: str | None = None
    hang_timeout: float = 5.0  # seconds a batch may take before the container counts as hung

    def command(self, connect: str) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "veloxserve.cli",
            "container",
            "--framework",
            Framework(self.framework).value,
            "--model",
            str(self.model),
            "--connect",
            connect,
        ]
        return command + (["--method", self.method] if self.method else [])


class Replica:
    """A container process behind an adaptive batch queue. `start` and `stop` run on the loop."""

    _ids = itertools.count(1)

    def __init__(self, spec: ContainerSpec, batching: BatchingConfig, context: zmq.asyncio.Context) -> None:
        self.spec = spec
        self.batching = batching
        self.controller = AIMDController(batching)
        self.queue = BatchQueue()
        self._context = context
        self._socket: zmq.asyncio.Socket | None = None
        self._address = ""
        self._peer: bytes | None = None
        self._process: subprocess.Popen | None = None
        self._ready = asyncio.Event()
        self._exited_before_hello = asyncio.Event()
        self._crash_loop = 0  # restarts since a container last said hello: backs off restarts
        self._pending: dict[int, asyncio.Future] = {}
        self._batch: list[Query] = []  # the batch being computed
        self._tasks: list[asyncio.Task] = []
        self._stopping = False
        self.restarts = 0
        self.batches = 0
        self.computed = 0
        self.recent: deque[tuple[int, float]] = deque(maxlen=256)  # (batch size, latency s)
        self.last_failure: str | None = None
        self.hello: dict = {}  # the container's last hello: its pid and the input shape its model declares
        self.warmup: Any = None  # an example input a restarted container computes first (shapes.py)

    # ---- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        port = self._socket.bind_to_random_port("tcp://127.0.0.1")
        self._address = f"tcp://127.0.0.1:{port}"
        self._spawn()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(coro) for coro in (self._receive(), self._dispatch(), self._watch())]

    async def wait_ready(self, timeout: float) -> None:
        """Wait for the first container's hello; fail at once if it exits first (it cannot load)."""
        waiters = [asyncio.ensure_future(e.wait()) for e in (self._ready, self._exited_before_hello)]
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for waiter in waiters:
            waiter.cancel()
        if not self._ready.is_set():
            what = self.last_failure or f"did not say hello within {timeout} s"
            raise ContainerUnavailable(
                f"The {self.spec.framework.value} container for {self.spec.model.name} {what}; "
                "see the server's log for the container's error."
            )

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._kill()
        self._fail_pending(_stopped())
        self.queue.fail_all(_stopped())
        if self._socket is not None:
            self._socket.close(0)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def submit(self, query: Query) -> None:
        self.queue.put(query)

    def load(self) -> int:
        """Queries waiting or being computed: what the deployment balances on."""
        return len(self.queue) + len(self._batch)

    # ---- the container process -----------------------------------------------------------
    def _spawn(self) -> None:
        self._ready.clear()
        self._peer = None
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        self._process = subprocess.Popen(
            self.spec.command(self._address), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env
        )

    def _kill(self) -> None:
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def _restart(self, reason: str) -> None:
        log.warning("restarting the container of %s: %s", self.spec.model, reason)
        self.last_failure = reason
        self.restarts += 1
        self._kill()
        self._fail_pending(ContainerUnavailable(f"The model container {reason}; it is being restarted."))
        self._spawn()

    def _fail_pending(self, error: Exception) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def _watch(self) -> None:
        """Restart a container that exited (crash, kill -9, out of memory), backing off while it
        keeps exiting before it says hello. A first container that never said hello is not
        restarted: the model cannot load, and the deployment fails with that reason."""
        while not self._stopping:
            await asyncio.sleep(0.05)
            code = self._process.poll() if self._process is not None else None
            if code is None or self._stopping:
                continue
            if self.batches == 0 and self.restarts == 0 and not self._ready.is_set():
                self.last_failure = f"exited with code {code} before it said hello"
                self._exited_before_hello.set()
                return
            await asyncio.sleep(_RESTART_BACKOFF.delay(self._crash_loop) if self._crash_loop else 0.0)
            self._crash_loop += 0 if self._ready.is_set() else 1
            self._restart(f"exited with code {code}")

    # ---- RPC -------------------------------------------------------------------------------
    async def _receive(self) -> None:
        assert self._socket is not None
        while True:
            frames = await self._socket.recv_multipart(copy=True)
            peer, kind = frames[0], frames[1]
            if kind == protocol.HELLO:
                hello = orjson.loads(frames[2])
                if self._process is not None and hello.get("pid") == self._process.pid:
                    self._peer = peer
                    self.hello = hello
                    self._crash_loop = 0
                    if self.restarts and self.warmup is not None:
                        self._warm()
                    self._ready.set()
                continue
            if peer == self._peer:  # else a late answer from a container that was replaced
                self._settle(frames[1:])

    def _settle(self, frames: list[bytes]) -> None:
        """Answer the batch a reply [ok|err, request id, *outputs|message] is for."""
        kind = frames[0]
        future = self._pending.pop(protocol.unpack_id(frames[1]), None)
        if future is None or future.done():
            return
        if kind == protocol.OK:
            future.set_result(protocol.decode_batch(frames[2:5]))
        else:
            future.set_exception(ContainerUnavailable(f"The model failed on the batch: {frames[2].decode()}."))

    async def _send(self, frames: list[bytes]) -> None:
        assert self._socket is not None
        await self._socket.send_multipart([self._peer, *frames])

    def _warm(self) -> None:
        """Queue the example first, so a restarted container's slow first batch is not a query's."""
        future = asyncio.get_running_loop().create_future()
        future.add_done_callback(lambda done: done.cancelled() or done.exception())  # failures are only logged
        deadline = time.monotonic() + self.spec.hang_timeout + 60.0
        self.queue.put_first(Query(self.warmup, deadline, future))

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._ready.wait()
            batch = await self.queue.take(self.controller.size, self.batching.delay)
            if not batch:
                continue
            await self._ready.wait()
            request = next(self._ids)
            reply = self._pending[request] = loop.create_future()
            started = time.perf_counter()
            self._batch = batch
            try:
                frames = protocol.encode_batch(protocol.stack_inputs([q.input for q in batch]))
                await self._send([protocol.PREDICT, protocol.pack_id(request), *frames])
                async with asyncio.timeout(self.spec.hang_timeout):  # not wait_for: see BatchQueue.take
                    outputs = await reply
                results = protocol.split_outputs(outputs, len(batch))
            except asyncio.CancelledError:  # stopped: the batch in flight is answered, not abandoned
                _fail(batch, _stopped())
                raise
            except TimeoutError:
                self._pending.pop(request, None)
                self._restart(f"did not answer a batch of {len(batch)} within {self.spec.hang_timeout} s (hung)")
                _fail(
                    batch,
                    ContainerUnavailable(
                        f"The model container hung on this batch for {self.spec.hang_timeout} s; it is being restarted."
                    ),
                )
                continue
            except Exception as exc:  # a failed batch (model error, bad outputs) fails its queries only
                self._pending.pop(request, None)
                _fail(batch, exc if isinstance(exc, ContainerUnavailable) else ContainerUnavailable(str(exc)))
                continue
            finally:
                self._batch = []
            latency = time.perf_counter() - started
            self.controller.update(latency, len(batch))
            self.recent.append((len(batch), latency))
            self.batches += 1
            self.computed += len(batch)
            for query, output in zip(batch, results):
                if not query.future.done():
                    query.future.set_result(output)


def _fail(batch: list[Query], error: Exception) -> None:
    for query in batch:
        if not query.future.done():
            query.future.set_exception(error)


class AttachedReplica(Replica):
    """Another frontend's view of a container the owner frontend started (frontends.py): its own
    batch queue and AIMD controller over a DEALER connected to the container's attach socket.
    It starts and restarts nothing: the owner does, and republishes the container's address; a
    batch with no answer within `hang_timeout` fails (the container is gone) and the next one
    is tried."""

    def __init__(
        self, spec: ContainerSpec, batching: BatchingConfig, context: zmq.asyncio.Context, address: str, pid: int
    ) -> None:
        super().__init__(spec, batching, context)
        self._address = address
        self.hello = {"pid": pid, "attach": address}

    async def start(self) -> None:
        self._socket = self._context.socket(zmq.DEALER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(self._address)
        self._ready.set()  # ZeroMQ queues what is sent until the connection is up
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(coro) for coro in (self._receive(), self._dispatch())]

    @property
    def pid(self) -> int | None:
        return self.hello["pid"]

    def _kill(self) -> None:
        return None  # the owner's container, not this frontend's

    def _restart(self, reason: str) -> None:
        self.last_failure = reason
        self._fail_pending(ContainerUnavailable(f"The model container {reason}; its owner frontend restarts it."))

    async def _receive(self) -> None:
        assert self._socket is not None
        while True:
            self._settle(await self._socket.recv_multipart(copy=True))

    async def _send(self, frames: list[bytes]) -> None:
        assert self._socket is not None
        await self._socket.send_multipart(frames)
