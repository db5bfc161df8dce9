"""The HTTP app: a raw ASGI callable that parses, calls Velox, and renders. No serving logic here.

Why raw ASGI: bench/bench_http.py measured the hello-world floor of the candidate stacks on this
2-core machine (uvicorn + httptools + uvloop, 32 connections): a raw ASGI callable ~20k req/s,
Starlette ~9-12k, Litestar ~7k. The fast-serving target of 15k predictions/s rules out the
frameworks, and a prediction API has a handful of fixed routes, so the router below is a dict.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import numpy as np
import orjson

from veloxserve.api import clipper_routes
from veloxserve.api.auth import AuthConfig, Guard
from veloxserve.api.metrics import CONTENT_TYPE, Metrics
from veloxserve.api.openapi import openapi_schema
from veloxserve.errors import (
    InvalidInput, MethodNotAllowed, NotFound, PayloadTooLarge, VeloxError, invalid_parameter, no_route,
)
from veloxserve.serving.admission import Admission, AdmissionConfig
from veloxserve.serving.durability import DurableWaiter
from veloxserve.serving.redis_watch import StoreCalls
from veloxserve.serving.validation import MAX_BODY_BYTES
from veloxserve.storage.tokens import TokenStore
from veloxserve.serving.velox import DURABLE_TIMEOUT_S, Velox

log = logging.getLogger(__name__)
_JSON_HEADERS = [(b"content-type", b"application/json")]
_ADMITTED = frozenset({"predict", "top_k", "observe"})  # the data plane: shed under overload, see admission.py

Query = dict[str, str]
Handler = Callable[[str, Query, Any], Awaitable[Any]]


class Accepted(dict):
    """A payload answered with 202: the work goes on in the background."""


def _query(query: Query, field: str, where: str) -> str:
    value = query.get(field)
    if not value:
        raise invalid_parameter(field, where, "present in the query string", value)
    return value


def _query_int(query: Query, field: str, where: str) -> int:
    value = _query(query, field, where)
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


def _body_object(body: Any, where: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid_parameter("body", where, "a JSON object", type(body).__name__)
    return body


def _list_field(body: dict[str, Any], field: str, where: str) -> list[Any]:
    value = body.get(field)
    if not isinstance(value, list):
        raise invalid_parameter(field, where, "a JSON list", value)
    return value


def _entry(entry: Any, keys: tuple[str, ...], field: str, where: str, optional: tuple[str, ...] = ()) -> tuple[Any, ...]:
    if not isinstance(entry, dict) or any(key not in entry for key in keys):
        raise invalid_parameter(field, where, "an object with " + ", ".join(repr(k) for k in keys), entry)
    return tuple(entry[key] for key in keys) + tuple(entry.get(key) for key in optional)


class VeloxApp:
    """ASGI app over a Velox. The caller owns `velox` and closes it."""

    def __init__(self, velox: Velox, *, auth: AuthConfig | None = None, admission: AdmissionConfig | None = None,
                 model_dirs: Iterable[Path] = ()) -> None:
        self.velox = velox
        self.guard = Guard(TokenStore(velox.layout.tokens_file), auth)
        self.admission = Admission(admission)
        self.store_calls = StoreCalls(velox.redis_settings)  # Redis-bound work: off the loop, within a deadline
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, DurableWaiter] = {}
        self.metrics = Metrics(velox)
        self.clipper = clipper_routes.ClipperRoutes(velox.layout.root, model_dirs)
        self.metrics.registry.register(self.clipper.collector())
        self._top = {"/healthz": self._healthz, "/openapi.json": self._openapi, "/models": self._list_models}
        self._model_routes: dict[tuple[str, str], Handler] = {
            ("GET", ""): self._show_model,
            ("GET", "predict"): self._predict_one,
            ("POST", "predict"): self._predict_batch,
            ("GET", "top_k"): self._top_k_get,
            ("POST", "top_k"): self._top_k_post,
            ("POST", "observe"): self._observe,
            ("GET", "metrics"): self._model_metrics,
            ("GET", "versions"): self._versions,
            ("POST", "retrain"): self._retrain,
            ("GET", "retrain"): self._retrain_status,
            ("GET", "policy"): self._policy,
            ("PUT", "policy"): self._set_policy,
        }

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
        if scope["path"] == "/metrics" and method == "GET":
            body = self.metrics.render()
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", CONTENT_TYPE), (b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": b"" if head else body})
            return
        parts = _path_parts(scope)
        label, headers = _route_label(scope["path"], parts), _JSON_HEADERS
        try:
            self.guard.check(method, label, scope["path"], scope["headers"])
            payload = await self._dispatch(scope, method, parts, receive, started)
            status = 202 if isinstance(payload, Accepted) else 200
        except VeloxError as exc:
            status, payload = exc.status, exc.to_dict()
            extra = exc.headers()
            if extra:
                headers = _JSON_HEADERS + [(k.encode(), v.encode()) for k, v in extra.items()]
        except Exception:  # the server never dies on a request
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            status, payload = 500, {"error": "InternalError", "message": "The server failed on this request; see its log."}
        body = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        headers = headers + [(b"content-length", b"%d" % len(body))]  # a HEAD answer carries the GET's
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})
        self.metrics.record(label, status, time.perf_counter() - started)

    async def _lifespan(self, receive: Callable, send: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.clipper.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.clipper.close()
                self.store_calls.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _dispatch(self, scope: dict[str, Any], method: str, parts: list[str], receive: Callable,
                        started: float) -> Any:
        path = scope["path"]
        if path.startswith(clipper_routes.PREFIXES):
            return await self.clipper.dispatch(method, path, lambda: self._read_json(scope, receive, path))
        if path in self._top or path == "/metrics":  # GET /metrics is answered before dispatch
            _only(method, "GET", path)
            return self._top[path]()
        if len(parts) == 6 and parts[1] == "models" and parts[3] == "versions" and parts[5] == "activate":
            _only(method, "POST", path)
            return await self._activate_version(parts[2], parts[4])
        if len(parts) == 5 and parts[1] == "models" and parts[3] == "versions" and parts[4]:
            _only(method, "GET", path)
            return self.velox.version(parts[2], parts[4])
        if len(parts) == 5 and parts[1] == "models" and parts[3] == "users" and parts[4]:
            _only(method, "DELETE", path)
            return await self._forget(parts[4], parts[2])
        if len(parts) == 3 and parts[1] == "users" and parts[2]:
            _only(method, "DELETE", path)
            return await self._forget(parts[2], None)
        if len(parts) not in (3, 4) or parts[1] != "models" or not parts[2]:
            raise NotFound(f"No route {path}. See /openapi.json for the API.")
        name, action = parts[2], parts[3] if len(parts) == 4 else ""
        handler = self._model_routes.get((method, action))
        if handler is None:
            raise no_route(path, method, sorted(m for m, a in self._model_routes if a == action))
        query = dict(parse_qsl(scope["query_string"].decode("latin-1"))) if scope["query_string"] else {}
        body = await self._read_json(scope, receive, action) if method in ("POST", "PUT") else None
        if action not in _ADMITTED:
            return await handler(name, query, body)
        # The request is complete only now: time spent waiting for a slow client's bytes is neither
        # a wait in the loop's queue nor service, so both are measured from here (see admission.py).
        ready = started if body is None else time.perf_counter()
        self.velox.server(name)  # an unknown model is a 404, not a place in a queue
        service = self.admission.admit(name, action, self._waited(ready), _deadline_s(scope["headers"]))
        try:
            result = await handler(name, query, body)
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

    async def _read_json(self, scope: dict[str, Any], receive: Callable, where: str) -> Any:
        """The body as JSON. Over MAX_BODY_BYTES is a 413, decided from Content-Length before a
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
        raw = b"".join(chunks)
        if not raw:
            return None  # no body: routes whose body is optional take their defaults, others say what is missing
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidInput(f"The request body of {where} must be a JSON object: {exc}.", field="body") from None

    # ---- routes ----------------------------------------------------------------------------
    def _healthz(self) -> dict[str, Any]:
        """`degraded` says what to fix (damaged log records, a full disk) while serving goes on."""
        degraded = self.velox.health()
        answer: dict[str, Any] = {"status": "degraded" if degraded else "ok", "models": self.velox.model_names()}
        if degraded:
            answer["degraded"] = degraded
        return answer

    def _openapi(self) -> dict[str, Any]:
        return openapi_schema()

    def _list_models(self) -> dict[str, Any]:
        return {"models": [self.velox.describe(name) for name in self.velox.model_names()]}

    async def _show_model(self, name: str, query: Query, body: Any) -> dict[str, Any]:
        return self.velox.describe(name)

    async def _predict_one(self, name: str, query: Query, body: Any) -> dict[str, Any]:
        server = self.velox.server(name)
        user = _query(query, "user", "predict")
        if "item" not in query and "text" in query:  # an item known by its text (content features)
            text = query["text"]
            score = (await self.store_calls.run(server.predict_text, [(user, text)]))[0]
            return {"user": user, "text": text, "score": float(score), "model_version": server.version_id}
        item = _query(query, "item", "predict")
        score = await self.store_calls.run(server.predict, user, item)
        return {"user": user, "item": item, "score": score, "model_version": server.version_id}

    async def _predict_batch(self, name: str, query: Query, body: Any) -> dict[str, Any]:
        server = self.velox.server(name)
        queries = _list_field(_body_object(body, "predict"), "queries", "predict")
        by_text = [isinstance(q, dict) and "item" not in q and "text" in q for q in queries]
        if not any(by_text):
            pairs = [_entry(q, ("user", "item"), f"queries[{i}]", "predict") for i, q in enumerate(queries)]
            return {"scores": await self.store_calls.run(server.predict_many, pairs), "model_version": server.version_id}
        # Items by id and by text in one batch: predictions change no state, so score each half.
        text_at = [i for i, t in enumerate(by_text) if t]
        item_at = [i for i, t in enumerate(by_text) if not t]
        texts = [_entry(queries[i], ("user", "text"), f"queries[{i}]", "predict") for i in text_at]
        items = [_entry(queries[i], ("user", "item"), f"queries[{i}]", "predict") for i in item_at]

        def score() -> np.ndarray:  # one call, so one deadline for the whole batch
            scores = np.empty(len(queries))
            scores[text_at] = server.predict_text(texts)
            if items:
                scores[item_at] = server.predict_many(items)
            return scores

        return {"scores": await self.store_calls.run(score), "model_version": server.version_id}

    def _ranked(self, name: str, user: Any, k: Any, candidates: Any, exclude_seen: bool, options: dict[str, Any]) -> dict[str, Any]:
        rec = self.velox.recommend(name, user, k, candidates=candidates, exclude_seen=exclude_seen, **options)
        if rec.propensities is None:
            items = [{"item": item, "score": score} for item, score in zip(rec.items, rec.scores)]
        else:
            items = [{"item": item, "score": score, "propensity": p}
                     for item, score, p in zip(rec.items, rec.scores, rec.propensities)]
        return {"user": user, "items": items, "model_version": rec.model_version, "policy": rec.policy.describe(),
                "decision": rec.decision}

    async def _top_k_get(self, name: str, query: Query, body: Any) -> dict[str, Any]:
        self.velox.server(name)
        user, k = _query(query, "user", "top_k"), _query_int(query, "k", "top_k")
        exclude = _as_bool(query.get("exclude_seen", "false"), "exclude_seen", "top_k")
        options: dict[str, Any] = {"policy": query.get("policy"), "filter": query.get("filter")}
        for field in ("epsilon", "alpha"):
            if field in query:
                try:
                    options[field] = float(query[field])
                except ValueError:
                    raise invalid_parameter(field, "top_k", "a number", query[field]) from None
        return await self.store_calls.run(self._ranked, name, user, k, None, exclude, options)

    async def _top_k_post(self, name: str, query: Query, body: Any) -> dict[str, Any]:
        self.velox.server(name)
        body = _body_object(body, "top_k")
        for field in ("user", "k"):
            if field not in body:
                raise invalid_parameter(field, "top_k", "present in the body", None)
        candidates = body.get("candidates")
        if candidates is not None and not isinstance(candidates, list):
            raise invalid_parameter("candidates", "top_k", "a JSON list of item ids", candidates)
        exclude = _as_bool(body.get("exclude_seen", False), "exclude_seen", "top_k")
        options = {field: body.get(field) for field in ("policy", "epsilon", "alpha", "filter")}
        return await self.store_calls.run(self._ranked, name, body["user"], body["k"], candidates, exclude, options)

    async def _observe(self, name: str, query: Query, body: Any) -> dict[str, Any]:
        self.velox.server(name)
        body = _body_object(body, "observe")
        if "observations" in body:
            entries = _list_field(body, "observations", "observe")
            rows = [_entry(o, ("user", "item", "score"), f"observations[{i}]", "observe", ("decision", "id"))
                    for i, o in enumerate(entries)]
        else:
            rows = [_entry(body, ("user", "item", "score"), "body", "observe", ("decision", "id"))]
        receipt = self.velox.submit(name, rows)
        await self._waiter(name).wait(receipt, DURABLE_TIMEOUT_S)  # 200 only once durable (or the original is)
        if receipt.foreign:  # retries of observations another process logged (state shared in Redis)
            await asyncio.get_running_loop().run_in_executor(
                None, self.velox.wait_originals, name, receipt.foreign, DURABLE_TIMEOUT_S)
        self.metrics.observations.labels(name).inc(len(rows) - receipt.duplicates)
        answer = {"observed": len(rows), "duplicates": receipt.duplicates, "lsn": int(receipt),
                  "model_version": self.velox.server(name).version_id}
        if "observations" not in body:
            answer["duplicate"] = receipt.duplicates == 1
        return answer

    async def _model_metrics(self, name: str, query: Query, body: Any) -> dict[str, Any]:
        server = self.velox.server(name)
        return {"model": name, "model_version": server.version_id, "prequential": server.prequential.report(),
                "feature_cache": self.velox.feature_cache.stats().as_dict(), "admission": self.admission.describe(name)}

    async def _versions(self, name: str, query: Query, body: Any) -> dict[str, Any]:
        info = self.velox.describe(name)
        return {"active_version": info["active_version"], "versions": info["versions"]}

    async def _activate_version(self, name: str, version: str) -> dict[str, Any]:
        self.velox.server(name)
        # Rebuilding users against another θ takes a while: keep the event loop serving meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self.velox.activate, name, version)
        return {"model": name, "active_version": self.velox.server(name).version_id}

    async def _retrain(self, name: str, query: Query, body: Any) -> Accepted:
        options = _body_object(body if body is not None else {}, "retrain")
        unknown = sorted(set(options) - {"promote", "params"})
        if unknown:
            raise invalid_parameter(unknown[0], "retrain", "promote or params", options[unknown[0]])
        params = options.get("params") or {}
        if not isinstance(params, dict):
            raise invalid_parameter("params", "retrain", "an object of training parameters (rank, reg, iterations, …)", params)
        job = await asyncio.get_running_loop().run_in_executor(
            None, lambda: self.velox.retrain(name, promote=options.get("promote", "if_better"), overrides=params)
        )
        return Accepted({"retrain": job.describe(), "status_url": f"/models/{name}/retrain"})

    async def _retrain_status(self, name: str, query: Query, body: Any) -> dict[str, Any]:
        self.velox.server(name)
        job = self.velox.retrainer.job(name)
        return {"model": name, "retrain": None if job is None else job.describe()}

    async def _policy(self, name: str, query: Query, body: Any) -> dict[str, Any]:
        return {"model": name, "policy": self.velox.policy(name).__dict__}

    async def _set_policy(self, name: str, query: Query, body: Any) -> dict[str, Any]:
        return {"model": name, "policy": self.velox.set_policy(name, _body_object(body, "policy")).__dict__}

    async def _forget(self, user: str, model: str | None) -> dict[str, Any]:
        if model is not None:
            self.velox.server(model)
        return await asyncio.get_running_loop().run_in_executor(None, self.velox.forget_user, user, model)

    def _waiter(self, model: str) -> DurableWaiter:
        waiter = self._waiters.get(model)
        if waiter is None:
            waiter = self._waiters[model] = DurableWaiter(self.velox.acknowledger(model), asyncio.get_running_loop())
        return waiter


_ACTIONS = {"predict", "top_k", "observe", "metrics", "versions", "retrain", "policy"}


def _deadline_s(headers: list[tuple[bytes, bytes]]) -> float | None:
    """The client's X-Deadline-Ms budget, in seconds."""
    for name, value in headers:
        if name == b"x-deadline-ms":
            try:
                ms = float(value)
            except ValueError:
                ms = -1.0
            if not 0 < ms < 1e9:
                raise invalid_parameter("X-Deadline-Ms", "the request headers", "a positive number of milliseconds",
                                        value.decode("latin-1"))
            return ms / 1000.0
    return None


def _content_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:  # the HTTP server rejects these first; a lenient one gets a clear 400
                raise invalid_parameter("Content-Length", "the request headers", "a number of bytes",
                                        value.decode("latin-1")) from None
    return None


def _too_large(where: str, got: str) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body of {where} must be at most {MAX_BODY_BYTES} bytes. Got {got}; "
                           "split the batch into smaller requests.", field="body")


def _path_parts(scope: dict[str, Any]) -> list[str]:
    """The path's segments, each percent-decoded once: `/users/a%2Fb` names the user "a/b" on every
    route (the ASGI `path` is decoded already, so a `/` inside an id would split it)."""
    raw = scope.get("raw_path")
    if not raw or b"%" not in raw:
        return scope["path"].split("/")
    raw = raw.split(b"?", 1)[0]  # some clients (httpx's ASGI transport) include the query string
    return [unquote(segment) for segment in raw.decode("latin-1").split("/")]


def _only(method: str, allowed: str, path: str) -> None:
    if method != allowed:
        raise MethodNotAllowed(path, method, [allowed])


def _route_label(path: str, parts: list[str] | None = None) -> str:
    """A bounded label per route: never a model name, id or arbitrary path."""
    if path in ("/healthz", "/openapi.json", "/models"):
        return path
    if path.startswith(clipper_routes.PREFIXES):
        return clipper_routes.route_label(path)
    parts = path.split("/") if parts is None else parts
    if len(parts) == 3 and parts[1] == "users":
        return "forget"
    if len(parts) < 3 or parts[1] != "models":
        return "other"
    if len(parts) == 3:
        return "/models/{name}"
    if len(parts) == 4 and parts[3] in _ACTIONS:
        return parts[3]
    if len(parts) == 5 and parts[3] in ("versions", "users"):
        return "version" if parts[3] == "versions" else "forget"
    return "activate" if len(parts) == 6 and parts[5] == "activate" else "other"


def create_app(velox: Velox, *, auth: AuthConfig | None = None, admission: AdmissionConfig | None = None,
               model_dirs: Iterable[Path] = ()) -> VeloxApp:
    """An ASGI app serving `velox`. Admin routes need a token from `velox`'s home unless
    `auth=AuthConfig(enabled=False)`; `admission` sets the load-shedding limits; Clipper deploys
    model files from `<home>/models-in/` and `model_dirs` only."""
    return VeloxApp(velox, auth=auth, admission=admission, model_dirs=model_dirs)
