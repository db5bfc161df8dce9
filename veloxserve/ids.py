"""User and item identifiers.

Clients send ids as JSON strings or integers; "22" and 22 name the same user. Internally every id
is its canonical string, which is what stores, logs and catalogues key on.
"""

from __future__ import annotations

from typing import Any

from veloxserve.errors import invalid_parameter

Id = str | int
MAX_ID_LENGTH = 256


def canonical_id(value: Any, field: str, where: str) -> str:
    """Return the canonical string for a user or item id, or raise InvalidInput naming the field."""
    if isinstance(value, str):
        if 0 < len(value) <= MAX_ID_LENGTH and value.isprintable():
            return value
    elif isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise invalid_parameter(
        field, where, f"a non-empty printable string of at most {MAX_ID_LENGTH} characters or an integer", value
    )
