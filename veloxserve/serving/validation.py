"""Checks of request values shared by the Python API and HTTP: one error template for all."""

from __future__ import annotations

import math
from typing import Any

from veloxserve.errors import invalid_parameter


def finite_score(value: Any, field: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid_parameter(field, where, "a finite number", value)
    score = float(value)
    if not math.isfinite(score):
        raise invalid_parameter(field, where, "a finite number", value)
    return score


def int_in_range(value: Any, field: str, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise invalid_parameter(field, where, f"an int in [{low}, {high}]", value)
    return value


def batch_size(size: int, limit: int, field: str, where: str) -> None:
    if size == 0:
        raise invalid_parameter(field, where, f"a non-empty list of at most {limit} entries", [])
    if size > limit:
        raise invalid_parameter(
            field, where, f"a list of at most {limit} entries (split the batch)", f"{size} entries"
        )


MAX_TEXT_CHARS = 100_000


def item_text(value: Any, field: str, where: str) -> str:
    """An item described by its text (content features): a non-empty string of bounded length."""
    if not isinstance(value, str) or not value.strip():
        raise invalid_parameter(field, where, "a non-empty string (the item's text)", value)
    if len(value) > MAX_TEXT_CHARS:
        raise invalid_parameter(field, where, f"a text of at most {MAX_TEXT_CHARS} characters", f"{len(value)} characters")
    return value
