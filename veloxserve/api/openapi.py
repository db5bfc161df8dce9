"""The OpenAPI 3.1 description of the HTTP API, written out rather than inferred.

Keeping it explicit means the schema states the real limits (batch size, id shapes) that the
validation enforces, so a client generator or a fuzzer (schemathesis) sees the true contract.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from veloxserve import __version__
from veloxserve.api.auth import ADMIN_ROUTES, MODEL_ROUTES
from veloxserve.api.clipper_openapi import clipper_paths
from veloxserve.api.clipper_routes import route_label as clipper_route_label
from veloxserve.config import ServingConfig
from veloxserve.ids import MAX_ID_LENGTH
from veloxserve.models.version import DEFAULT_SCORE_LIMIT
from veloxserve.serving.validation import MAX_BODY_BYTES

_ID = {
    "oneOf": [
        {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
        {"type": "integer"},
    ],
    "description": "A user or item id: a JSON string or integer. \"22\" and 22 name the same id.",
}
# An id in a path or query string. The server takes any printable string; the schema promises the
# portable subset (printable ASCII), which a fuzzer can generate and every client can send.
_ID_TEXT = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": "^[ -~]+$"}
_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}},
}
_MODEL_NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
_POLICY_FIELDS = {
    "policy": {"enum": ["greedy", "epsilon_greedy", "linucb", "thompson"]},
    "epsilon": {"type": "number", "minimum": 0, "maximum": 1},
    "alpha": {"type": "number", "minimum": 0},
    "filter": {"type": "string", "description": "item attributes: name:value[|value][,name:value]"},
}
_POLICY_QUERY = [{"name": name, "in": "query", "required": False, "schema": schema} for name, schema in _POLICY_FIELDS.items()]
_VERSION = {"name": "version", "in": "path", "required": True, "schema": {"type": "string"}}
_USER = {"name": "user", "in": "path", "required": True, "schema": _ID_TEXT,
         "description": "percent-encoded like every path parameter (the user `a/b` is `a%2Fb`); decoded once"}
_SCORE = {"type": "number", "description": (
    "a finite number inside the model version's score range: meta.json `score_range`, set at training from the "
    "data (min and max widened by 10% of the span) or by `train --score-range LO HI`; [0, 1] under the logistic "
    f"link; |score| <= {DEFAULT_SCORE_LIMIT:g} for versions trained before it was recorded. Outside it: 400")}
_POLICY = {"type": "object", "additionalProperties": False, "properties": {
    "every_observations": {"type": ["integer", "null"], "minimum": 1},
    "every_seconds": {"type": ["number", "null"], "exclusiveMinimum": 0},
    "drift": {"type": "boolean"},
    "drift_threshold": {"type": "number", "exclusiveMinimum": 0},
    "drift_delta": {"type": "number", "minimum": 0},
    "drift_min_instances": {"type": "integer", "minimum": 1},
    "promote": {"enum": ["if_better", "always", "never"]},
}}


_DEADLINE = {"name": "X-Deadline-Ms", "in": "header", "required": False,
             "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1e9},
             "description": "answer within this many milliseconds or be refused at once (503 + Retry-After)"}
_RETRY_AFTER = {"Retry-After": {"description": "seconds after which a retry may succeed",
                                "schema": {"type": "string", "pattern": "^[0-9]+$"}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "Invalid input: the message names the field", 401: "No API token, or an invalid one",
            403: "The token lacks the right for this route", 404: "Unknown model, version or item",
            409: "Conflict: a retrain is already running, or the version cannot serve",
            413: f"The request body is over {MAX_BODY_BYTES} bytes (decided from Content-Length before reading)",
            503: "Overloaded (refused at once, see Retry-After) or a store is unavailable"}
    return {
        str(c): {"description": text[c], "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                 **({"headers": _RETRY_AFTER} if c == 503 else {})}
        for c in codes
    }


def _admin(operation: dict[str, Any]) -> dict[str, Any]:
    """An admin route (veloxserve.api.auth.ADMIN_ROUTES): an admin token is required."""
    return {**operation, "security": [{"bearer": []}],
            "responses": {**operation["responses"], **_errors(401, 403, *_body_errors(operation))}}


def _body_errors(operation: dict[str, Any]) -> tuple[int, ...]:
    """413 where a request body is read: over MAX_BODY_BYTES it is refused before reading."""
    return (413,) if "requestBody" in operation else ()


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """Mark Clipper's operations with the security the route table gives them."""
    marked: dict[str, Any] = {}
    for path, operations in paths.items():
        marked[path] = {}
        for method, operation in operations.items():
            route = (method.upper(), clipper_route_label(path))
            if route in ADMIN_ROUTES:
                operation = _admin(operation)
            elif route in MODEL_ROUTES:
                operation = {**operation, "security": [{}, {"bearer": []}],
                             "responses": {**operation["responses"], **_errors(401, 403, *_body_errors(operation))}}
            marked[path][method] = operation
    return marked


def _data_plane(operation: dict[str, Any]) -> dict[str, Any]:
    """predict, top_k, observe: a key when the model requires one; shed under overload."""
    return {**operation, "security": [{}, {"bearer": []}], "parameters": [*operation["parameters"], _DEADLINE],
            "responses": {**operation["responses"], **_errors(401, 403, 503, *_body_errors(operation))}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"200": {"description": description, "content": {"application/json": {"schema": schema}}}}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


@cache
def openapi_schema() -> dict[str, Any]:
    limit = ServingConfig().max_batch
    version_field = {"model_version": {"type": "string"}}
    scored = {"type": "object", "required": ["item", "score"], "properties": {"item": _ID, "score": {"type": "number"}}}
    top_k_out = {
        "type": "object",
        "required": ["items", "model_version"],
        "properties": {"user": _ID, "items": {"type": "array", "items": scored}, **version_field},
    }
    observation = {
        "type": "object",
        "required": ["user", "item", "score"],
        "properties": {"user": _ID, "item": _ID, "score": _SCORE,
                       "decision": {"type": "string", "minLength": 1, "maxLength": 64,
                                    "description": "the `decision` id of the top_k answer this observation answers; "
                                                   "400 if that list went to another user or did not show the item"},
                       "id": {"type": "string", "minLength": 1, "maxLength": 128,
                              "description": "idempotency key: a retry with the same id (within the window, 24 h "
                                             "by default) is acknowledged with the original's lsn, not learned again"}},
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "veloxserve", "version": __version__,
                 "description": "Personalised predictions that learn online: score = σ(w_u · f(x; θ)). "
                                f"Request bodies: at most {MAX_BODY_BYTES} bytes (413). Every GET route answers "
                                "HEAD. Path parameters are percent-decoded once."},
        "components": {"schemas": {"Id": _ID, "Error": _ERROR, "Observation": observation},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                                      "description": "`veloxserve token create` on the server"}}},
        "paths": {
            "/healthz": {"get": {"summary": "Liveness", "responses": _ok({"type": "object"})}},
            "/models": {"get": {"summary": "Models and their versions", "responses": _ok({"type": "object"})}},
            "/models/{name}": {"get": {
                "summary": "One model: active version and all versions' metadata",
                "parameters": [_MODEL_NAME], "responses": {**_ok({"type": "object"}), **_errors(404)}}},
            "/models/{name}/predict": {
                "get": _data_plane({
                    "summary": "Score one (user, item), or one (user, text) for an item known by its text",
                    "parameters": [_MODEL_NAME,
                                   {"name": "user", "in": "query", "required": True, "schema": _ID_TEXT},
                                   {"name": "item", "in": "query", "required": False, "schema": _ID_TEXT,
                                    "description": "a catalogue item id (required unless text is given)"},
                                   {"name": "text", "in": "query", "required": False,
                                    "schema": {"type": "string", "maxLength": 100_000},
                                    "description": "an item's text, scored with the model's content features"}],
                    "responses": {**_ok({"type": "object", "required": ["score", "model_version"], "properties": {
                        "user": {"type": "string"}, "item": {"type": "string"}, "text": {"type": "string"},
                        "score": {"type": "number"}, **version_field}}), **_errors(400, 404)},
                }),
                "post": _data_plane({
                    "summary": "Score a batch of (user, item) or (user, text) queries",
                    "parameters": [_MODEL_NAME],
                    "requestBody": _body({"type": "object", "required": ["queries"], "properties": {"queries": {
                        "type": "array", "minItems": 1, "maxItems": limit, "items": {
                            "type": "object", "required": ["user"],
                            "description": "an item id, or the text of an item (content features)",
                            "properties": {"user": _ID, "item": _ID,
                                           "text": {"type": "string", "minLength": 1, "maxLength": 100_000}}}}}}),
                    "responses": {**_ok({"type": "object", "required": ["scores", "model_version"], "properties": {
                        "scores": {"type": "array", "items": {"type": "number"}}, **version_field}}),
                        **_errors(400, 404)},
                }),
            },
            "/models/{name}/top_k": {
                "get": _data_plane({
                    "summary": "The k best items for a user",
                    "parameters": [_MODEL_NAME,
                                   {"name": "user", "in": "query", "required": True, "schema": _ID_TEXT},
                                   {"name": "k", "in": "query", "required": True, "schema": {"type": "integer", "minimum": 1}},
                                   {"name": "exclude_seen", "in": "query", "required": False, "schema": {"type": "boolean"}},
                                   *_POLICY_QUERY],
                    "responses": {**_ok(top_k_out), **_errors(400, 404)},
                }),
                "post": _data_plane({
                    "summary": "The k best items for a user among candidates",
                    "parameters": [_MODEL_NAME],
                    "requestBody": _body({"type": "object", "required": ["user", "k"], "properties": {
                        "user": _ID, "k": {"type": "integer", "minimum": 1},
                        "candidates": {"type": "array", "items": _ID, "minItems": 1, "maxItems": limit},
                        "exclude_seen": {"type": "boolean"}, **_POLICY_FIELDS}}),
                    "responses": {**_ok(top_k_out), **_errors(400, 404)},
                }),
            },
            "/metrics": {"get": {"summary": "Prometheus metrics (text exposition format)",
                                 "responses": {"200": {"description": "OK", "content": {"text/plain": {}}}}}},
            "/models/{name}/metrics": {"get": {
                "summary": "Prequential error of the active version: each observation predicted, then learned",
                "parameters": [_MODEL_NAME], "responses": {**_ok({"type": "object"}), **_errors(404)}}},
            "/models/{name}/versions": {"get": {
                "summary": "All versions of a model and their metadata",
                "parameters": [_MODEL_NAME], "responses": {**_ok({"type": "object"}), **_errors(404)}}},
            "/models/{name}/versions/{version}": {"get": {
                "summary": "One version: metadata, lineage (parent, data range, reason) and status",
                "parameters": [_MODEL_NAME, _VERSION], "responses": {**_ok({"type": "object"}), **_errors(404)}}},
            "/models/{name}/versions/{version}/activate": {"post": _admin({
                "summary": "Serve this version (promote or roll back); users are rebuilt against it, no feedback is lost",
                "parameters": [_MODEL_NAME, _VERSION],
                "responses": {**_ok({"type": "object"}), **_errors(404, 409)}})},
            "/models/{name}/retrain": {
                "post": _admin({
                    "summary": "Retrain θ from the base data and the log in the background",
                    "parameters": [_MODEL_NAME],
                    "requestBody": {"required": False, "content": {"application/json": {"schema": {
                        "type": "object", "additionalProperties": False, "properties": {
                            "promote": {"enum": ["if_better", "always", "never"]},
                            "params": {"type": "object", "description": "training parameters: rank, reg, iterations, …"},
                        }}}}},
                    "responses": {"202": {"description": "Started", "content": {"application/json": {
                        "schema": {"type": "object"}}}}, **_errors(400, 404, 409)},
                }),
                "get": {"summary": "The running or last retrain of this model", "parameters": [_MODEL_NAME],
                        "responses": {**_ok({"type": "object"}), **_errors(404)}},
            },
            "/models/{name}/policy": {
                "get": {"summary": "When the model retrains by itself", "parameters": [_MODEL_NAME],
                        "responses": {**_ok({"type": "object"}), **_errors(404)}},
                "put": _admin({"summary": "Set the retraining policy: schedule and drift detection", "parameters": [_MODEL_NAME],
                        "requestBody": _body(_POLICY), "responses": {**_ok({"type": "object"}), **_errors(400, 404)}}),
            },
            "/users/{user}": {"delete": _admin({
                "summary": "Forget a user in every model; answers with a receipt of what was removed",
                "parameters": [_USER], "responses": {**_ok({"type": "object"}), **_errors(400)}})},
            "/models/{name}/users/{user}": {"delete": _admin({
                "summary": "Forget a user in one model; answers with a receipt of what was removed",
                "parameters": [_MODEL_NAME, _USER], "responses": {**_ok({"type": "object"}), **_errors(400, 404)}})},
            "/models/{name}/observe": {"post": _data_plane({
                "summary": "Report what users did; 200 only once the observations are durable",
                "parameters": [_MODEL_NAME],
                "requestBody": _body({"oneOf": [
                    observation,
                    {"type": "object", "required": ["observations"], "properties": {"observations": {
                        "type": "array", "minItems": 1, "maxItems": limit, "items": observation}}},
                ]}),
                "responses": {**_ok({"type": "object", "required": ["observed", "lsn"], "properties": {
                    "observed": {"type": "integer"}, "lsn": {"type": "integer"},
                    "duplicates": {"type": "integer",
                                   "description": "rows whose id was already logged: not learned again"},
                    "duplicate": {"type": "boolean", "description": "a single observation: its id was already logged"},
                    **version_field}}),
                    **_errors(400, 404, 503)},
            })},
            **_secured(clipper_paths()),
        },
    }
