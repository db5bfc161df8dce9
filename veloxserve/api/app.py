"""The HTTP app: a raw ASGI callable that routes (routes.py), checks, calls a handler and renders.

Why raw ASGI: bench/bench_http.py measured the hello-world floor of the candidate stacks on this
2-core machine (uvicorn + httptools + uvloop, 32 connections): a raw ASGI callable ~20k req/s,
Starlette ~9-12k, Litestar ~7k. The fast-serving target of 15k predictions/s rules out the
frameworks, and a prediction API has a handful of fixed routes, so the router is a dict.

The app builds no backend: the token store and the Clipper runtime are given to it by the
factory (factory.py), the one place that chooses them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

import orjson

from veloxserve.api.auth import AuthConfig, Guard
from veloxserve.api.clipper_routes import ClipperRoutes
from veloxserve.api.dashboard import PageHandlers
from veloxserve.api.handlers import Accepted, VeloxHandlers
from veloxserve.api.metrics import CONTENT_TYPE, Metrics
from veloxserve.api.openapi import body_type
from veloxserve.api.pipeline_routes import PipelineRoutes
from veloxserve.api.requests import BodyDecoder, convert, json_decoder
from veloxserve.api.routes import ROUTES, Route, Router
from veloxserve.api.static import Asset
from veloxserve.errors import NotFound, PayloadTooLarge, VeloxError, invalid_parameter
from veloxserve.serving.admission import Admission, AdmissionConfig
from veloxserve.serving.redis_watch import StoreCalls
from veloxserve.serving.validation import MAX_BODY_BYTES
from veloxserve.serving.velox import Velox

__all__ = ["MAX_BODY_BYTES", "VeloxApp"]

if TYPE_CHECKING:
    from veloxserve.clipper.runtime import ClipperRuntime
    from veloxserve.pipelines.runtime import PipelineRuntime
    from veloxserve.storage.tokens import TokenStore

log = logging.getLogger(__name__)
_JSON_HEADERS = [(b"content-type", b"application/json")]
_TEXT_HEADERS = [(b"content-type", CONTENT_TYPE)]


class VeloxApp:
    """ASGI app over a Velox. The caller owns `velox` (and closes it); the app starts and closes
    the Clipper runtime with the server's lifespan."""

    def __init__(
        self,
        velox: Velox,
        tokens: TokenStore,
        clipper: ClipperRuntime,
        *,
        auth: AuthConfig | None = None,
        admission: AdmissionConfig | None = None,
        pipelines: PipelineRuntime | None = None,
    ) -> None:
        self.velox = velox
        self.guard = Guard(tokens, auth)
        self.admission = Admission(admission)
        # Redis-bound work: off the loop, within a deadline; predictions from memory when held
        self.store_calls = StoreCalls(velox.redis_settings, velox.redis_cache)
        self._loop: asyncio.AbstractEventLoop | None = None
        self.metrics = Metrics(velox)
        self.clipper = ClipperRoutes(clipper)
        self.metrics.registry.register(self.clipper.collector())
        self.pipelines = None if pipelines is None else PipelineRoutes(pipelines, self.clipper.start)
        if self.pipelines is not None:
            self.metrics.registry.register(self.pipelines.collector())
        max_batch = velox.config.max_batch  # the limits of the running configuration, in the types and the schema
        self.handlers = VeloxHandlers(velox, self.admission, self.metrics, self.store_calls)
        self.pages = PageHandlers(self.handlers, self.clipper, self.metrics)
        self.router = Router(ROUTES)
        self._handler: dict[Route, Callable[..., Any]] = {}
        self._decode: dict[Route, Callable[[bytes], Any]] = {}
        for route in ROUTES:
            owner = (
                self.clipper
                if route.clipper
                else self.pipelines
                if route.pipeline
                else self.pages
                if route.page
                else self.handlers
            )
            if owner is None:  # an app built without a pipeline runtime: those routes answer 404
                self._handler[route] = _no_pipelines
                continue
            self._handler[route] = self._metrics if route.handler == "metrics" else getattr(owner, route.handler)
            kind = body_type(route, max_batch)
            if kind is not None:
                self._decode[route] = BodyDecoder(kind, route.where).decode
            elif route.body is not None:  # observe: one object or a batch, checked by the handler and Velox
                self._decode[route] = json_decoder(route.where)

    async def _metrics(self) -> bytes:
        return self.metrics.render()

    # ---- ASGI ------------------------------------------------------------------------------
    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        head = scope["method"] == "HEAD"  # HEAD is GET without the body (RFC 9110 9.3.2), on every GET route
        method = "GET" if head else scope["method"]
        parts, path = path_parts(scope), scope["path"]
        headers = _JSON_HEADERS
        payload: Any
        try:
            route, args = self.router.match(method, path, parts)
        except VeloxError as exc:
            label, status, payload = self.router.label(parts), exc.status, exc.to_dict()
            headers = _with(headers, exc)
        else:
            label = route.label
            try:
                self.guard.check(route, args, path, scope["headers"])
                payload = await self._call(route, args, scope, receive, started)
                status = route.status if isinstance(payload, Accepted) else 200
            except VeloxError as exc:
                status, payload = exc.status, exc.to_dict()
                headers = _with(headers, exc)
            except Exception:  # the server never dies on a request
                log.exception("unhandled error on %s %s", scope.get("method"), path)
                status, payload = (
                    500,
                    {"error": "InternalError", "message": "The server failed on this request; see its log."},
                )
        if isinstance(payload, Asset):  # a page or a file it loads, in its own content type
            body, headers = payload.body, payload.headers()
        elif isinstance(payload, bytes):
            body, headers = payload, _TEXT_HEADERS
        else:
            body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = headers + [(b"content-length", b"%d" % len(body))]  # a HEAD answer carries the GET's
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})
        if label != "/metrics":  # a scrape counted in what it scrapes would change between GET and HEAD
            self.metrics.record(label, status, time.perf_counter() - started)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.clipper.start()
                if self.pipelines is not None:
                    await self.pipelines.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.pipelines is not None:
                    await self.pipelines.close()
                await self.clipper.close()
                self.store_calls.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _call(
        self, route: Route, args: list[Any], scope: dict[str, Any], receive: Callable, started: float
    ) -> Any:
        """Decode the route's query and body into its types, then run its handler (admitted when
        the route is on the data plane). A request that fails here has changed nothing."""
        where = route.where
        if route.model_scoped:
            self.velox.server(args[0])  # an unknown model is a 404 (not a 400 for a body, nor a place in a queue)
        if route.query is not None:
            raw_query = scope["query_string"]
            query = dict(parse_qsl(raw_query.decode("latin-1"))) if raw_query else {}
            args.append(convert(query, route.query, where, source="query"))
        decode = self._decode.get(route)
        if decode is not None:
            raw = await self._read(scope, receive, where)
            if raw:
                args.append(decode(raw))
            elif route.body_required and route.body != "observe":
                raise invalid_parameter("body", where, "a JSON object", "no body")
            else:
                args.append(None)  # an optional body takes its defaults; observe says what is missing
        if route.clipper:
            await self.clipper.start()
        elif route.pipeline and self.pipelines is not None:
            await self.pipelines.start()
        handler = self._handler[route]
        if not route.admitted:
            return await handler(*args)
        # The request is complete only now: time spent waiting for a slow client's bytes is neither
        # a wait in the loop's queue nor service, so both are measured from here (see admission.py).
        ready = started if decode is None else time.perf_counter()
        service = self.admission.admit(args[0], route.label, self._waited(ready), _deadline_s(scope["headers"]))
        try:
            result = await handler(*args)
        except BaseException:
            self.admission.release(service, None)
            raise
        now = time.perf_counter()
        self.admission.release(service, now - ready, now)
        return result

    def _waited(self, started: float) -> float:
        """An upper bound of how long this request, complete at `started`, waited for the event
        loop (see admission.py)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # first request, or a new loop (in-process test clients)
            self._loop = loop
            self.admission.clock.start(loop)
        return started - self.admission.clock.earlier

    async def _read(self, scope: dict[str, Any], receive: Callable, where: str) -> bytes:
        """The body's bytes. Over MAX_BODY_BYTES is a 413, decided from Content-Length before a
        byte is read, or, for a chunked body, as soon as the bytes read pass the limit."""
        declared = _content_length(scope["headers"])
        if declared is not None and declared > MAX_BODY_BYTES:
            raise _too_large(where, f"{declared} bytes (Content-Length)")
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise _too_large(where, f"more than that ({size} bytes read so far)")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


async def _no_pipelines(*args: Any) -> Any:
    raise NotFound("This server has no pipeline runtime; see /openapi.json for the API.")


def _with(headers: list[tuple[bytes, bytes]], exc: VeloxError) -> list[tuple[bytes, bytes]]:
    extra = exc.headers()
    return headers + [(k.encode(), v.encode()) for k, v in extra.items()] if extra else headers


def _deadline_s(headers: list[tuple[bytes, bytes]]) -> float | None:
    """The client's X-Deadline-Ms budget, in seconds."""
    for name, value in headers:
        if name == b"x-deadline-ms":
            try:
                ms = float(value)
            except ValueError:
                ms = -1.0
            if not 0 < ms < 1e9:
                raise invalid_parameter(
                    "X-Deadline-Ms", "the request headers", "a positive number of milliseconds", value.decode("latin-1")
                )
            return ms / 1000.0
    return None


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the HTTP server rejects these first; a lenient one gets a clear 400
                raise invalid_parameter(
                    "Content-Length", "the request headers", "a number of bytes", value.decode("latin-1")
                ) from None
    return None


def _too_large(where: str, got: str) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The request body of {where} must be at most {MAX_BODY_BYTES} bytes. Got {got}; "
        "split the batch into smaller requests.",
        field="body",
    )


def path_parts(scope: dict[str, Any]) -> list[str]:
    """The path's segments, each percent-decoded once: `/users/a%2Fb` names the user "a/b" on every
    route (the ASGI `path` is decoded already, so a `/` inside an id would split it)."""
    raw = scope.get("raw_path")
    if not raw or b"%" not in raw:
        return scope["path"].split("/")
    raw = raw.split(b"?", 1)[0]  # some clients (httpx's ASGI transport) include the query string
    return [unquote(segment) for segment in raw.decode("latin-1").split("/")]
