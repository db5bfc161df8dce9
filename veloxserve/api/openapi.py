"""The OpenAPI 3.1 document, derived from the route table and the request types.

Nothing here is written per route: paths, methods, parameters, bodies, security, the deadline
header, the error answers and the limits all come from `routes.ROUTES` and the msgspec types in
requests.py (built for the server's configured batch limit), so the document states what the
server checks and a fuzzer (schemathesis, tests/api/test_fuzz.py) sees the true contract.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from typing import Any

import msgspec

from veloxserve import __version__
from veloxserve.api import requests as rq
from veloxserve.api.routes import ROUTES, Access, Route
from veloxserve.api.schemas import DEADLINE, ERROR, ERROR_TEXT, MEDIA, RESPONSES, RETRY_AFTER
from veloxserve.config import ServingConfig
from veloxserve.serving.validation import MAX_BODY_BYTES

_REF = "#/components/schemas/{name}"
# A query whose fields are required in alternatives (GET predict: `item` or `text`) is one object
# parameter (form style, exploded: `?user=1&item=2`), the only way OpenAPI can state the choice.
_ITEM_OR_TEXT = [{"required": ["item"]}, {"required": ["text"]}]
_QUERY_ALTERNATIVES: dict[type, list[dict[str, Any]]] = {rq.PredictQuery: _ITEM_OR_TEXT}


# Example bodies: also what schemathesis's coverage phase pairs with its boundary values of the
# other parameters (without one it drew an invalid body and judged the request valid).
_EXAMPLES: dict[str, Any] = {"predict_batch": {"queries": [{"user": "1", "item": "1"}, {"user": 2, "text": "an item"}]}}


def body_type(route: Route, max_batch: int) -> type | None:
    """The msgspec type of a route's body (None: no body). Observe takes one of two: see `observe_types`."""
    if route.body is None or route.body == "observe":
        return None
    if isinstance(route.body, str):
        return getattr(rq.batch_types(max_batch), route.body)
    return route.body


def _types(max_batch: int) -> list[type]:
    kinds = {t for r in ROUTES for t in (r.query, body_type(r, max_batch)) if t is not None}
    batch = rq.batch_types(max_batch)
    return sorted(kinds | {batch.observation, batch.observe_batch}, key=lambda t: t.__name__)


def _strip(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in ("title", "default")}


def _query_parameters(kind: type, components: dict[str, Any]) -> list[dict[str, Any]]:
    schema = components[kind.__name__]
    if kind in _QUERY_ALTERNATIVES:
        return [
            {
                "name": "query",
                "in": "query",
                "required": True,
                "style": "form",
                "explode": True,
                "schema": {**_strip(schema), "anyOf": _QUERY_ALTERNATIVES[kind]},
            }
        ]
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _strip(prop)}
        for name, prop in schema["properties"].items()
    ]


def _errors(codes: list[int]) -> dict[str, Any]:
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    # a request the HTTP server itself refuses (a request line over its limit) is answered in plain text
    malformed = {**error, "text/plain": {"schema": {"type": "string"}}}
    return {
        str(c): {
            "description": ERROR_TEXT[c],
            "content": malformed if c == 400 else error,
            **({"headers": RETRY_AFTER} if c == 503 else {}),
        }
        for c in codes
    }


# The groups of /docs, in this order: each route's is derived from what it serves.
TAGS = {
    "models": "Velox models: predictions, feedback, versions and their lifecycle",
    "clipper": "Clipper: model containers and applications",
    "server": "The server: health, metrics, this document",
    "pages": "The dashboard, this page, and what they load",
}


def _tag(route: Route) -> str:
    """The route's group: a family of TAGS, else its path's first segment (`/pipelines/{name}`: pipelines)."""
    if route.clipper:
        return "clipper"
    if route.page:
        return "pages"
    if route.path.startswith(("/models", "/users")):
        return "models"
    return "server" if route.path in ("/healthz", "/openapi.json", "/metrics") else route.path.split("/")[1]


def _operation(route: Route, components: dict[str, Any], max_batch: int) -> dict[str, Any]:
    parameters: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": route.params[p]} for p in route.path_params
    ]
    if route.query is not None:
        parameters += _query_parameters(route.query, components)
    if route.admitted:
        parameters.append(DEADLINE)
    content = MEDIA.get(route.response) or {"application/json": {"schema": RESPONSES[route.response]}}
    codes = {400, *route.errors}  # 400 too where nothing is read: the HTTP server refuses a malformed request
    operation: dict[str, Any] = {
        "summary": route.summary + (" (admin)" if route.access is Access.ADMIN else ""),
        "operationId": f"{route.method.lower()}_{route.handler}",
        "tags": [_tag(route)],
        "parameters": parameters,
    }
    body = body_type(route, max_batch)
    if route.body is not None:
        batch = rq.batch_types(max_batch)
        schema = (
            {"oneOf": [{"$ref": _REF.format(name=t.__name__)} for t in (batch.observation, batch.observe_batch)]}
            if body is None
            else _strip(components[body.__name__])
        )
        media: dict[str, Any] = {"schema": schema}
        if isinstance(route.body, str) and route.body in _EXAMPLES:
            media["example"] = _EXAMPLES[route.body]
        operation["requestBody"] = {"required": route.body_required, "content": {"application/json": media}}
        codes.add(413)
    if route.access is Access.ADMIN:
        operation["security"] = [{"bearer": []}]
        codes |= {401, 403}
    elif route.access is Access.MODEL_KEY:
        operation["security"] = [{}, {"bearer": []}]
        codes |= {401, 403}
    if route.admitted:
        codes.add(503)
    operation["responses"] = {
        str(route.status): {"description": "Started" if route.status == 202 else "OK", "content": content},
        **_errors(sorted(codes)),
    }
    return operation


@cache
def openapi_schema(max_batch: int = ServingConfig().max_batch) -> dict[str, Any]:
    """The document for a server whose batch limit is `max_batch` (its ServingConfig.max_batch)."""
    _, components = msgspec.json.schema_components(_types(max_batch), ref_template=_REF)
    components["PredictEntry"]["anyOf"] = _ITEM_OR_TEXT  # each query of a batch: an item, or an item's text
    components["CreateAppRequest"]["allOf"] = [  # single (also when no policy is named) links one model
        {
            "if": {
                "properties": {"policy": {"const": policy}},
                **({} if policy == "single" else {"required": ["policy"]}),
            },
            "then": {
                "properties": {
                    "params": {"propertyNames": {"enum": names}} if names else {"maxProperties": 0},
                    **({"models": {"maxItems": 1}} if policy == "single" else {}),
                }
            },
        }
        for policy, names in rq.APP_POLICY_PARAMS.items()
    ]
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, components, max_batch)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "veloxserve",
            "version": __version__,
            "description": "Personalised predictions that learn online: score = σ(w_u · f(x; θ)), and Clipper's "
            f"model containers and applications. Request bodies: at most {MAX_BODY_BYTES} bytes "
            "(413). Every GET route answers HEAD. Path parameters are percent-decoded once.",
        },
        "components": {
            "schemas": {"Error": ERROR, **components},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "`veloxserve token create` on the server"}
            },
        },
        "tags": [{"name": name, "description": text} for name, text in TAGS.items()],
        "paths": paths,
    }


@cache
def served_schema(max_batch: int, max_k: int, attributes: tuple[str, ...]) -> dict[str, Any]:
    """The document with what the served catalogues allow: `k` at most `max_k` (the largest
    catalogue), and filters over the attribute names the models loaded (exact for one model)."""
    document = copy.deepcopy(openapi_schema(max_batch))
    names = "|".join(re.escape(name) for name in attributes)
    clause = f"(?:{names}):[^,]+"
    filter_pattern = f"^,*{clause}(?:,+{clause})*,*$" if attributes else "^(?!)"  # no attributes: no filter
    top_k = document["paths"]["/models/{name}/top_k"]
    for parameter in top_k["get"]["parameters"]:
        if parameter["name"] == "k":
            parameter["schema"]["maximum"] = max_k
        elif parameter["name"] == "filter":
            parameter["schema"]["pattern"] = filter_pattern
    body = top_k["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]
    body["k"]["maximum"] = max_k
    for option in body["filter"].get("anyOf", [body["filter"]]):
        if option.get("type") == "string":
            option["pattern"] = filter_pattern
    return document
