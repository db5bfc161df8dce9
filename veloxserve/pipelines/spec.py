"""A pipeline as declared: stages (deployed models), the edges between them, the objective.

Declared in a small TOML or JSON file (`veloxserve pipeline deploy FILE`) or an API body, e.g.

    name = "moderation"
    objective_ms = 80
    edges = [["featurise", "linear"], ["featurise", "forest"], ["linear", "correct"], ["forest", "correct"]]
    [[stages]]
    name = "featurise"
    model = "hashing-svd"        # a model deployed with `veloxserve deploy` (a Clipper container)
    [[stages]]
    name = "correct"
    model = "combine"
    default = 0.5                # answered in its place when it is late or failed and has no mean yet

A stage's input is its parents' outputs concatenated (each flattened, in the order of `edges`);
a source stage (no parents) gets the request's input. The pipeline's answer is its one sink's
output. A stage `velox:<model>` is a Velox model's predict: a source stage that scores the
request's input as an item id for the request's `user` (the personalised stage), one number.

Everything here is checked before anything is deployed: structure (`parse_spec`), then against
what is deployed (`check_against`): shapes between stages from the deployed models' probed shapes
(clipper/shapes.py). Each refusal is an InvalidInput (400) naming the stage and why, but a model
that is not deployed, which is a ModelNotFound (404) naming the stage, as for POST /apps: the
declaration is well formed, what it names does not exist.
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veloxserve.clipper.shapes import show as _show
from veloxserve.errors import InvalidInput, ModelNotFound, invalid_parameter

VELOX = "velox:"
MAX_STAGES = 32
MAX_BATCH = 1024
MAX_REPLICAS = 64
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_STAGE_KEYS = {"name", "model", "default", "batch_size", "replicas", "aimd"}
_SPEC_KEYS = {"name", "objective_ms", "stages", "edges", "plan", "autoscale", "rate_qps", "cv"}
PLANS = ("inferline", "fixed")


@dataclass(frozen=True)
class StageSpec:
    """One stage. `batch_size` and `replicas` are used as given when the pipeline's plan is
    "fixed" (else the planner chooses them); `aimd` batches adaptively (Clipper) instead."""

    name: str
    model: str
    default: Any = None
    batch_size: int = 1
    replicas: int = 1
    aimd: bool = False

    @property
    def velox_model(self) -> str | None:
        return self.model.removeprefix(VELOX) if self.model.startswith(VELOX) else None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "default": self.default,
            "batch_size": self.batch_size,
            "replicas": self.replicas,
            "aimd": self.aimd,
        }


@dataclass(frozen=True)
class PipelineSpec:
    name: str
    objective_ms: float
    stages: tuple[StageSpec, ...]
    edges: tuple[tuple[str, str], ...] = ()
    plan: str = "inferline"
    autoscale: bool = True
    rate_qps: float = 20.0  # the arrival process the planner provisions for: Gamma, this rate and CV
    cv: float = 1.0
    _parents: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for stage in self.stages:
            self._parents[stage.name] = [a for a, b in self.edges if b == stage.name]

    def stage(self, name: str) -> StageSpec:
        return next(s for s in self.stages if s.name == name)

    def parents(self, name: str) -> list[str]:
        return self._parents[name]

    def children(self, name: str) -> list[str]:
        return [b for a, b in self.edges if a == name]

    @property
    def sources(self) -> list[str]:
        return [s.name for s in self.stages if not self._parents[s.name]]

    @property
    def sink(self) -> str:
        return next(s.name for s in self.stages if not self.children(s.name))

    def order(self) -> list[str]:
        """The stages in topological order (parse_spec refused cycles)."""
        done: list[str] = []
        while len(done) < len(self.stages):
            done += [s.name for s in self.stages if s.name not in done and set(self._parents[s.name]) <= set(done)]
        return done

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "objective_ms": self.objective_ms,
            "stages": [s.to_json() for s in self.stages],
            "edges": [list(e) for e in self.edges],
            "plan": self.plan,
            "autoscale": self.autoscale,
            "rate_qps": self.rate_qps,
            "cv": self.cv,
        }


def load_file(path: Path | str) -> dict[str, Any]:
    """A pipeline file's contents: TOML (.toml) or JSON (anything else)."""
    path = Path(path)
    try:
        if path.suffix == ".toml":
            return tomllib.loads(path.read_text())
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"Cannot read the pipeline file {str(path)!r}: {exc}. Give a TOML or JSON file.") from None
    if not isinstance(data, dict):
        raise InvalidInput(f"The pipeline file {str(path)!r} must hold one object, got {type(data).__name__}.")
    return data


def parse_spec(
    data: Any, where: str = "deploy_pipeline", known: Callable[[StageSpec], bool] | None = None
) -> PipelineSpec:
    """The declared pipeline, refused (InvalidInput naming the stage) unless it is a DAG with one
    sink whose names, numbers and edges make sense. With `known` (is this stage's model served?),
    a stage naming a model that is not is a ModelNotFound (404), checked as soon as the stages are
    read: what a well-formed declaration names must exist before its graph is judged."""
    if not isinstance(data, Mapping):
        raise invalid_parameter("body", where, "an object with name, objective_ms, stages and edges", data)
    unknown = set(data) - _SPEC_KEYS
    if unknown:
        raise invalid_parameter("body", where, f"only the fields {sorted(_SPEC_KEYS)}", sorted(unknown))
    name = _name(data.get("name"), "name", where)
    objective: Any = data.get("objective_ms")
    if not _number(objective) or not objective > 0:
        raise invalid_parameter("objective_ms", where, "the end-to-end p99 objective in ms, a number > 0", objective)
    plan = data.get("plan", "inferline")
    if plan not in PLANS:
        raise invalid_parameter("plan", where, " or ".join(PLANS), plan)
    autoscale = data.get("autoscale", True)
    if not isinstance(autoscale, bool):
        raise invalid_parameter("autoscale", where, "true or false", autoscale)
    arrival = {}
    for key, default in (("rate_qps", 20.0), ("cv", 1.0)):
        value = data.get(key, default)
        if not _number(value) or not 0 < value <= 1e6:
            raise invalid_parameter(key, where, "a number in (0, 1e6]", value)
        arrival[key] = float(value)
    raw_stages = data.get("stages")
    if not isinstance(raw_stages, list) or not 1 <= len(raw_stages) <= MAX_STAGES:
        raise invalid_parameter("stages", where, f"a list of 1 to {MAX_STAGES} stage objects", raw_stages)
    stages = tuple(_stage(raw, i, where) for i, raw in enumerate(raw_stages))
    if known is not None:
        for stage in stages:
            if not known(stage):
                _not_found(stage)
    names = [s.name for s in stages]
    duplicate = next((n for n in names if names.count(n) > 1), None)
    if duplicate is not None:
        raise invalid_parameter("stages", where, "distinct stage names", f"stage {duplicate!r} twice")
    edges = _edges(data.get("edges", []), set(names), where)
    spec = PipelineSpec(name, float(objective), stages, edges, plan, autoscale, **arrival)
    _check_acyclic(spec)
    sinks = [s.name for s in stages if not spec.children(s.name)]
    if len(sinks) != 1:
        raise InvalidInput(
            f"A pipeline answers with the output of one final stage, but the stages {sinks} feed no other stage. "
            "Add edges so that every stage leads to one final stage.",
            field="edges",
        )
    for stage in stages:
        if stage.velox_model is not None and spec.parents(stage.name):
            raise InvalidInput(
                f"Stage {stage.name!r} is a Velox model ({stage.model}), which scores the request's item for its "
                f"user, so it takes the request's input, but it has parents {spec.parents(stage.name)}. Make it "
                "a source stage (no edges into it).",
                field="edges",
            )
    return spec


# ---- against what is deployed -------------------------------------------------------------------
@dataclass(frozen=True)
class ModelShapes:
    """What a stage's model takes and gives (clipper/shapes.py: a list of dimensions, a JSON
    type's name for non-numeric values, None when never probed)."""

    input_shape: list[int] | str | None
    output_shape: list[int] | str | None


def check_against(
    spec: PipelineSpec, clipper: Callable[[str], ModelShapes | None], velox: Callable[[str], bool]
) -> dict[str, ModelShapes]:
    """Each stage's shapes, refusing a model that is not deployed (ModelNotFound, 404) and a stage whose input (its parents' outputs, concatenated) does not have its model's input
    shape. `clipper(name)` is a deployed model's shapes or None; `velox(name)` whether a Velox
    model of that name is served."""
    shapes: dict[str, ModelShapes] = {}
    for stage in spec.stages:
        model = stage.velox_model
        if model is not None:
            if not velox(model):
                _not_found(stage)
            shapes[stage.name] = ModelShapes(None, [])
            continue
        found = clipper(stage.model)
        if found is None:
            _not_found(stage)
        else:
            shapes[stage.name] = found
    inputs = {n: shapes[n].input_shape for n in spec.sources if shapes[n].input_shape is not None}
    if len({str(v) for v in inputs.values()}) > 1:
        described = ", ".join(f"{n!r} takes {_show(v)}" for n, v in inputs.items())
        raise InvalidInput(
            f"The source stages all get the request's input, so they must take one shape, but {described}. "
            "Put a stage in front that gives each what it takes, or deploy models of one input shape.",
            field="stages",
        )
    for name in spec.order():
        parents = spec.parents(name)
        expected = shapes[name].input_shape
        if not parents or expected is None:
            continue
        given = [shapes[p].output_shape for p in parents]
        if any(g is None for g in given):
            continue  # never probed: the first query will tell
        width = concat_width(given)
        if len(given) == 1 and given[0] == expected:
            continue  # one parent's output goes in as it is
        if width is None or not isinstance(expected, list) or [width] != expected:
            described = ", ".join(f"{p!r} gives {_show(g)}" for p, g in zip(parents, given))
            raise InvalidInput(
                f"Stage {name!r} (model {spec.stage(name).model!r}) takes inputs of shape {_show(expected)}, but "
                f"its parents' outputs concatenated are {_show([width]) if width is not None else 'not numeric'} "
                f"({described}). Change the edges into {name!r} or deploy a model that takes that shape.",
                field="edges",
            )
    return shapes


def concat_width(shapes: list[Any]) -> int | None:
    """How many numbers the parents' outputs make, flattened and concatenated; None if one is not numeric."""
    if not all(isinstance(s, list) for s in shapes):
        return None
    return sum(math.prod(s) for s in shapes)


# ---- helpers --------------------------------------------------------------------------------------
def _not_found(stage: StageSpec) -> None:
    if stage.velox_model is not None:
        raise ModelNotFound(
            f"Stage {stage.name!r} names the Velox model {stage.velox_model!r}, which this server does not serve; "
            "train one under the home (veloxserve train) or fix the name.",
            field="stages",
        )
    raise ModelNotFound(
        f"Stage {stage.name!r} names the model {stage.model!r}, which is not deployed; deploy it first "
        "(veloxserve deploy / POST /containers) or fix the name.",
        field="stages",
    )


def _stage(raw: Any, index: int, where: str) -> StageSpec:
    field_ = f"stages[{index}]"
    if not isinstance(raw, Mapping):
        raise invalid_parameter(field_, where, "an object with name and model", raw)
    unknown = set(raw) - _STAGE_KEYS
    if unknown:
        raise invalid_parameter(field_, where, f"only the fields {sorted(_STAGE_KEYS)}", sorted(unknown))
    name = _name(raw.get("name"), f"{field_}.name", where)
    model: Any = raw.get("model")
    bare = model.removeprefix(VELOX) if isinstance(model, str) else None
    if bare is None or not _NAME.match(bare):
        raise invalid_parameter(
            f"{field_}.model", where, f"a deployed model's name or velox:<model> (stage {name!r})", model
        )
    numbers = {}
    for key, limit in (("batch_size", MAX_BATCH), ("replicas", MAX_REPLICAS)):
        value = raw.get(key, 1)
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= limit:
            raise invalid_parameter(f"{field_}.{key}", where, f"an integer in [1, {limit}] (stage {name!r})", value)
        numbers[key] = value
    aimd = raw.get("aimd", False)
    if not isinstance(aimd, bool):
        raise invalid_parameter(f"{field_}.aimd", where, f"true or false (stage {name!r})", aimd)
    return StageSpec(name, model, raw.get("default"), numbers["batch_size"], numbers["replicas"], aimd)


def _edges(raw: Any, names: set[str], where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, list):
        raise invalid_parameter("edges", where, "a list of [from, to] stage-name pairs", raw)
    edges: list[tuple[str, str]] = []
    for edge in raw:
        if not (isinstance(edge, list) and len(edge) == 2 and all(isinstance(e, str) for e in edge)):
            raise invalid_parameter("edges", where, "[from, to] pairs of stage names", edge)
        for end in edge:
            if end not in names:
                raise InvalidInput(
                    f"The edge {edge} names the stage {end!r}, which is not among the stages {sorted(names)}; "
                    "declare it under stages or fix the edge.",
                    field="edges",
                )
        if edge[0] == edge[1]:
            raise InvalidInput(f"Stage {edge[0]!r} feeds itself (edge {edge}): a pipeline is acyclic.", field="edges")
        if (edge[0], edge[1]) in edges:
            raise invalid_parameter("edges", where, "each edge once", edge)
        edges.append((edge[0], edge[1]))
    return tuple(edges)


def _check_acyclic(spec: PipelineSpec) -> None:
    """InvalidInput naming a cycle's stages, found by peeling off stages with no remaining parents."""
    remaining = {s.name: set(spec.parents(s.name)) for s in spec.stages}
    while remaining:
        free = [n for n, parents in remaining.items() if not parents]
        if not free:
            start = min(remaining)
            cycle, node = [start], start
            while True:  # walk back through parents still on a cycle until a stage repeats
                node = min(remaining[node])
                if node in cycle:
                    cycle = cycle[cycle.index(node) :] + [node]
                    break
                cycle.append(node)
            path = " <- ".join(cycle)
            raise InvalidInput(
                f"Stage {cycle[0]!r} is on a cycle ({path}): a pipeline is a DAG. Remove one of these edges.",
                field="edges",
            )
        for name in free:
            del remaining[name]
        for parents in remaining.values():
            parents.difference_update(free)


def _name(value: Any, field_: str, where: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise invalid_parameter(field_, where, "1-64 letters, digits, '_', '.' or '-', not starting with '_.-'", value)
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
