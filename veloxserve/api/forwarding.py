"""Forwarding: what a reader worker of `serve --workers N` does not answer, it hands to worker 0.

Worker 0 is the one embedded server of the home (the log, the learning, the home lock); every
other worker accepts on the same port, answers predictions itself and forwards everything else
over a Unix socket to worker 0 (veloxserve/workers.py starts them). The forwarding path is where a previous attempt failed under load (most observes
answered 503), so it is built to queue rather than refuse:

- one pool of persistent HTTP/1.1 connections per reader (aiohttp over the Unix socket), so no
  request pays a connect, and requests beyond the pool's size wait for a free connection (the
  pool timeout is the queue's bound: backpressure, not an error);
- a connection refused or reset before the request was sent means worker 0 is not there
  (restarting after a kill, recovering its log): the request was not applied, so it is retried
  with backoff for up to `down_after` seconds before a 503 + Retry-After;
- a connection lost after the request was sent may have been applied: 503 that says so (an
  observation with an idempotency key `id` is safe to resend; a repeat is not learned twice).

Each answer says who served it: `x-veloxserve-worker` (the worker index) and `x-veloxserve-pid` of
the worker that took the request, and `x-veloxserve-forwarded: 1` when worker 0 computed it.

`ReaderApp` is a reader's whole app: predictions answered by the reader itself (serving/reader.py)
through the same VeloxApp as worker 0's, everything else forwarded.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import aiohttp
from yarl import URL

from veloxserve.api.app import VeloxApp, path_parts
from veloxserve.errors import RetryLater, VeloxError
from veloxserve.serving.reader import Readers
from veloxserve.serving.validation import MAX_BODY_BYTES
from veloxserve.storage.published_states import VersionMoved

ASGIApp = Any  # (scope, receive, send) -> awaitable, as starlette's
# Not passed on: what belongs to one connection, and what each side's server writes for itself.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"upgrade",
        b"content-length",
        b"host",
        b"date",
        b"server",
    }
)


_FORWARDED = (b"x-veloxserve-forwarded", b"1")  # answered by worker 0, through this worker


class WorkerZeroDown(RetryLater):
    """Worker 0 (the home's one learner) did not answer: nothing it did not acknowledge is lost."""


def worker_headers(index: int) -> list[tuple[bytes, bytes]]:
    return [(b"x-veloxserve-worker", str(index).encode()), (b"x-veloxserve-pid", str(os.getpid()).encode())]


def tag_worker(app: ASGIApp, index: int) -> ASGIApp:
    """`app` with every HTTP answer naming the worker that served it."""
    tags = worker_headers(index)
    names = {name for name, _ in tags}

    async def tagged(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await app(scope, receive, send)

        async def send_tagged(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message = {**message, "headers": kept + tags}
            await send(message)

        await app(scope, receive, send_tagged)

    return tagged


class Forwarder:
    """Requests answered by worker 0 over `socket_path` (every request a reader does not answer itself)."""

    def __init__(
        self, socket_path: str, *, connections: int = 64, queue_s: float = 30.0, down_after: float = 20.0
    ) -> None:
        self.socket_path = socket_path
        self.down_after = down_after
        self.connections = connections
        # connect: how long a request may queue for a connection (and connect); sock_read: retrains
        # and forgets are admin calls that answer when done.
        self._timeout = aiohttp.ClientTimeout(total=None, connect=queue_s, sock_connect=5.0, sock_read=300.0)
        self._session: aiohttp.ClientSession | None = None

    def _pool(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.UnixConnector(path=self.socket_path, limit=self.connections),
                timeout=self._timeout,
                auto_decompress=False,  # the body goes on as worker 0 wrote it
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            )
        return self._session

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(receive, send)
        if scope["type"] != "http":
            return  # no websockets are served
        body = bytearray()
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        await self.respond(scope, bytes(body), send)

    async def respond(self, scope: dict[str, Any], body: bytes, send: Any) -> None:
        """Send worker 0's answer to the request (or the 503 that says why there is none)."""
        try:
            status, headers, content = await self.forward(scope, body)
        except RetryLater as exc:
            status, content = exc.status, json.dumps(exc.to_dict()).encode()
            headers = [(b"content-type", b"application/json")] + [
                (k.encode(), v.encode()) for k, v in exc.headers().items()
            ]
        headers = headers + [_FORWARDED, (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def forward(self, scope: dict[str, Any], body: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Worker 0's answer to the request, retried while worker 0 is not listening."""
        path = scope.get("raw_path") or scope["path"].encode()
        if isinstance(path, str):
            path = path.encode()
        target = path.decode("latin-1") + (
            "?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""
        )
        url = URL("http://worker0" + target, encoded=True)  # as the client sent it: not quoted again
        headers = [
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"] if k.lower() not in _HOP_BY_HOP
        ]
        deadline = time.monotonic() + self.down_after
        pause = 0.05
        while True:
            try:
                async with self._pool().request(
                    scope["method"], url, headers=headers, data=body, allow_redirects=False
                ) as response:
                    content = await response.read()
                    kept = [(k, v) for k, v in response.raw_headers if k.lower() not in _HOP_BY_HOP]
                    return response.status, kept, content
            except aiohttp.ClientConnectorError as exc:  # never sent: safe to retry
                if time.monotonic() + pause > deadline:
                    raise WorkerZeroDown(
                        f"Worker 0 of this server (the process that learns and logs) has not answered for "
                        f"{self.down_after:.0f} s ({exc.__class__.__name__}); the supervisor restarts it. Nothing was "
                        "applied: retry after Retry-After seconds.",
                        retry_after=2,
                    ) from None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)
            except aiohttp.ConnectionTimeoutError:
                raise WorkerZeroDown(
                    "This worker's queue to worker 0 stayed full: the server is overloaded. Nothing was applied: "
                    "retry after Retry-After seconds."
                ) from None
            except (TimeoutError, aiohttp.ClientError) as exc:  # sent, then lost: perhaps applied
                raise WorkerZeroDown(
                    f"Worker 0 of this server stopped while answering ({exc.__class__.__name__}); the request may "
                    "or may not have been applied. Retry after Retry-After seconds: an observation with an id is "
                    "not learned twice."
                ) from None

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._session is not None:
                    await self._session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


class ReaderApp:
    """A reader worker's ASGI app. Predictions are answered by `local` (a VeloxApp over this
    worker's Readers: the same routing, auth, validation and errors as worker 0), and so are
    Clipper applications' predictions and feedback once this worker's frontend (an attacher of
    worker 0's containers, clipper/frontends.py) serves the application; a prediction
    the reader cannot answer at the served version (VersionMoved, 421) and every other request
    are answered by worker 0 through `forwarder`."""

    LOCAL = frozenset({"predict_one", "predict_batch", "top_k_get", "top_k_post"})
    LOCAL_CLIPPER = frozenset({"app_predict", "app_observe"})  # once this frontend has attached the app

    def __init__(self, local: VeloxApp, forwarder: Forwarder, readers: Readers) -> None:
        self.local, self.forwarder, self.readers = local, forwarder, readers

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await self._lifespan(scope, receive, send)
        if scope["type"] != "http":
            return
        model = self._local_model(scope)
        if model is None:
            return await self.forwarder(scope, receive, send)
        body = await _bounded_body(receive)
        answer: list[dict[str, Any]] = []

        async def replay() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def keep(message: dict[str, Any]) -> None:
            answer.append(message)

        await self.local(scope, replay, keep)
        if answer and answer[0]["status"] == VersionMoved.status:
            self.readers.refresh(model)  # load the served version; worker 0 answers meanwhile
            return await self.forwarder.respond(scope, body, send)
        for message in answer:
            await send(message)

    def _local_model(self, scope: dict[str, Any]) -> str | None:
        """The model of a prediction this worker answers itself, or None."""
        if scope["method"] not in ("GET", "POST"):
            return None
        try:
            route, args = self.local.router.match(scope["method"], scope["path"], path_parts(scope))
        except VeloxError:
            return None
        if route.handler in self.LOCAL_CLIPPER:  # this frontend's own batching, over worker 0's containers
            return args[0] if args[0] in self.local.clipper.runtime.apps else None
        return args[0] if route.handler in self.LOCAL else None

    async def _lifespan(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The forwarder's pool, and this worker's Clipper frontend (attached to worker 0's containers)."""

        async def started(message: dict[str, Any]) -> None:
            if message["type"] == "lifespan.startup.complete":
                await self.local.clipper.start()
            elif message["type"] == "lifespan.shutdown.complete":
                await self.local.clipper.close()
            await send(message)

        await self.forwarder(scope, receive, started)


async def _bounded_body(receive: Any) -> bytes:
    """The request's body, read up to one byte past MAX_BODY_BYTES (the app answers 413 for more)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        if size > MAX_BODY_BYTES or not message.get("more_body"):
            return b"".join(chunks)
