"""JSON Schemas of the answers and errors, by name: the route table names one per route."""

from __future__ import annotations

from typing import Any

from veloxserve.serving.validation import MAX_BODY_BYTES

ID_OUT = {
    "oneOf": [{"type": "string"}, {"type": "integer"}],
    "description": "A user or item id as the client sent it, or as the catalogue lists it.",
}
ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}},
}
_VERSION = {"model_version": {"type": "string"}}
_SCORED = {"type": "object", "required": ["item", "score"], "properties": {"item": ID_OUT, "score": {"type": "number"}}}

RESPONSES: dict[str, dict[str, Any]] = {
    "object": {"type": "object"},
    "text": {},  # text/plain: see openapi.py
    "health": {
        "type": "object",
        "required": ["status", "models"],
        "properties": {
            "status": {"enum": ["ok", "degraded"]},
            "models": {"type": "array", "items": {"type": "string"}},
            "degraded": {"type": "object"},
        },
    },
    "score": {
        "type": "object",
        "required": ["score", "model_version"],
        "properties": {
            "user": {"type": "string"},
            "item": {"type": "string"},
            "text": {"type": "string"},
            "score": {"type": "number"},
            **_VERSION,
        },
    },
    "scores": {
        "type": "object",
        "required": ["scores", "model_version"],
        "properties": {"scores": {"type": "array", "items": {"type": "number"}}, **_VERSION},
    },
    "top_k": {
        "type": "object",
        "required": ["items", "model_version"],
        "properties": {"user": ID_OUT, "items": {"type": "array", "items": _SCORED}, **_VERSION},
    },
    "observed": {
        "type": "object",
        "required": ["observed", "lsn"],
        "properties": {
            "observed": {"type": "integer"},
            "lsn": {"type": "integer"},
            "duplicates": {"type": "integer", "description": "rows whose id was already logged: not learned again"},
            "duplicate": {"type": "boolean", "description": "a single observation: its id was already logged"},
            **_VERSION,
        },
    },
    "pipeline_answer": {
        "type": "object",
        "required": ["pipeline", "output", "degraded", "stages"],
        "properties": {
            "pipeline": {"type": "string"},
            "output": {},
            "degraded": {"type": "boolean", "description": "a stage answered with its mean or default output"},
            "latency_ms": {"type": "number"},
            "stages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["stage", "status"],
                    "properties": {
                        "stage": {"type": "string"},
                        "status": {"enum": ["ok", "mean", "default"]},
                        "reason": {"type": "string"},
                    },
                },
            },
        },
    },
}

ERROR_TEXT = {
    400: "Invalid input: the message names the field",
    401: "No API token, or an invalid one",
    403: "The token lacks the right for this route, or (Clipper) the model file is outside <home>/models-in and the "
    "server's --model-dir directories",
    404: "Unknown model, version, item, model file or application",
    405: "Method not allowed",
    409: "Conflict: a retrain is already running, the version cannot serve, a model is linked to an application, "
    "nothing to roll back, or a new version's shapes differ from what the linked applications use",
    413: f"The request body is over {MAX_BODY_BYTES} bytes (decided from Content-Length before reading)",
    503: "Overloaded (refused at once, see Retry-After), a store is unavailable, or a model container is unavailable",
}
RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds after which a retry may succeed",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
DEADLINE = {
    "name": "X-Deadline-Ms",
    "in": "header",
    "required": False,
    "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1e9},
    "description": "answer within this many milliseconds or be refused at once (503 + Retry-After)",
}
