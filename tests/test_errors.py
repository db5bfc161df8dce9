"""The one error template quotes what the client sent, briefly and safely, whatever it was."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.errors import MAX_QUOTED_CHARS, InvalidInput, invalid_parameter

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5000),
    lambda children: st.lists(children, max_size=30) | st.dictionaries(st.text(max_size=300), children, max_size=30),
    max_leaves=200,
)
# The template's own text around the quote, with the longest field the template keeps.
_BOUND = 400 + 2 * MAX_QUOTED_CHARS


@settings(max_examples=300, deadline=None)
@given(value=_JSON, field=st.text(min_size=1, max_size=5000))
def test_the_message_of_any_json_value_is_short_and_names_the_field(value, field: str) -> None:
    error = invalid_parameter(field, "observe", "an id", value)
    assert isinstance(error, InvalidInput) and error.status == 400
    assert len(error.message) <= _BOUND
    assert repr(error.field) in error.message and len(error.field) <= MAX_QUOTED_CHARS + 3


def test_a_value_nested_far_deeper_than_the_recursion_limit_is_quoted() -> None:
    value: list = []
    for _ in range(100_000):
        value = [value]
    error = invalid_parameter("user", "observe", "an id", {"a": value})
    assert "[[" in error.message and len(error.message) <= _BOUND


def test_a_huge_string_is_quoted_as_a_prefix_with_its_length() -> None:
    error = invalid_parameter("user", "observe", "an id", "x" * 1_000_000)
    assert "xxxx" in error.message and "1000000 characters" in error.message and len(error.message) <= _BOUND
