"""Canonical ids: "22", 22 and 22.0 (JSON does not tell it from 22) are one id; anything else that
is not a printable string or an integer is refused, naming the field."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.errors import InvalidInput
from veloxserve.ids import MAX_ID_LENGTH, canonical_id


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_an_integer_its_string_and_its_integral_float_are_one_id(n: int) -> None:
    assert canonical_id(n, "user", "observe") == canonical_id(str(n), "user", "observe") == str(n)
    assert canonical_id(float(n), "user", "observe") == str(n)


@pytest.mark.parametrize("bad", [1.5, -0.25, float("nan"), float("inf"), 2.0**60, True, None, [], "", "a\x00b"])
def test_what_is_not_an_id_is_refused_naming_the_field(bad) -> None:
    with pytest.raises(InvalidInput) as error:
        canonical_id(bad, "queries[3].user", "predict")
    assert error.value.field == "queries[3].user"


def test_long_strings_are_refused_at_the_limit() -> None:
    assert canonical_id("x" * MAX_ID_LENGTH, "item", "observe") == "x" * MAX_ID_LENGTH
    with pytest.raises(InvalidInput):
        canonical_id("x" * (MAX_ID_LENGTH + 1), "item", "observe")
