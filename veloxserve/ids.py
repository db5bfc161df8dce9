"""User and item identifiers.

Clients send ids as JSON strings or integers; "22" and 22 name the same user. Internally every id
is its canonical string, which is what stores, logs and catalogues key on.
"""

from __future__ import annotations

import re
from typing import Any

from veloxserve.errors import invalid_parameter

Id = str | int
MAX_ID_LENGTH = 256
# Printable: no control character (C0, DEL, C1). A rule a JSON Schema pattern states exactly, so the
# OpenAPI document and the server agree on every string (str.isprintable also depends on the
# Unicode version's unassigned code points, which no schema can list).
ID_PATTERN = "^[^\\x00-\\x1f\\x7f-\\x9f]+$"
_PRINTABLE = re.compile(ID_PATTERN)
_EXACT_FLOAT_INTEGERS = 2**53


def canonical_id(value: Any, field: str, where: str) -> str:
    """Return the canonical string for a user or item id, or raise InvalidInput naming the field."""
    if isinstance(value, str):
        # isprintable() (C, fast) implies no control character; the pattern decides only the rest
        if 0 < len(value) <= MAX_ID_LENGTH and (value.isprintable() or _PRINTABLE.fullmatch(value)):
            return value
    elif isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    elif isinstance(value, float) and value.is_integer() and abs(value) <= _EXACT_FLOAT_INTEGERS:
        # JSON (and JSON Schema's "integer") does not tell 22.0 from 22: the same id. Past 2^53 a
        # float is no longer one exact integer, so it is refused rather than rounded into another id.
        return str(int(value))
    raise invalid_parameter(
        field, where, f"a non-empty printable string of at most {MAX_ID_LENGTH} characters or an integer", value
    )
