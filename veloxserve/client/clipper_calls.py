"""The verbs of Clipper's routes (model containers and applications), each once, named as the
route table's handlers are (api/routes.py): deploy, list_containers, describe_container, scale,
rollback, remove_container; create_app, list_apps, describe_app, remove_app, app_predict,
app_observe. The in-process `veloxserve.clipper.sync.Clipper` has the same operations under the
runtime's names (its `predict`/`observe` would clash with a model's here). Deploying, scaling and
rolling back start container processes: they get a long timeout and are never repeated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from veloxserve.client import results as r
from veloxserve.client.wire import Call, segment, verb

CONTAINERS_S = 600.0  # a deploy copies the model file, starts and probes every replica
SERVERS_DEFAULT: Any = type("ServersDefault", (), {"__repr__": lambda self: "SERVERS_DEFAULT"})()


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def list_containers() -> Call[list[r.Deployment]]:
    """Deployed models: versions, replicas, batch sizes, queues, cache."""
    return Call("GET", "/containers", lambda d: [r.Deployment.from_json(m) for m in d["models"]])


def deploy(
    name: str,
    framework: str,
    model: str,
    *,
    method: str | None = None,
    replicas: int | None = None,
    objective_ms: float | None = None,
    delay_ms: float | None = None,
    adaptive: bool | None = None,
    max_batch: int | None = None,
    hang_timeout_s: float | None = None,
    sample: Any = None,
    approximate: dict[str, Any] | None = None,
) -> Call[r.Deployment]:
    """Deploy a model file (callable, sklearn, torch, onnx) that is on the server, in
    <home>/models-in/ or a `serve --model-dir`, as a new version in container processes (admin:
    loading a pickle or torch file runs its code). Options left None take the server's defaults."""
    body = _given(
        name=name,
        framework=framework,
        model=model,
        method=method,
        replicas=replicas,
        objective_ms=objective_ms,
        delay_ms=delay_ms,
        adaptive=adaptive,
        max_batch=max_batch,
        hang_timeout_s=hang_timeout_s,
        sample=sample,
        approximate=approximate,
    )
    return Call("POST", "/containers", r.Deployment.from_json, json=body, timeout=CONTAINERS_S)


def describe_container(name: str) -> Call[r.Deployment]:
    """One deployed model."""
    return Call("GET", f"/containers/{segment(name)}", r.Deployment.from_json)


def scale(name: str, replicas: int) -> Call[r.Deployment]:
    """Set the number of container replicas."""
    path = f"/containers/{segment(name)}/scale"
    return Call("POST", path, r.Deployment.from_json, json={"replicas": replicas}, timeout=CONTAINERS_S)


def rollback(name: str, version: str | None = None) -> Call[r.Deployment]:
    """Serve the previous version (or `version`)."""
    path = f"/containers/{segment(name)}/rollback"
    return Call("POST", path, r.Deployment.from_json, json=_given(version=version), timeout=CONTAINERS_S)


def remove_container(name: str) -> Call[str]:
    """Stop a model's containers and delete its versions; answers the name removed."""
    return Call("DELETE", f"/containers/{segment(name)}", r.removed, timeout=CONTAINERS_S)


def list_apps() -> Call[list[r.App]]:
    """Applications and their policies' state."""
    return Call("GET", "/apps", lambda d: [r.App.from_json(a) for a in d["apps"]])


def create_app(
    name: str,
    models: Sequence[str],
    *,
    policy: str | None = None,
    objective_ms: float | None = None,
    default: Any = SERVERS_DEFAULT,
    loss: str | None = None,
    params: Mapping[str, float] | None = None,
    seed: int | None = None,
) -> Call[r.App]:
    """An application over deployed models: policy single, exp3, exp4 or personalised; an answer
    within `objective_ms`, else `default` (any JSON, null included; the server's 0.0 if not given);
    `loss` zero_one, absolute or squared."""
    body = _given(
        name=name,
        models=list(models),
        policy=policy,
        objective_ms=objective_ms,
        loss=loss,
        params=dict(params) if params else None,
        seed=seed,
    )
    if default is not SERVERS_DEFAULT:
        body["default"] = default
    return Call("POST", "/apps", r.App.from_json, json=body)


def describe_app(name: str) -> Call[r.App]:
    """One application."""
    return Call("GET", f"/apps/{segment(name)}", r.App.from_json)


def remove_app(name: str) -> Call[str]:
    """Remove an application; answers the name removed."""
    return Call("DELETE", f"/apps/{segment(name)}", r.removed)


def app_predict(app: str, input: Any, *, user: str | int | None = None) -> Call[r.AppPrediction]:
    """A prediction within the application's latency objective (late models replaced by their mean
    output; with no model in time, the default, `default=True`)."""
    return Call("POST", f"/apps/{segment(app)}/predict", r.AppPrediction.from_json, json=_given(input=input, user=user))


def app_observe(app: str, input: Any, label: Any, *, user: str | int | None = None) -> Call[r.AppObserved]:
    """Feedback: the application's policy learns from the models' outputs on `input` against `label`."""
    body = _given(input=input, label=label, user=user)
    return Call("POST", f"/apps/{segment(app)}/observe", r.AppObserved.from_json, json=body)


class ClipperVerbs:
    """Clipper's routes, for both clients."""

    list_containers = verb(list_containers)
    deploy = verb(deploy)
    describe_container = verb(describe_container)
    scale = verb(scale)
    rollback = verb(rollback)
    remove_container = verb(remove_container)
    list_apps = verb(list_apps)
    create_app = verb(create_app)
    describe_app = verb(describe_app)
    remove_app = verb(remove_app)
    app_predict = verb(app_predict)
    app_observe = verb(app_observe)
