"""The verbs of veloxserve's own routes, each once: the request it sends and how its answer reads.

They mirror `Velox`, the in-process API (serving/velox.py), name for name where it has the verb:
predict, predict_many, predict_text, top_k, recommend, observe, observe_many, versions, version,
activate, retrain, policy, set_policy, forget_user, describe, model_names, health; and the HTTP
API's own: retrain_status, metrics (a model's prequential error), models, prometheus, openapi.
`VeloxVerbs` gives them to both clients (wire.verb).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from veloxserve.client import results as r
from veloxserve.client.wire import Call, Plan, Sleep, segment, verb

Id = str | int
LONG_S = 600.0  # activate rebuilds every user against another θ; forget rewrites logs and versions
MAX_QUERY_TEXT = 4096  # longer texts go in the body of POST predict (api/requests.py MAX_QUERY_TEXT_CHARS)
RETRAIN_POLL_S = 0.5


def _model(model: str, rest: str = "") -> str:
    return f"/models/{segment(model)}{rest}"


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


# ---- the server --------------------------------------------------------------------------------
def health() -> Call[r.Health]:
    """Liveness, and per model what to fix while serving goes on (`degraded`)."""
    return Call("GET", "/healthz", r.Health.from_json)


def openapi() -> Call[dict[str, Any]]:
    """The server's OpenAPI 3.1 document."""
    return Call("GET", "/openapi.json", dict)


def prometheus() -> Call[str]:
    """The server's Prometheus metrics, as text."""
    return Call("GET", "/metrics", str, text=True)


def models() -> Call[list[r.ModelInfo]]:
    """Every served model: active version, versions, retrain, policy."""
    return Call("GET", "/models", lambda d: [r.ModelInfo.from_json(m) for m in d["models"]])


def model_names() -> Call[list[str]]:
    """The names of the served models."""
    return Call("GET", "/models", lambda d: [m["name"] for m in d["models"]])


def describe(model: str) -> Call[r.ModelInfo]:
    """One model: active version, catalogue size, users, every version's metadata, policy."""
    return Call("GET", _model(model), r.ModelInfo.from_json)


# ---- serving -----------------------------------------------------------------------------------
def predict(model: str, user: Id, item: Id | None = None, *, text: str | None = None) -> Call[r.Prediction]:
    """Score one (user, item), or (user, text) for an item known only by its text (content features)."""
    if text is not None and item is None and len(text) > MAX_QUERY_TEXT:
        one = {"queries": [{"user": user, "text": text}]}
        return Call(
            "POST",
            _model(model, "/predict"),
            lambda d: r.Prediction(d["scores"][0], d["model_version"], user, None, text, d),
            json=one,
            idempotent=True,
        )
    params = _given(user=user, item=item, text=text)
    return Call("GET", _model(model, "/predict"), r.Prediction.from_json, params=params)


def _query(query: Any) -> dict[str, Any]:
    if isinstance(query, Mapping):
        return dict(query)
    user, item = query
    return {"user": user, "item": item}


def predict_many(model: str, queries: Sequence[tuple[Id, Id] | Mapping[str, Any]]) -> Call[r.Scores]:
    """Scores of a batch: (user, item) pairs, or {"user", "item"} / {"user", "text"} objects."""
    body = {"queries": [_query(q) for q in queries]}
    return Call("POST", _model(model, "/predict"), r.Scores.from_json, json=body, idempotent=True)  # a read


def predict_text(model: str, queries: Sequence[tuple[Id, str]]) -> Call[r.Scores]:
    """Scores of (user, text) pairs, for items known only by their text."""
    return predict_many(model, [{"user": user, "text": text} for user, text in queries])


def recommend(
    model: str,
    user: Id,
    k: int,
    *,
    candidates: Sequence[Id] | None = None,
    exclude_seen: bool = False,
    filter: str | None = None,
    policy: str | None = None,
    epsilon: float | None = None,
    alpha: float | None = None,
) -> Call[r.Recommendation]:
    """A top-k list under an exploration policy (greedy, epsilon_greedy, linucb, thompson), with
    each item's propensity and the `decision` id to pass with the observations that answer it.
    `filter`: item attributes, `genre:jazz|soul,decade:1960`."""
    options = _given(filter=filter, policy=policy, epsilon=epsilon, alpha=alpha)
    if candidates is None:
        params = {"user": user, "k": k, "exclude_seen": exclude_seen, **options}
        return Call("GET", _model(model, "/top_k"), r.Recommendation.from_json, params=params)
    body = {"user": user, "k": k, "candidates": list(candidates), "exclude_seen": exclude_seen, **options}
    return Call("POST", _model(model, "/top_k"), r.Recommendation.from_json, json=body, idempotent=True)


def top_k(
    model: str,
    user: Id,
    k: int,
    *,
    candidates: Sequence[Id] | None = None,
    exclude_seen: bool = False,
    filter: str | None = None,
) -> Call[list[tuple[Id, float]]]:
    """The k best items for a user, best first, as (item, score) pairs (greedy; `recommend` for the rest)."""
    call = recommend(model, user, k, candidates=candidates, exclude_seen=exclude_seen, filter=filter)
    return Call(
        call.method, call.path, lambda d: r.Recommendation.from_json(d).pairs(), call.params, call.json, call.idempotent
    )


def _observation(row: Any) -> dict[str, Any]:
    if isinstance(row, Mapping):
        return {k: v for k, v in row.items() if v is not None}
    user, item, score, *rest = row
    decision, key = (list(rest) + [None, None])[:2]
    return _given(user=user, item=item, score=score, decision=decision, id=key)


def observe(
    model: str, user: Id, item: Id, score: float, *, decision: str | None = None, id: str | None = None
) -> Call[r.Observed]:
    """Learn one observation; answered once it is durable. With an idempotency key `id` the call
    is retried on failure (a repeat is acknowledged, not learned twice); without one it is not."""
    body = _observation((user, item, score, decision, id))
    return Call("POST", _model(model, "/observe"), r.Observed.from_json, json=body, idempotent=id is not None)


def observe_many(model: str, observations: Sequence[Sequence[Any] | Mapping[str, Any]]) -> Call[r.Observed]:
    """Learn a batch of (user, item, score[, decision[, id]]) rows or objects; retried on failure
    only when every row has an idempotency key."""
    rows = [_observation(row) for row in observations]
    keyed = bool(rows) and all("id" in row for row in rows)
    return Call("POST", _model(model, "/observe"), r.Observed.from_json, json={"observations": rows}, idempotent=keyed)


def metrics(model: str) -> Call[r.ModelMetrics]:
    """The active version's prequential error (overall and in sliding windows), cache and admission figures."""
    return Call("GET", _model(model, "/metrics"), r.ModelMetrics.from_json)


def alerts(model: str) -> Call[dict[str, Any]]:
    """Alerts that say what to fix (deviations from the training data, drift), as the server sends
    them: each with its cause, threshold, state and suppression window (docs/monitoring.md)."""
    return Call("GET", _model(model, "/alerts"), dict)


def stats() -> Call[dict[str, Any]]:
    """The snapshot the dashboard polls: traffic by route and every model's and Clipper deployment's figures."""
    return Call("GET", "/stats", dict)


# ---- versions and retraining ---------------------------------------------------------------------
def versions(model: str) -> Call[r.Versions]:
    """Every version with its metadata and status, oldest first, and the active one."""
    return Call("GET", _model(model, "/versions"), r.Versions.from_json)


def version(model: str, version: str) -> Call[r.Version]:
    """One version: metadata, lineage (parent, data range, reason) and status."""
    return Call("GET", _model(model, f"/versions/{segment(version)}"), r.Version.from_json)


def activate(model: str, version: str) -> Call[str]:
    """Serve `version` from now on (promote or roll back); answers the active version."""
    path = _model(model, f"/versions/{segment(version)}/activate")
    return Call("POST", path, lambda d: str(d["active_version"]), timeout=LONG_S)


def retrain_status(model: str) -> Call[r.RetrainJob | None]:
    """The running or last retrain of the model (None if it never retrained)."""
    return Call("GET", _model(model, "/retrain"), lambda d: r._job(d["retrain"]))


def retrain(
    model: str, *, promote: str = "if_better", overrides: Mapping[str, Any] | None = None, wait: bool = False
) -> Plan[r.RetrainJob]:
    """Retrain θ from the base data and the log in the background (Conflict if one runs).
    `promote`: if_better (on the newest logged observations), always or never; `overrides`:
    training parameters (rank, reg, iterations, ...). With `wait`, answer once it finished."""
    body = _given(promote=promote, params=dict(overrides) if overrides else None)
    job: r.RetrainJob = yield Call(
        "POST", _model(model, "/retrain"), lambda d: r.RetrainJob.from_json(d["retrain"]), json=body
    )
    while wait and job.state == "running":
        yield Sleep(RETRAIN_POLL_S)
        last = yield retrain_status(model)
        job = last if last is not None else job
    return job


def policy(model: str) -> Call[r.RetrainPolicy]:
    """When the model retrains by itself."""
    return Call("GET", _model(model, "/policy"), lambda d: r.RetrainPolicy.from_json(d["policy"]))


def set_policy(model: str, policy: r.RetrainPolicy | Mapping[str, Any]) -> Call[r.RetrainPolicy]:
    """Replace the retraining policy (fields left out take their defaults, as in-process)."""
    body = policy.as_dict() if isinstance(policy, r.RetrainPolicy) else dict(policy)
    return Call("PUT", _model(model, "/policy"), lambda d: r.RetrainPolicy.from_json(d["policy"]), json=body)


def forget_user(user: Id, model: str | None = None) -> Call[r.ForgetReceipt]:
    """Remove a user from one model (or every model): state, log records, base data, versions."""
    path = f"/users/{segment(user)}" if model is None else _model(model, f"/users/{segment(user)}")
    return Call("DELETE", path, r.ForgetReceipt.from_json, timeout=LONG_S)


class VeloxVerbs:
    """veloxserve's own routes, for both clients."""

    health = verb(health)
    openapi = verb(openapi)
    prometheus = verb(prometheus)
    stats = verb(stats)
    models = verb(models)
    model_names = verb(model_names)
    describe = verb(describe)
    alerts = verb(alerts)
    predict = verb(predict)
    predict_many = verb(predict_many)
    predict_text = verb(predict_text)
    recommend = verb(recommend)
    top_k = verb(top_k)
    observe = verb(observe)
    observe_many = verb(observe_many)
    metrics = verb(metrics)
    versions = verb(versions)
    version = verb(version)
    activate = verb(activate)
    retrain = verb(retrain)
    retrain_status = verb(retrain_status)
    policy = verb(policy)
    set_policy = verb(set_policy)
    forget_user = verb(forget_user)
