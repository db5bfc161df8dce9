"""The route table: every HTTP route of veloxserve and Clipper, declared once.

Each `Route` says its method, path template, handler, metric label, who may call it, whether
admission control sheds it under overload, and its request and response types. Everything else
is derived from ROUTES: the dispatch lookup and the methods a 405 allows (`Router`), the auth
tables (`ADMIN_ROUTES`, `MODEL_ROUTES`), the shed routes, the metric labels and the OpenAPI
document (openapi.py). A new route is one entry here and one handler.

Dispatch stays a compiled dict lookup (bench/bench_http.py): a path's segments at the template's
literal positions key a dict, so a request costs one or two dict lookups whatever the table's size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from operator import itemgetter
from typing import Any

from veloxserve.api import requests as rq
from veloxserve.api.static import ASSETS
from veloxserve.errors import NotFound, no_route
from veloxserve.ids import ID_PATTERN, MAX_ID_LENGTH


class Access(Enum):
    OPEN = "open"  # anyone
    MODEL_KEY = "model key"  # open, unless the model (or application) is keyed: then its key or an admin token
    ADMIN = "admin"  # an admin token


@dataclass(frozen=True, eq=False)  # hashed by identity: each route is one object of the table
class Route:
    method: str
    path: str  # template: "/models/{name}/predict"
    handler: str  # the handler's name on the app's handler objects (handlers.py, clipper_routes.py)
    label: str  # the metric label: bounded, never a name or an id
    summary: str
    access: Access = Access.OPEN
    admitted: bool = False  # the data plane: admission control may shed it (serving/admission.py)
    query: type | None = None  # a msgspec Struct of the query string
    body: type | str | None = None  # a msgspec Struct, or the name of one in requests.BatchTypes
    body_required: bool = True
    response: str = "object"  # a key of schemas.RESPONSES
    status: int = 200
    errors: tuple[int, ...] = ()
    params: Mapping[str, dict[str, Any]] = field(default_factory=dict)  # path parameters' schemas by name
    clipper: bool = False  # served by the Clipper runtime
    page: bool = False  # the web pages and what they poll (api/dashboard.py)
    pipeline: bool = False  # served by the pipeline runtime (veloxserve/pipelines/, api/pipeline_routes.py)

    @property
    def segments(self) -> list[str]:
        return self.path.split("/")

    model_scoped: bool = field(init=False)  # under /models/{name}: an unknown model is a 404 before anything is read
    where: str = field(init=False)  # how error messages name the operation: predict, top_k, deploy, create_app, …

    def __post_init__(self) -> None:
        object.__setattr__(self, "model_scoped", self.path.startswith("/models/{name}"))
        where = self.handler if self.pipeline else self.handler.removeprefix("app_") if self.clipper else self.label
        object.__setattr__(self, "where", where)

    @property
    def path_params(self) -> list[str]:
        return [s[1:-1] for s in self.segments if s.startswith("{")]


_ANY_NAME: dict[str, Any] = {"type": "string"}
_VELOX: dict[str, dict[str, Any]] = {
    "name": _ANY_NAME,
    "version": _ANY_NAME,
    "user": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_ID_LENGTH,
        "pattern": ID_PATTERN,
        "description": "percent-encoded like every path parameter (the user `a/b` is `a%2Fb`); decoded once",
    },
}
_CLIPPER: dict[str, dict[str, Any]] = {
    "name": {"type": "string", "pattern": rq.NAME_PATTERN},
    "app": {"type": "string", "pattern": rq.NAME_PATTERN},
}
_ASSETS: dict[str, dict[str, Any]] = {"asset": {"enum": sorted(ASSETS)}}
_OPEN, _KEY, _ADMIN = Access.OPEN, Access.MODEL_KEY, Access.ADMIN

# A table: one route per entry reads better than one argument per line.
# fmt: off
ROUTES: tuple[Route, ...] = (
    Route("GET", "/healthz", "healthz", "/healthz", "Liveness; `degraded` says what to fix while serving goes on",
          response="health"),
    Route("GET", "/openapi.json", "openapi", "/openapi.json", "This document", response="object"),
    Route("GET", "/metrics", "metrics", "/metrics", "Prometheus metrics (text exposition format)", response="text"),
    Route("GET", "/models", "list_models", "/models", "Models and their versions"),
    Route("GET", "/models/{name}", "show_model", "/models/{name}", "One model: active version and all versions' "
          "metadata", errors=(404,), params=_VELOX),
    Route("GET", "/models/{name}/predict", "predict_one", "predict", "Score one (user, item), or one (user, text) for "
          "an item known by its text (give `item` or `text`)", _KEY, True, query=rq.PredictQuery, response="score",
          errors=(400, 404), params=_VELOX),
    Route("POST", "/models/{name}/predict", "predict_batch", "predict", "Score a batch of (user, item) or (user, text) "
          "queries", _KEY, True, body="predict_batch", response="scores", errors=(400, 404), params=_VELOX),
    Route("GET", "/models/{name}/top_k", "top_k_get", "top_k", "The k best items for a user", _KEY, True,
          query=rq.TopKQuery, response="top_k", errors=(400, 404), params=_VELOX),
    Route("POST", "/models/{name}/top_k", "top_k_post", "top_k", "The k best items for a user among candidates", _KEY,
          True, body="top_k_body", response="top_k", errors=(400, 404), params=_VELOX),
    Route("POST", "/models/{name}/observe", "observe", "observe", "Report what users did; 200 only once the "
          "observations are durable", _KEY, True, body="observe", response="observed", errors=(400, 404, 503),
          params=_VELOX),
    Route("GET", "/models/{name}/metrics", "model_metrics", "metrics", "Prequential error of the active version: each "
          "observation predicted, then learned", errors=(404,), params=_VELOX),
    Route("GET", "/models/{name}/alerts", "alerts", "alerts", "Alerts that say what to fix: training-vs-serving "
          "deviations (unknown items, new users, scores, features) and drift detectors on the prequential error, each "
          "with its cause, threshold and suppression window", response="alerts", errors=(404,), params=_VELOX),
    Route("GET", "/models/{name}/versions", "versions", "versions", "All versions of a model and their metadata",
          errors=(404,), params=_VELOX),
    Route("GET", "/models/{name}/versions/{version}", "version", "version", "One version: metadata, lineage (parent, "
          "data range, reason) and status", errors=(404,), params=_VELOX),
    Route("POST", "/models/{name}/versions/{version}/activate", "activate", "activate", "Serve this version (promote "
          "or roll back); users are rebuilt against it, no feedback is lost", _ADMIN, errors=(404, 409, 503, 504),
          params=_VELOX),
    Route("POST", "/models/{name}/retrain", "retrain", "retrain", "Retrain θ from the base data and the log in the "
          "background", _ADMIN, body=rq.RetrainRequest, body_required=False, status=202, errors=(400, 404, 409, 503),
          params=_VELOX),
    Route("GET", "/models/{name}/retrain", "retrain_status", "retrain", "The running or last retrain of this model",
          errors=(404,), params=_VELOX),
    Route("GET", "/models/{name}/policy", "policy", "policy", "When the model retrains by itself", errors=(404,),
          params=_VELOX),
    Route("PUT", "/models/{name}/policy", "set_policy", "policy", "Set the retraining policy: schedule and drift "
          "detection", _ADMIN, body=rq.RetrainPolicyRequest, errors=(400, 404), params=_VELOX),
    Route("DELETE", "/users/{user}", "forget_everywhere", "forget", "Forget a user in every model; answers with a "
          "receipt of what was removed", _ADMIN, errors=(400, 503, 504), params=_VELOX),
    Route("DELETE", "/models/{name}/users/{user}", "forget_in_model", "forget", "Forget a user in one model; answers "
          "with a receipt of what was removed", _ADMIN, errors=(400, 404, 503, 504), params=_VELOX),
    # ---- Clipper: model containers and applications (clipper_routes.py) ----
    Route("GET", "/containers", "list_containers", "/containers", "Deployed models: versions, replicas, batch sizes, "
          "queues, cache", clipper=True),
    Route("POST", "/containers", "deploy", "/containers", "Deploy a model file as a new version in container "
          "processes. Loading a pickle (callable, sklearn) or torch file runs its code with the server's rights",
          _ADMIN, body=rq.DeployRequest, errors=(400, 403, 404, 409, 503), clipper=True),
    Route("GET", "/containers/{name}", "describe_container", "/containers/{name}", "One deployed model", errors=(404,),
          params=_CLIPPER, clipper=True),
    Route("DELETE", "/containers/{name}", "remove_container", "/containers/{name}", "Stop a model's containers and "
          "delete its versions", _ADMIN, errors=(404, 409), params=_CLIPPER, clipper=True),
    Route("POST", "/containers/{name}/scale", "scale", "/containers/{name}/scale", "Set the number of container "
          "replicas", _ADMIN, body=rq.ScaleRequest, errors=(400, 404, 503), params=_CLIPPER, clipper=True),
    Route("POST", "/containers/{name}/rollback", "rollback", "/containers/{name}/rollback", "Serve the previous (or a "
          "named) version", _ADMIN, body=rq.RollbackRequest, body_required=False, errors=(400, 404, 409, 503),
          params=_CLIPPER, clipper=True),
    Route("GET", "/apps", "list_apps", "/apps", "Applications and their policies' state", clipper=True),
    Route("POST", "/apps", "create_app", "/apps", "Create an application over deployed models", _ADMIN,
          body=rq.CreateAppRequest, errors=(400, 404, 409), clipper=True),
    Route("GET", "/apps/{app}", "describe_app", "/apps/{app}", "One application", errors=(404,), params=_CLIPPER,
          clipper=True),
    Route("DELETE", "/apps/{app}", "remove_app", "/apps/{app}", "Remove an application", _ADMIN, errors=(404,),
          params=_CLIPPER, clipper=True),
    Route("POST", "/apps/{app}/predict", "app_predict", "/apps/{app}/predict", "A prediction bounded by the "
          "application's latency objective: late models are replaced by their mean output, and with no model in "
          "time the answer is the default output with \"default\": true", _KEY, body=rq.AppPredictRequest,
          errors=(400, 404), params=_CLIPPER, clipper=True),
    Route("POST", "/apps/{app}/observe", "app_observe", "/apps/{app}/observe", "Feedback: the policy learns from the "
          "label", _KEY, body=rq.AppObserveRequest, errors=(400, 404, 503), params=_CLIPPER, clipper=True),
    # ---- Pipelines under one end-to-end objective (pipeline_routes.py, docs/pipelines.md) ----
    Route("GET", "/pipelines", "list_pipelines", "/pipelines", "Deployed pipelines: plans, stages, tuner actions",
          pipeline=True),
    Route("POST", "/pipelines", "deploy_pipeline", "/pipelines", "Deploy a pipeline of deployed models: checked (DAG, "
          "shapes, objective), profiled, planned, started", _ADMIN, body=rq.DeployPipelineRequest,
          errors=(400, 404, 409, 503), pipeline=True),
    Route("GET", "/pipelines/{name}", "describe_pipeline", "/pipelines/{name}", "One pipeline: plan, stages, latency, "
          "tuner actions", errors=(404,), params=_CLIPPER, pipeline=True),
    Route("DELETE", "/pipelines/{name}", "remove_pipeline", "/pipelines/{name}", "Stop a pipeline's stages and forget "
          "it", _ADMIN, errors=(404,), params=_CLIPPER, pipeline=True),
    Route("POST", "/pipelines/{name}/predict", "pipeline_predict", "/pipelines/{name}/predict", "A prediction through "
          "the pipeline within its objective: a late or failed stage is replaced by its mean or default output "
          "(flagged `degraded`)", _KEY, body=rq.PipelinePredictRequest, response="pipeline_answer", errors=(400, 404),
          params=_CLIPPER, pipeline=True),
    Route("POST", "/pipelines/{name}/observe", "pipeline_observe", "/pipelines/{name}/observe", "Feedback: logged "
          "durably, learned by the Velox stages", _KEY, body=rq.PipelineObserveRequest, errors=(400, 404, 503),
          params=_CLIPPER, pipeline=True),
    # ---- web pages: the dashboard and the API documentation (dashboard.py, static.py) ----
    Route("GET", "/stats", "stats", "/stats", "What the dashboard polls: requests, shedding and latency by route, "
          "and per model and Clipper deployment and application the figures of their own routes", page=True),
    Route("GET", "/dashboard", "dashboard", "/dashboard", "The dashboard (HTML): models, versions, live traffic, "
          "Clipper", response="html", page=True),
    Route("GET", "/docs", "docs", "/docs", "This document, rendered (HTML)", response="html", page=True),
    Route("GET", "/assets/{asset}", "asset", "/assets/{asset}", "A file the pages load (JS, CSS, licences), "
          "vendored in the package", response="asset", errors=(404,), params=_ASSETS, page=True),
)
# fmt: on

ADMIN_ROUTES = frozenset((r.method, r.label) for r in ROUTES if r.access is Access.ADMIN)
MODEL_ROUTES = frozenset((r.method, r.label) for r in ROUTES if r.access is Access.MODEL_KEY)
OTHER = "other"  # the metric label of a request that matched no route


class Router:
    """The table compiled for dispatch: `match` answers a route and its path arguments, or raises
    404 (no such path) or 405 (the path exists, not with this method; the error lists the methods)."""

    def __init__(self, routes: tuple[Route, ...] = ROUTES) -> None:
        # by segment count: [(key of a path's literal segments, {key: {method: route}})]
        self._shapes: dict[int, list[tuple[Callable[[list[str]], Any], dict[Any, dict[str, Route]]]]] = {}
        self._args: dict[Route, Callable[[list[str]], list[str]]] = {}
        literals: list[tuple[tuple[int, tuple[int, ...]], dict[Any, dict[str, Route]]]] = []
        for route in routes:
            segments = route.segments
            literal = tuple(i for i, s in enumerate(segments) if not s.startswith("{"))
            self._args[route] = _getter([i for i, s in enumerate(segments) if s.startswith("{")])
            shapes = self._shapes.setdefault(len(segments), [])
            key_of = itemgetter(*literal)
            table = next((t for shape, t in literals if shape == (len(segments), literal)), None)
            if table is None:
                table = {}
                literals.append(((len(segments), literal), table))
                shapes.append((key_of, table))
            methods = table.setdefault(key_of(segments), {})
            if route.method in methods:
                raise ValueError(f"{route.method} {route.path} is declared twice")
            methods[route.method] = route

    def methods(self, parts: list[str]) -> dict[str, Route] | None:
        """The routes of a path (split on "/", segments decoded), by method; None if no template matches."""
        for key_of, table in self._shapes.get(len(parts), ()):
            methods = table.get(key_of(parts))
            if methods is not None:
                return methods
        return None

    def match(self, method: str, path: str, parts: list[str]) -> tuple[Route, list[str]]:
        methods = self.methods(parts)
        if methods is None:
            raise NotFound(f"No route {path}. See /openapi.json for the API.")
        route = methods.get(method)
        if route is None:
            if not all(self._args[next(iter(methods.values()))](parts)):
                raise NotFound(f"No route {path}. See /openapi.json for the API.")
            raise no_route(path, method, sorted(methods))
        args = self._args[route](parts)
        if not all(args):  # an empty name or id: /models//predict
            raise NotFound(f"No route {path}. See /openapi.json for the API.")
        return route, args

    def label(self, parts: list[str]) -> str:
        methods = self.methods(parts)
        return OTHER if methods is None else next(iter(methods.values())).label


def _getter(positions: list[int]) -> Callable[[list[str]], list[str]]:
    """A function taking a path's segments at `positions`, as a fresh list."""
    if not positions:
        return lambda parts: []
    if len(positions) == 1:
        only = positions[0]
        return lambda parts: [parts[only]]
    get = itemgetter(*positions)
    return lambda parts: list(get(parts))
