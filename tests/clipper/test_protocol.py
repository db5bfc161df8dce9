from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from veloxserve.clipper import protocol

numeric = st.sampled_from([np.float64, np.float32, np.int64, np.int32, np.uint8, np.bool_])


@given(hnp.arrays(numeric, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=5)))
def test_numeric_batches_round_trip_bit_for_bit(array: np.ndarray) -> None:
    decoded = protocol.decode_batch(protocol.encode_batch(array))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(st.lists(json_values, max_size=5))
def test_other_batches_travel_as_json(batch: list) -> None:
    assert protocol.decode_batch(protocol.encode_batch(batch)) == batch


def test_inputs_of_one_shape_stack_into_one_array_and_others_into_a_list() -> None:
    rows = [np.arange(3.0), np.ones(3)]
    stacked = protocol.stack_inputs(rows)
    assert stacked.shape == (2, 3) and np.array_equal(stacked[1], np.ones(3))
    assert protocol.stack_inputs([np.arange(2.0), "text"]) == [[0.0, 1.0], "text"]


def test_outputs_split_per_query_and_a_wrong_count_is_an_error() -> None:
    assert protocol.split_outputs(np.array([1, 2]), 2) == [1.0, 2.0]
    rows = protocol.split_outputs(np.eye(2), 2)
    assert np.array_equal(rows[1], [0.0, 1.0])
    with pytest.raises(ValueError, match="2 outputs for a batch of 3"):
        protocol.split_outputs(np.eye(2), 3)


def test_request_ids_pack_to_eight_bytes() -> None:
    assert protocol.unpack_id(protocol.pack_id(2**40 + 7)) == 2**40 + 7
    assert len(protocol.pack_id(1)) == 8
