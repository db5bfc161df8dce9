"""The Starlette app: parse, call Velox, render. No serving logic lives here.

Starlette on uvicorn (httptools + uvloop) with orjson: bench/http_floor.py measured the
hello-world floor of the candidate stacks on this machine; see docs/http.md.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from veloxserve.api.openapi import openapi_schema
from veloxserve.errors import InvalidInput, VeloxError, invalid_parameter
from veloxserve.serving.durability import DurableWaiter
from veloxserve.serving.velox import DURABLE_TIMEOUT_S, Velox

log = logging.getLogger(__name__)
MAX_BODY_BYTES = 8 << 20


class JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def _error(status: int, body: dict[str, Any]) -> JSON:
    return JSON(body, status_code=status)


async def _json_body(request: Request, where: str) -> dict[str, Any]:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise InvalidInput(f"The request body of {where} must be at most {MAX_BODY_BYTES} bytes; split the batch.")
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise InvalidInput(f"The request body of {where} must be at most {MAX_BODY_BYTES} bytes; split the batch.")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"The request body of {where} must be a JSON object: {exc}.") from None
    if not isinstance(body, dict):
        raise invalid_parameter("body", where, "a JSON object", type(body).__name__)
    return body


def _query(request: Request, field: str, where: str) -> str:
    value = request.query_params.get(field)
    if value is None or value == "":
        raise invalid_parameter(field, where, "present in the query string", value)
    return value


def _query_int(request: Request, field: str, where: str) -> int:
    value = _query(request, field, where)
    try:
        return int(value)
    except ValueError:
        raise invalid_parameter(field, where, "an integer", value) from None


def _as_bool(value: Any, field: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "false", "0"):
        return value.lower() in ("true", "1")
    raise invalid_parameter(field, where, "true or false", value)


def _list_field(body: dict[str, Any], field: str, where: str) -> list[Any]:
    value = body.get(field)
    if not isinstance(value, list):
        raise invalid_parameter(field, where, "a JSON list", value)
    return value


def _object(entry: Any, keys: tuple[str, ...], field: str, where: str) -> tuple[Any, ...]:
    if not isinstance(entry, dict) or any(key not in entry for key in keys):
        raise invalid_parameter(field, where, "an object with " + ", ".join(repr(k) for k in keys), entry)
    return tuple(entry[key] for key in keys)


def create_app(velox: Velox) -> Starlette:
    """An ASGI app serving `velox`. The caller owns `velox` and closes it."""

    async def healthz(request: Request) -> JSON:
        return JSON({"status": "ok", "models": velox.model_names()})

    async def list_models(request: Request) -> JSON:
        return JSON({"models": [velox.describe(name) for name in velox.model_names()]})

    async def show_model(request: Request) -> JSON:
        return JSON(velox.describe(request.path_params["name"]))

    async def predict_one(request: Request) -> JSON:
        server = velox.server(request.path_params["name"])
        user, item = _query(request, "user", "predict"), _query(request, "item", "predict")
        score = server.predict(user, item)
        return JSON({"user": user, "item": item, "score": score, "model_version": server.version_id})

    async def predict_batch(request: Request) -> JSON:
        server = velox.server(request.path_params["name"])
        body = await _json_body(request, "predict")
        queries = _list_field(body, "queries", "predict")
        pairs = [_object(q, ("user", "item"), f"queries[{i}]", "predict") for i, q in enumerate(queries)]
        return JSON({"scores": server.predict_many(pairs), "model_version": server.version_id})

    def _top_k_response(server: Any, user: Any, k: Any, candidates: Any, exclude_seen: bool) -> JSON:
        ranked = server.top_k(user, k, candidates=candidates, exclude_seen=exclude_seen)
        return JSON({
            "user": user,
            "items": [{"item": item, "score": score} for item, score in ranked],
            "model_version": server.version_id,
        })

    async def top_k_get(request: Request) -> JSON:
        server = velox.server(request.path_params["name"])
        user, k = _query(request, "user", "top_k"), _query_int(request, "k", "top_k")
        exclude = _as_bool(request.query_params.get("exclude_seen", "false"), "exclude_seen", "top_k")
        return _top_k_response(server, user, k, None, exclude)

    async def top_k_post(request: Request) -> JSON:
        server = velox.server(request.path_params["name"])
        body = await _json_body(request, "top_k")
        if "user" not in body or "k" not in body:
            raise invalid_parameter("user" if "user" not in body else "k", "top_k", "present in the body", None)
        candidates = body.get("candidates")
        if candidates is not None and not isinstance(candidates, list):
            raise invalid_parameter("candidates", "top_k", "a JSON list of item ids", candidates)
        exclude = _as_bool(body.get("exclude_seen", False), "exclude_seen", "top_k")
        return _top_k_response(server, body["user"], body["k"], candidates, exclude)

    async def observe(request: Request) -> JSON:
        name = request.path_params["name"]
        velox.server(name)
        body = await _json_body(request, "observe")
        if "observations" in body:
            entries = _list_field(body, "observations", "observe")
            rows = [_object(o, ("user", "item", "score"), f"observations[{i}]", "observe") for i, o in enumerate(entries)]
        else:
            rows = [_object(body, ("user", "item", "score"), "body", "observe")]
        lsn = velox.submit(name, rows)
        await _waiter(name).wait(lsn, DURABLE_TIMEOUT_S)
        return JSON({"observed": len(rows), "lsn": lsn, "model_version": velox.server(name).version_id})

    waiters: dict[str, DurableWaiter] = {}

    def _waiter(model: str) -> DurableWaiter:
        waiter = waiters.get(model)
        if waiter is None:
            waiter = waiters[model] = DurableWaiter(velox.observation_log(model), asyncio.get_running_loop())
        return waiter

    async def openapi(request: Request) -> JSON:
        return JSON(openapi_schema())

    async def domain_error(request: Request, exc: Exception) -> JSON:
        assert isinstance(exc, VeloxError)
        return _error(exc.status, exc.to_dict())

    async def http_error(request: Request, exc: Exception) -> JSON:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, {"error": "HTTPError", "message": exc.detail})

    async def unexpected_error(request: Request, exc: Exception) -> JSON:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error(500, {"error": "InternalError", "message": "The server failed on this request; see its log."})

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/models", list_models, methods=["GET"]),
        Route("/models/{name}", show_model, methods=["GET"]),
        Route("/models/{name}/predict", predict_one, methods=["GET"]),
        Route("/models/{name}/predict", predict_batch, methods=["POST"]),
        Route("/models/{name}/top_k", top_k_get, methods=["GET"]),
        Route("/models/{name}/top_k", top_k_post, methods=["POST"]),
        Route("/models/{name}/observe", observe, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={VeloxError: domain_error, HTTPException: http_error, Exception: unexpected_error},
    )
