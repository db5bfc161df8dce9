"""Checks of request values shared by the Python API and HTTP: one error template for all."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from veloxserve.errors import ModelStateInvalid, invalid_parameter


def finite_score(value: Any, field: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid_parameter(field, where, "a finite number", value)
    try:
        score = float(value)
    except OverflowError:  # an int beyond any float (the Python API; JSON parsing refuses those)
        score = math.inf
    if not math.isfinite(score):
        raise invalid_parameter(field, where, "a finite number", value)
    return score


def score_in_range(value: Any, field: str, where: str, low: float, high: float) -> float:
    """A finite score inside the model's accepted range (ModelVersion.score_range)."""
    score = finite_score(value, field, where)
    if not low <= score <= high:
        raise invalid_parameter(
            field,
            where,
            f"a number in [{low:g}, {high:g}], this model version's score range (set at training "
            "from its data; retrain with `veloxserve train --score-range LO HI` to change it)",
            value,
        )
    return score


def finite_outputs(scores: Any, what: str) -> Any:
    """Scores about to be answered, checked finite: JSON has no NaN or Infinity (orjson would write
    null), and a non-finite score means a user's state is broken, which must be said, not served."""
    if not np.isfinite(scores).all():
        raise ModelStateInvalid(
            f"The model computed a non-finite score for {what}; its learned state for this user is broken. "
            "Forget the user (DELETE /users/{user}) or retrain the model; other users are unaffected."
        )
    return scores


def int_in_range(value: Any, field: str, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid_parameter(field, where, f"an int in [{low}, {high}]", value)
    return value


def batch_size(size: int, limit: int, field: str, where: str) -> None:
    if size == 0:
        raise invalid_parameter(field, where, f"a non-empty list of at most {limit} entries", [])
    if size > limit:
        raise invalid_parameter(field, where, f"a list of at most {limit} entries (split the batch)", f"{size} entries")


MAX_TEXT_CHARS = 100_000
TEXT_PATTERN = "\\S"  # at least one character that is not white space (the check below strips the text)
MAX_BODY_BYTES = 8 << 20  # a request body over this is a 413, decided from Content-Length before reading


def item_text(value: Any, field: str, where: str) -> str:
    """An item described by its text (content features): a non-empty string of bounded length."""
    if not isinstance(value, str) or not value.strip():
        raise invalid_parameter(field, where, "a non-empty string (the item's text)", value)
    if len(value) > MAX_TEXT_CHARS:
        raise invalid_parameter(
            field, where, f"a text of at most {MAX_TEXT_CHARS} characters", f"{len(value)} characters"
        )
    return value
