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
    "html": {},  # a web page (text/html): MEDIA
    "asset": {},  # a file a page loads: MEDIA
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

_ALERT = {
    "type": "object",
    "required": ["alert", "status", "threshold", "cause", "fix", "raised"],
    "properties": {
        "alert": {
            "type": "string",
            "description": "unknown_items_share, new_users_share, score_psi, feature_ks:d<n>, drift:<detector>",
        },
        "status": {"enum": ["firing", "suppressed", "resolved"]},
        "value": {"type": ["number", "null"]},
        "threshold": {"type": "number"},
        "cause": {"type": "string", "description": "what was measured, in numbers"},
        "fix": {"type": "string", "description": "what to do about it"},
        "raised": {"type": "integer", "description": "times raised (not counting suppressed recurrences)"},
        "suppressed": {"type": "integer"},
        "raised_at": {"type": ["number", "null"], "description": "Unix time"},
        "resolved_at": {"type": ["number", "null"]},
        "suppressed_until": {"type": ["number", "null"], "description": "not raised again before this"},
    },
}
RESPONSES["alerts"] = {
    "type": "object",
    "required": ["model", "model_version", "reference", "deviations", "detectors", "alerts"],
    "properties": {
        "model": {"type": "string"},
        **_VERSION,
        "reference": {
            "type": "boolean",
            "description": "whether the version holds a training reference (else no score or feature checks)",
        },
        "deviations": {"type": "object"},
        "detectors": {"type": "object"},
        "observations": {"type": "integer"},
        "alerts": {"type": "array", "items": _ALERT},
    },
}
# The answers that are not JSON, by response kind: their OpenAPI content.
MEDIA: dict[str, dict[str, Any]] = {
    "text": {"text/plain": {}},
    "html": {"text/html": {"schema": {"type": "string"}}},
    "asset": {media: {"schema": {"type": "string"}} for media in ("text/javascript", "text/css", "text/plain")},
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
    504: "With several servers over Redis: a live server did not apply the switch or forget in time (the message "
    "names it); it is recorded in Redis and applied when that server answers",
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
