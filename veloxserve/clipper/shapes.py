"""What a model version consumes and produces, and whether it may serve the applications linked to it.

A version is probed when it starts: every replica runs the model once on an example input (the
deploy's `sample`, else zeros of the input shape the model declares, else the previous version's
example). That warms each container (the first batch of a fresh process is the slow one, and
would otherwise miss the first query's deadline) and gives the version's output shape, kept in its
metadata. A new version (or a rollback) whose output or input shape differs from the serving one's
while applications link the model is refused: those applications combine and learn from outputs
of one shape, and their clients send inputs of one shape. Queries are checked against the input
shape before they are queued, so a wrong-shape input is a 400 naming the shape, not a default.

A shape is a list of dimensions for numeric values (`[]` is one number, `[10]` ten class
probabilities) or the JSON type of anything else ("str", "dict", "list").
"""

from __future__ import annotations

from typing import Any

import numpy as np

from veloxserve.errors import Conflict, InvalidInput

Shape = list[int] | str


def shape_of(value: Any) -> Shape:
    """The shape of one (normalised) input or output."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return list(value.shape)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return []
    return type(value).__name__


def show(shape: Shape | None) -> str:
    if shape is None:
        return "unknown"
    if isinstance(shape, str):
        return f"non-numeric ({shape})"
    return f"{shape} (one number)" if shape == [] else str(shape)


def method_label(meta: dict[str, Any]) -> str:
    """The method a version calls, as a person would name it."""
    if meta.get("method"):
        inherited = meta.get("method_from")
        return f"{meta['method']}" + (f" (inherited from {inherited})" if inherited else "")
    return {"sklearn": "predict (the default)", "onnx": "its first output (the default)"}.get(
        meta.get("framework", ""), "none"
    )


def example_input(sample: Any, declared: list[int] | None, previous: dict[str, Any] | None) -> Any:
    """What to probe a version with, or None when nothing says what its input looks like."""
    if sample is not None:
        return sample
    if declared is not None:
        return np.zeros(declared)
    if previous is not None:
        if previous.get("sample") is not None:
            return previous["sample"]
        if isinstance(previous.get("input_shape"), list):
            return np.zeros(previous["input_shape"])
    return None


def check_replacement(new: dict[str, Any], old: dict[str, Any] | None, apps: list[str]) -> None:
    """Conflict (409) when `new` would change the shapes the applications `apps` rely on."""
    if old is None or not apps:
        return
    for what, key in (("outputs", "output_shape"), ("inputs", "input_shape")):
        before, after = old.get(key), new.get(key)
        if before is None or after is None or before == after:
            continue
        raise Conflict(
            f"Version {new['version']} of model {new['model']!r} (method {method_label(new)}) takes or gives "
            f"{what} of shape {show(after)}, but the applications {apps} use {show(before)} from "
            f"{old['version']} (method {method_label(old)}). Nothing was deployed. Deploy a version with "
            f"{what} of shape {show(before)}"
            + (f" (e.g. --method {old['method']})" if old.get("method") and key == "output_shape" else "")
            + ", or remove those applications first.",
            field="method" if key == "output_shape" else "model",
        )


def check_input(value: Any, expected: Shape, model: str, where: str) -> None:
    """InvalidInput (400) naming the expected shape when a query's input does not have it."""
    got = shape_of(value)
    if got == expected:
        return
    raise InvalidInput(
        f"The 'input' parameter of {where} must have shape {show(expected)}, as model {model!r} takes. Got "
        f"{show(got)} instead. Send one input of that shape; the model would fail on this one.",
        field="input",
    )
