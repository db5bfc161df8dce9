"""`Client` and `AsyncClient`: veloxserve over HTTP with the verbs of the in-process API.

    from veloxserve.client import Client
    with Client("http://127.0.0.1:8000") as vx:          # token: token= or $VELOXSERVE_TOKEN
        vx.predict("catify", user=1, item=2).score
        vx.observe("catify", 1, 2, 4.5, id="event-17")   # retried safely: it has an idempotency key

Both classes get every verb from `Verbs` (declared once, wire.verb) and differ only in how they
send: httpx.Client or httpx.AsyncClient. `transport=` is handed to httpx, so a test or a notebook
drives the ASGI app in-process: `AsyncClient(transport=httpx.ASGITransport(app))`; the sync
client takes an async transport too (it then runs it on a private event loop).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from typing import Any

import httpx

from veloxserve.backoff import RetryPolicy
from veloxserve.client.clipper_calls import ClipperVerbs
from veloxserve.client.pipeline_calls import PipelineVerbs
from veloxserve.client.velox_calls import VeloxVerbs
from veloxserve.client.wire import DEFAULT_RETRY, AsyncDriver, Call, SyncDriver, build_request

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TIMEOUT_S = 30.0
TOKEN_ENV = "VELOXSERVE_TOKEN"


class Verbs(
    VeloxVerbs,
    ClipperVerbs,
    PipelineVerbs,
):
    """Every group of verbs, one line each (a group: a module of calls ending in its Verbs class)."""


def _options(url: str, token: str | None, timeout: float, headers: Mapping[str, str] | None) -> dict[str, Any]:
    """What both httpx clients are built with. The token is read here, at construction: from
    the argument, else $VELOXSERVE_TOKEN; none sends no Authorization header."""
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    sent = {"user-agent": "veloxserve-client", **(headers or {})}
    if token:
        sent["authorization"] = f"Bearer {token}"
    return {"base_url": url.rstrip("/"), "headers": sent, "timeout": timeout}


class AsyncClient(Verbs, AsyncDriver):
    """`async with AsyncClient(url) as vx: await vx.predict(model, user, item)`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """`timeout`: seconds per request (long operations such as activate take their own);
        `retry`: how idempotent calls are repeated after a connection failure or a 502/503/504."""
        self.url, self.retry = url.rstrip("/"), retry
        self._http = httpx.AsyncClient(transport=transport, **_options(url, token, timeout, headers))

    async def _send(self, call: Call[Any]) -> httpx.Response:
        return await self._http.send(build_request(self._http, call))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Client(Verbs, SyncDriver):
    """`with Client(url) as vx: vx.predict(model, user, item)`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy = DEFAULT_RETRY,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """As AsyncClient's. An async transport (httpx.ASGITransport) is run on a private event
        loop, so a synchronous caller can drive an ASGI app in-process."""
        self.url, self.retry = url.rstrip("/"), retry
        options = _options(url, token, timeout, headers)
        self._loop: asyncio.Runner | None = None
        self._async: httpx.AsyncClient | None = None
        if isinstance(transport, httpx.AsyncBaseTransport):
            self._loop = asyncio.Runner()
            self._async = httpx.AsyncClient(transport=transport, **options)
        sync = transport if isinstance(transport, httpx.BaseTransport) else None
        self._http = httpx.Client(transport=sync, **options)

    def _send(self, call: Call[Any]) -> httpx.Response:
        if self._async is not None and self._loop is not None:
            return self._loop.run(self._async.send(build_request(self._async, call)))
        return self._http.send(build_request(self._http, call))

    def close(self) -> None:
        self._http.close()
        if self._async is not None and self._loop is not None:
            self._loop.run(self._async.aclose())
            self._loop.close()
            self._async = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
