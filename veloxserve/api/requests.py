"""The typed requests of the HTTP API: msgspec structures that validate and describe the wire.

One structure per request shape. It is the validation (decoded straight from the body's bytes or
converted from the query string) and its JSON Schema is the OpenAPI document's, so the schema
states exactly what the server checks. Limits come from the running configuration: the batch
limit is `ServingConfig.max_batch` of the served Velox (the types are built per limit, once).

Why msgspec: bench/bench_validation.py measured it on the predict path against pydantic and
the former orjson + hand checks; it was the fastest of the three (see that script's output).

No `from __future__ import annotations` here: the structures are built inside a function and
their annotations must be real objects at class creation.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec import UNSET, Meta, Struct, UnsetType

from veloxserve.errors import InvalidInput, invalid_parameter
from veloxserve.ids import ID_PATTERN, MAX_ID_LENGTH
from veloxserve.serving.exploration import MAX_ALPHA, POLICIES
from veloxserve.serving.retraining import DRIFT_DETECTORS, ENGINES, PROMOTE, SPARK_MASTER
from veloxserve.serving.validation import MAX_TEXT_CHARS, TEXT_PATTERN

# An id as JSON: a non-empty string of printable characters, or an integer. "22" and 22 are one id.
IdText = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]
# Integer ids are 64-bit: the JSON decoders read larger integers as floats, which are not ids.
IdInt = Annotated[int, Meta(ge=-(2**63), le=2**63 - 1)]
Id = IdText | IdInt
Text = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_TEXT_CHARS,
        pattern=TEXT_PATTERN,
        description="an item's text, scored with the model's content features",
    ),
]
# In a query string the text is bounded by what the HTTP server takes in a request line (percent-
# encoded, a character can take 12 bytes): longer texts go in the body of POST predict.
MAX_QUERY_TEXT_CHARS = 4096
QueryText = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_QUERY_TEXT_CHARS,
        pattern=TEXT_PATTERN,
        description="an item's text, scored with the model's content features (longer texts: POST predict)",
    ),
]
PolicyName = Literal[POLICIES]  # type: ignore[valid-type]
Epsilon = Annotated[float, Meta(ge=0, le=1)]
Alpha = Annotated[float, Meta(ge=0, lt=MAX_ALPHA)]
Filter = Annotated[str, Meta(min_length=1, description="item attributes: name:value[|value][,name:value]")]
Positive = Annotated[float, Meta(gt=0)]
NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
Name = Annotated[str, Meta(pattern=NAME_PATTERN)]


class PredictQuery(Struct):
    """GET predict: an item by id, or (content features) by its text."""

    user: IdText
    item: IdText | UnsetType = UNSET
    text: QueryText | UnsetType = UNSET


class TopKQuery(Struct):
    user: IdText
    k: Annotated[int, Meta(ge=1)]
    exclude_seen: bool = False
    policy: PolicyName | UnsetType = UNSET
    epsilon: Epsilon | UnsetType = UNSET
    alpha: Alpha | UnsetType = UNSET
    filter: Filter | UnsetType = UNSET


class RetrainRequest(Struct, forbid_unknown_fields=True):
    promote: Literal[PROMOTE] = "if_better"  # type: ignore[valid-type]
    params: Annotated[dict[str, Any], Meta(description="training parameters: rank, reg, iterations, …")] | None = None


MAX_COUNT = 2**53  # counts of observations: beyond this they are not exact in a float (nor in a JSON reader)


class RetrainPolicyRequest(Struct, forbid_unknown_fields=True):
    """PUT policy: the fields to change; RetrainPolicy.from_dict checks their values."""

    every_observations: Annotated[int, Meta(ge=1, le=MAX_COUNT)] | None | UnsetType = UNSET
    every_seconds: Positive | None | UnsetType = UNSET
    drift: bool | UnsetType = UNSET
    drift_threshold: Positive | UnsetType = UNSET
    drift_delta: Annotated[float, Meta(ge=0)] | UnsetType = UNSET
    drift_min_instances: Annotated[int, Meta(ge=1, le=MAX_COUNT)] | UnsetType = UNSET
    promote: Literal[PROMOTE] | UnsetType = UNSET  # type: ignore[valid-type]
    drift_detector: Literal[DRIFT_DETECTORS] | UnsetType = UNSET  # type: ignore[valid-type]
    engine: Literal[ENGINES] | UnsetType = UNSET  # type: ignore[valid-type]
    # The schema says which URLs (schemathesis sends what it allows); RetrainPolicy.from_dict checks them again.
    spark_master: (
        Annotated[
            str,
            Meta(
                max_length=1024,
                pattern=f"^(?:{SPARK_MASTER.pattern})$",
                description="local, local[N], local[*] or spark://host:port[,host:port]",
            ),
        ]
        | UnsetType
    ) = UNSET
    spark_start_timeout: Positive | UnsetType = UNSET


# ---- Clipper ----------------------------------------------------------------------------------
Replicas = Annotated[int, Meta(ge=1, le=64)]
Framework = Literal["callable", "sklearn", "torch", "onnx"]


class ApproximateRequest(Struct, forbid_unknown_fields=True):
    """LSH settings for approximate caching of numeric inputs (docs/approximate-caching.md; config.py's
    ApproximateSettings checks the same); omitted: exact caching only."""

    family: Literal["cosine", "euclidean", "grid"] | UnsetType = UNSET
    tables: Annotated[int, Meta(ge=1, le=64)] | UnsetType = UNSET
    bits: Annotated[int, Meta(ge=1, le=64)] | UnsetType = UNSET
    width: Positive | UnsetType = UNSET
    radius: Annotated[float, Meta(ge=0)] | None | UnsetType = UNSET
    seed: Annotated[int, Meta(ge=0)] | UnsetType = UNSET


class DeployRequest(Struct, forbid_unknown_fields=True):
    """Options left null take the runtime's defaults (the CLI sends every option)."""

    name: Name
    framework: Framework
    model: Annotated[str, Meta(min_length=1, description="path of the model file on the server")]
    method: Annotated[str, Meta(pattern="^[A-Za-z_][A-Za-z0-9_]*$")] | None | UnsetType = UNSET
    replicas: Replicas | None | UnsetType = UNSET
    objective_ms: Positive | None | UnsetType = UNSET
    delay_ms: Annotated[float, Meta(ge=0)] | None | UnsetType = UNSET
    adaptive: bool | None | UnsetType = UNSET
    max_batch: Annotated[int, Meta(ge=1, le=65536)] | None | UnsetType = UNSET
    hang_timeout_s: Positive | None | UnsetType = UNSET
    sample: Annotated[
        Any,
        Meta(
            description="an example input: run once per replica at deploy time (warming it); "
            "its shape is the input shape queries are checked against"
        ),
    ] = UNSET
    approximate: ApproximateRequest | None | UnsetType = UNSET


class ScaleRequest(Struct, forbid_unknown_fields=True):
    replicas: Replicas


class RollbackRequest(Struct, forbid_unknown_fields=True):
    version: Annotated[str, Meta(pattern="^v[0-9]+$")] | UnsetType = UNSET


class AppPolicyParams(Struct, forbid_unknown_fields=True):
    eta: Positive | UnsetType = UNSET
    gamma: Annotated[float, Meta(gt=0, le=1)] | UnsetType = UNSET
    prior_precision: Positive | UnsetType = UNSET


class CreateAppRequest(Struct, forbid_unknown_fields=True):
    name: Name
    models: Annotated[list[Name], Meta(min_length=1, extra_json_schema={"uniqueItems": True})]
    policy: Literal["single", "exp3", "exp4", "personalised"] | UnsetType = UNSET
    objective_ms: Positive | UnsetType = UNSET
    default: Any = UNSET
    loss: Literal["zero_one", "absolute", "squared"] | UnsetType = UNSET
    params: AppPolicyParams | UnsetType = UNSET
    seed: Annotated[int, Meta(ge=0, le=2**32 - 1)] | UnsetType = UNSET


# Which params each Clipper policy takes (single also when no policy is named): the schema says it.
APP_POLICY_PARAMS = {"single": [], "exp3": ["eta", "gamma"], "exp4": ["eta"], "personalised": ["prior_precision"]}
ClipperUser = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)] | int


class AppPredictRequest(Struct, forbid_unknown_fields=True):
    input: Any
    user: ClipperUser | UnsetType = UNSET


class AppObserveRequest(Struct, forbid_unknown_fields=True):
    input: Any
    label: Any
    user: ClipperUser | UnsetType = UNSET


# ---- Pipelines (InferLine) -------------------------------------------------------------------------
class PipelineStage(Struct, forbid_unknown_fields=True):
    name: Name
    model: Annotated[
        str,
        Meta(
            pattern="^(velox:)?[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$",
            description="a deployed Clipper model, or velox:<model> (scores the request's item for its user)",
        ),
    ]
    default: Annotated[Any, Meta(description="the output when the stage is late or failed and has no mean")] = UNSET
    batch_size: Annotated[int, Meta(ge=1, le=1024)] | UnsetType = UNSET
    replicas: Replicas | UnsetType = UNSET
    aimd: bool | UnsetType = UNSET


class DeployPipelineRequest(Struct, forbid_unknown_fields=True):
    """A pipeline (docs/pipelines.md); the server checks the DAG and the shapes before deploying."""

    name: Name
    objective_ms: Annotated[float, Meta(gt=0, description="end-to-end p99 objective")]
    stages: Annotated[list[PipelineStage], Meta(min_length=1, max_length=32)]
    edges: list[Annotated[list[Name], Meta(min_length=2, max_length=2)]] | UnsetType = UNSET
    plan: Literal["inferline", "fixed"] | UnsetType = UNSET
    autoscale: bool | UnsetType = UNSET
    rate_qps: Annotated[float, Meta(gt=0, le=1e6)] | UnsetType = UNSET
    cv: Annotated[float, Meta(gt=0, le=1e6)] | UnsetType = UNSET


class PipelinePredictRequest(Struct, forbid_unknown_fields=True):
    input: Any
    user: ClipperUser | UnsetType = UNSET


class PipelineObserveRequest(Struct, forbid_unknown_fields=True):
    input: Any
    label: Any
    user: ClipperUser | UnsetType = UNSET


@dataclass(frozen=True)
class BatchTypes:
    """The request types whose limits depend on the running configuration."""

    predict_batch: type
    top_k_body: type
    observation: type
    observe_batch: type


@cache
def batch_types(max_batch: int) -> BatchTypes:
    """Types for a server whose batch limit is `max_batch` (ServingConfig.max_batch)."""
    Batch = Meta(min_length=1, max_length=max_batch)

    class PredictEntry(Struct):
        """An item id, or the text of an item (content features)."""

        user: Id
        item: Id | UnsetType = UNSET
        text: Text | UnsetType = UNSET

    class PredictBatch(Struct):
        queries: Annotated[list[PredictEntry], Batch]

    class TopKBody(Struct):
        user: Id
        k: Annotated[int, Meta(ge=1)]
        candidates: Annotated[list[Id], Batch] | None = None
        exclude_seen: bool = False
        policy: PolicyName | None = None
        epsilon: Epsilon | None = None
        alpha: Alpha | None = None
        filter: Filter | None = None

    class Observation(Struct):
        user: Id
        item: Id
        score: Annotated[float, Meta(description=_SCORE_TEXT)]
        decision: Annotated[str, Meta(min_length=1, max_length=64, description=_DECISION_TEXT)] | UnsetType = UNSET
        id: Annotated[str, Meta(min_length=1, max_length=128, description=_ID_TEXT)] | UnsetType = UNSET

    class ObserveBatch(Struct):
        observations: Annotated[list[Observation], Batch]

    for struct in (PredictEntry, PredictBatch, TopKBody, Observation, ObserveBatch):
        struct.__qualname__ = struct.__name__  # the schema names components by it
    return BatchTypes(PredictBatch, TopKBody, Observation, ObserveBatch)


_SCORE_TEXT = (
    "a finite number inside the model version's score range: meta.json `score_range`, set at training from "
    "the data (min and max widened by 10% of the span) or by `train --score-range LO HI`; [0, 1] under the "
    "logistic link. Outside it: 400"
)
_DECISION_TEXT = (
    "the `decision` id of the top_k answer this observation answers; 400 if that list went to another "
    "user or did not show the item"
)
_ID_TEXT = (
    "idempotency key: a retry with the same id (within the window, 24 h by default) is acknowledged with the "
    "original's lsn, not learned again"
)


# ---- decoding, and msgspec's errors in the one error template -----------------------------------
_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `(?P<name>[^`]*)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`")
_EXPECTED = re.compile(r"^Expected `(?P<type>[^`]*)`(?P<rest>[^,]*)")
_WORDS = {
    "int": "an integer",
    "str": "a string",
    "float": "a number",
    "bool": "true or false",
    "array": "a JSON list",
    "object": "a JSON object",
    "null": "null",
    "int | str": "a string or an integer",
    "dict": "a JSON object",
}


def _field_path(path: str) -> str:
    return path.lstrip(".") or "body"


def _lookup(document: Any, path: str) -> Any:
    """The value at a msgspec error path (`.queries[0].user`) in the decoded document, or None."""
    for name, index in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        try:
            document = document[name] if name else document[int(index)]
        except (KeyError, IndexError, TypeError):
            return None
    return document


def invalid(exc: msgspec.ValidationError, where: str, document: Any, source: str = "body") -> InvalidInput:
    """A msgspec validation error as the one template: which field, what was expected, what was got."""
    text = str(exc)
    at = _AT.search(text)
    path = at.group("path") if at else ""
    message = text[: at.start()] if at else text
    if (missing := _MISSING.match(message)) is not None:
        name = missing.group("name")
        field = _field_path(path) if path else name
        where_it_is = "in the query string" if source == "query" else "in the body"
        return invalid_parameter(
            field,
            where,
            f"present {where_it_is}" if not path else f"an object with {name!r}",
            None if not path else _lookup(document, path),
        )
    if (unknown := _UNKNOWN.match(message)) is not None:
        name = unknown.group("name")
        field = (_field_path(path) + "." if path else "") + name
        return invalid_parameter(
            name if not path else field,
            where,
            "a known field (see /openapi.json)",
            _lookup(document, path + "." + name),
        )
    field = _field_path(path)
    expected = message
    if (match := _EXPECTED.match(message)) is not None:
        kind = match.group("type")
        expected = _WORDS.get(kind, " or ".join(_WORDS.get(part, part) for part in kind.split(" | ")))
        rest = match.group("rest").strip()
        if rest:
            expected += " " + rest.replace("matching regex", "matching")
    return invalid_parameter(field, where, expected, _lookup(document, path) if path else document)


def convert(value: Any, kind: type, where: str, source: str = "body") -> Any:
    """`value` (decoded JSON, or the query string's dict with `source="query"`) as `kind`."""
    try:
        return msgspec.convert(value, kind, strict=False)  # the query's values are strings; 1.0 is an integer
    except msgspec.ValidationError as exc:
        raise invalid(exc, where, value, source) from None


class BodyDecoder:
    """Decodes a request body's bytes straight into its type: no intermediate dicts on success.

    An integral float where an integer is expected is that integer: JSON Schema's "integer" is
    any number without a fraction (1.0 included), and the schema is the contract. Such a body is
    decoded a second time (the error path only), its integral floats made integers."""

    def __init__(self, kind: type, where: str) -> None:
        self.kind, self.where = kind, where
        self._decoder: msgspec.json.Decoder[Any] = msgspec.json.Decoder(kind)

    def decode(self, raw: bytes) -> Any:
        try:
            return self._decoder.decode(raw)
        except msgspec.ValidationError as exc:
            if _INT_GOT_FLOAT.search(str(exc)) is None:
                raise invalid(exc, self.where, _document(raw)) from None
            document = _integral(_document(raw))
            try:
                return msgspec.convert(document, self.kind)
            except msgspec.ValidationError as again:
                raise invalid(again, self.where, document) from None
        except msgspec.DecodeError as exc:
            raise not_json(self.where, exc) from None


_INT_GOT_FLOAT = re.compile(r"^Expected `[^`]*\bint\b[^`]*`, got `float`")


def _integral(value: Any) -> Any:
    """`value` with every float that has no fraction made an int (1.0 is the integer 1)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, list):
        return [_integral(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    return value


def _document(raw: bytes) -> Any:
    """The body as plain JSON, to quote the client's value in an error (the error path only)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def not_json(where: str, exc: Exception) -> InvalidInput:
    return InvalidInput(f"The request body of {where} must be a JSON object: {exc}.", field="body")


def parse_json(raw: bytes, where: str) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise not_json(where, exc) from None


def json_decoder(where: str) -> Callable[[bytes], Any]:
    """Plain JSON, for a body its handler checks (observe: one observation or a batch)."""
    return lambda raw: parse_json(raw, where)
