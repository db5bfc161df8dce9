"""The verbs of the pipeline routes (docs/pipelines.md), each once, named as the route table's
handlers are: list_pipelines, deploy_pipeline, describe_pipeline, remove_pipeline,
pipeline_predict, pipeline_observe. Answers are the server's JSON objects. Deploying profiles and
starts every stage: a long timeout, never repeated."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from veloxserve.client.wire import Call, segment, verb

DEPLOY_S = 600.0  # a deploy profiles every stage whose model version has no profile yet, then starts it


def _given(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def list_pipelines() -> Call[dict[str, Any]]:
    """Deployed pipelines: plans, stages, tuner actions."""
    return Call("GET", "/pipelines", dict)


def deploy_pipeline(spec: Mapping[str, Any]) -> Call[dict[str, Any]]:
    """Deploy a pipeline declared as a mapping (what `veloxserve.pipelines.spec.load_file` reads
    from a TOML or JSON file): checked, profiled, planned, started (admin)."""
    return Call("POST", "/pipelines", dict, json=dict(spec), timeout=DEPLOY_S)


def describe_pipeline(name: str) -> Call[dict[str, Any]]:
    """One pipeline: plan, stages, latency, the tuner's scale actions."""
    return Call("GET", f"/pipelines/{segment(name)}", dict)


def remove_pipeline(name: str) -> Call[dict[str, Any]]:
    """Stop a pipeline's stages and forget it (admin)."""
    return Call("DELETE", f"/pipelines/{segment(name)}", dict, timeout=DEPLOY_S)


def pipeline_predict(name: str, input: Any, *, user: str | int | None = None) -> Call[dict[str, Any]]:
    """A prediction through the pipeline within its objective (late stages flagged `degraded`)."""
    return Call("POST", f"/pipelines/{segment(name)}/predict", dict, json=_given(input=input, user=user))


def pipeline_observe(name: str, input: Any, label: Any, *, user: str | int | None = None) -> Call[dict[str, Any]]:
    """Feedback, logged durably and learned by the pipeline's Velox stages."""
    body = _given(input=input, label=label, user=user)
    return Call("POST", f"/pipelines/{segment(name)}/observe", dict, json=body)


class PipelineVerbs:
    """The pipeline routes, for both clients."""

    list_pipelines = verb(list_pipelines)
    deploy_pipeline = verb(deploy_pipeline)
    describe_pipeline = verb(describe_pipeline)
    remove_pipeline = verb(remove_pipeline)
    pipeline_predict = verb(pipeline_predict)
    pipeline_observe = verb(pipeline_observe)
