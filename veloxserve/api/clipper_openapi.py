"""The OpenAPI paths of the Clipper routes (veloxserve/api/clipper_routes.py), merged into the schema."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_TEXT = {400: "Invalid input: the message names the field",
         403: "The model file is outside <home>/models-in and the server's --model-dir directories",
         404: "Unknown model, model file, version or application",
         405: "Method not allowed",
         409: "Conflict: the model is linked to an application, nothing to roll back, or the new version's input or "
              "output shape differs from what the linked applications use",
         503: "A model container is unavailable (failed to start, crashed or failed on the input)"}
_NAME_TEXT = {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"}
_NAME = {"name": "name", "in": "path", "required": True, "schema": _NAME_TEXT}
_APP = {"name": "app", "in": "path", "required": True, "schema": _NAME_TEXT}
_ANY: dict[str, Any] = {}
_NUMBER = {"type": "number", "exclusiveMinimum": 0}
_USER = {"oneOf": [{"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[ -~]+$"}, {"type": "integer"}]}
_POLICY_PARAMS = {"single": [], "exp3": ["eta", "gamma"], "exp4": ["eta"], "personalised": ["prior_precision"]}


def _op(summary: str, *errors: int, body: dict | None = None, params: tuple = (), admin: bool = False) -> dict:
    op: dict[str, Any] = {
        "summary": summary + (" (admin)" if admin else ""), "parameters": list(params),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
                      **{str(c): {"description": _TEXT[c], "content": {"application/json": {"schema": _ERROR}}}
                         for c in errors}},
    }
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    return op


def _object(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "additionalProperties": False, "properties": properties}


def clipper_paths() -> dict[str, Any]:
    deploy = _object(
        ["name", "framework", "model"], name=_NAME_TEXT, framework={"enum": ["callable", "sklearn", "torch", "onnx"]},
        model={"type": "string", "minLength": 1, "description": "path of the model file on the server"},
        method={"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_]*$"},
        replicas={"type": "integer", "minimum": 1, "maximum": 64}, objective_ms=_NUMBER,
        delay_ms={"type": "number", "minimum": 0}, adaptive={"type": "boolean"},
        max_batch={"type": "integer", "minimum": 1, "maximum": 65536}, hang_timeout_s=_NUMBER,
        sample={"description": "an example input: run once per replica at deploy time (warming it); its shape is "
                               "the input shape queries are checked against"})
    params = {"type": "object", "additionalProperties": False, "properties": {
        "eta": _NUMBER, "gamma": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}, "prior_precision": _NUMBER}}
    app = _object(["name", "models"], name=_NAME_TEXT,
                  models={"type": "array", "minItems": 1, "uniqueItems": True, "items": _NAME_TEXT},
                  policy={"enum": list(_POLICY_PARAMS)}, objective_ms=_NUMBER, default=_ANY,
                  loss={"enum": ["zero_one", "absolute", "squared"]}, params=params,
                  seed={"type": "integer", "minimum": 0})
    app["allOf"] = [  # single (also when no policy is named) links one model; params are the policy's own
        {"if": {"properties": {"policy": {"const": policy}},
                **({} if policy == "single" else {"required": ["policy"]})},
         "then": {"properties": {"params": {"propertyNames": {"enum": names}} if names else {"maxProperties": 0},
                                 **({"models": {"maxItems": 1}} if policy == "single" else {})}}}
        for policy, names in _POLICY_PARAMS.items()
    ]
    return {
        "/containers": {"get": _op("Deployed models: versions, replicas, batch sizes, queues, cache"),
                        "post": _op("Deploy a model file as a new version in container processes. Loading a "
                                    "pickle (callable, sklearn) or torch file runs its code with the server's rights",
                                    400, 403, 404, 409, 503, body=deploy, admin=True)},
        "/containers/{name}": {"get": _op("One deployed model", 404, params=(_NAME,)),
                               "delete": _op("Stop a model's containers and delete its versions", 404, 409,
                                             params=(_NAME,), admin=True)},
        "/containers/{name}/scale": {"post": _op(
            "Set the number of container replicas", 400, 404, 503, params=(_NAME,), admin=True,
            body=_object(["replicas"], replicas={"type": "integer", "minimum": 1, "maximum": 64}))},
        "/containers/{name}/rollback": {"post": _op(
            "Serve the previous (or a named) version", 400, 404, 409, 503, params=(_NAME,), admin=True,
            body=_object([], version={"type": "string", "pattern": "^v[0-9]+$"}))},
        "/apps": {"get": _op("Applications and their policies' state"),
                  "post": _op("Create an application over deployed models", 400, 404, 409, body=app, admin=True)},
        "/apps/{app}": {"get": _op("One application", 404, params=(_APP,)),
                        "delete": _op("Remove an application", 404, params=(_APP,), admin=True)},
        "/apps/{app}/predict": {"post": _op(
            "A prediction bounded by the application's latency objective: late models are replaced by their mean "
            "output, and with no model in time the answer is the default output with \"default\": true",
            400, 404, params=(_APP,), body=_object(["input"], user=_USER, input=_ANY))},
        "/apps/{app}/observe": {"post": _op("Feedback: the policy learns from the label", 400, 404, 503,
                                            params=(_APP,), body=_object(["input", "label"], user=_USER, input=_ANY,
                                                                         label=_ANY))},
    }
