"""LSH families against their theory: collision rates over independently seeded hashers match the
closed forms (random hyperplanes: 1 − θ/π per bit, (1 − θ/π)^b per table; p-stable: Datar et al.),
within a statistical tolerance; every draw is seeded, so the outcome is reproducible."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.config import ApproximateSettings
from veloxserve.errors import InvalidInput
from veloxserve.lsh import LSH, MAX_PROJECTION, fits, hasher, hyperplane_collision, pstable_collision

SEEDS = 160  # independent hashers per example: SEEDS × tables Bernoulli trials
SIGMAS = 4.5


def _pair_at_angle(theta: float, dim: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.zeros(dim), np.zeros(dim)
    a[0] = 1.0
    b[0], b[1] = math.cos(theta), math.sin(theta)
    return a, b


def _collision_rate(family: str, x: np.ndarray, y: np.ndarray, bits: int, tables: int, width: float = 1.0) -> float:
    same = 0
    for seed in range(SEEDS):
        lsh = LSH(ApproximateSettings(family=family, tables=tables, bits=bits, width=width, seed=seed), x.size)
        codes = lsh.codes(np.stack([x, y]))
        same += int((codes[0] == codes[1]).sum())
    return same / (SEEDS * tables)


def _close(observed: float, p: float, n: int) -> bool:
    return abs(observed - p) <= SIGMAS * math.sqrt(max(p * (1 - p), 1e-4) / n) + 1e-9


@settings(max_examples=20, deadline=None, derandomize=True)
@given(theta=st.floats(0.0, math.pi), dim=st.integers(2, 24))
def test_one_hyperplane_bit_agrees_with_probability_one_minus_angle_over_pi(theta: float, dim: int) -> None:
    x, y = _pair_at_angle(theta, dim)
    observed = _collision_rate("cosine", x, y, bits=1, tables=32)
    assert _close(observed, 1 - theta / math.pi, SEEDS * 32), (observed, 1 - theta / math.pi)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(theta=st.floats(0.0, math.pi / 2), bits=st.integers(1, 10))
def test_a_table_of_b_bits_collides_with_probability_power_b(theta: float, bits: int) -> None:
    x, y = _pair_at_angle(theta, 8)
    observed = _collision_rate("cosine", x, y, bits=bits, tables=16)
    expected = float(hyperplane_collision(theta, bits))
    assert expected == pytest.approx((1 - theta / math.pi) ** bits)
    assert _close(observed, expected, SEEDS * 16), (observed, expected)


@settings(max_examples=15, deadline=None, derandomize=True)
@given(distance=st.floats(0.05, 6.0), width=st.floats(0.5, 4.0), bits=st.integers(1, 3))
def test_pstable_collisions_match_datar_et_al(distance: float, width: float, bits: int) -> None:
    x = np.zeros(6)
    y = x.copy()
    y[2] = distance
    observed = _collision_rate("euclidean", x, y, bits=bits, tables=16, width=width)
    expected = pstable_collision(distance, width, bits)
    assert _close(observed, expected, SEEDS * 16), (observed, expected)


def test_more_tables_raise_and_more_bits_lower_the_collision_probability() -> None:
    angles = np.linspace(0.05, 1.5, 10)
    assert (hyperplane_collision(angles, 8, 4) > hyperplane_collision(angles, 8, 1)).all()
    assert (hyperplane_collision(angles, 16, 1) < hyperplane_collision(angles, 8, 1)).all()
    assert pstable_collision(1.0, 4.0) > pstable_collision(1.0, 1.0) > pstable_collision(3.0, 1.0)


def test_cosine_codes_are_the_packed_signs_of_the_projections() -> None:
    """An independent computation: bit j of table t is sign(a_{t·b+j} · x), packed little-endian."""
    s = ApproximateSettings(tables=3, bits=5, seed=7)
    lsh = hasher(s, 4)
    X = np.random.default_rng(0).normal(size=(20, 4))
    planes = np.random.default_rng([7, 4]).standard_normal((4, 15))
    signs = (X @ planes > 0).reshape(20, 3, 5)
    expected = (signs * (1 << np.arange(5))).sum(axis=2)
    np.testing.assert_array_equal(lsh.codes(X), expected.astype(np.uint64))


def test_the_grid_is_an_equivalence_class_of_cells() -> None:
    lsh = hasher(ApproximateSettings(family="grid", width=0.5), 3)
    same = lsh.codes(np.array([[0.1, 1.2, -0.3], [0.4, 1.01, -0.01]]))
    other = lsh.codes(np.array([[0.1, 1.2, 0.01]]))
    assert lsh.tables == 1 and same[0, 0] == same[1, 0] and other[0, 0] != same[0, 0]


def test_hashing_is_deterministic_per_seed_and_differs_across_seeds() -> None:
    X = np.random.default_rng(1).normal(size=(50, 16))
    a = LSH(ApproximateSettings(bits=32, seed=3), 16).codes(X)
    assert (a == LSH(ApproximateSettings(bits=32, seed=3), 16).codes(X)).all()
    assert (a != LSH(ApproximateSettings(bits=32, seed=4), 16).codes(X)).any()


def test_distance_is_the_angle_for_cosine_and_l2_otherwise() -> None:
    x, y = _pair_at_angle(0.7, 3)
    assert hasher(ApproximateSettings(), 3).distance(x, 2 * y) == pytest.approx(0.7)
    assert hasher(ApproximateSettings(family="euclidean"), 3).distance(x, y) == pytest.approx(np.linalg.norm(x - y))


def test_a_projection_past_the_size_bound_is_refused() -> None:
    s = ApproximateSettings(tables=64, bits=64)
    assert fits(s, MAX_PROJECTION // 4096) and not fits(s, MAX_PROJECTION // 4096 + 1)
    assert fits(ApproximateSettings(family="grid"), 10**9)
    with pytest.raises(ValueError, match="projection entries"):
        hasher(s, MAX_PROJECTION)


def test_a_vector_of_the_wrong_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="over 4 dimensions got vectors of 3"):
        hasher(ApproximateSettings(), 4).codes(np.zeros((2, 3)))


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"family": "hamming"}, "approximate.family"),
        ({"tables": 0}, "approximate.tables"),
        ({"bits": 65}, "approximate.bits"),
        ({"width": float("nan")}, "approximate.width"),
        ({"radius": -1.0}, "approximate.radius"),
        ({"seed": True}, "approximate.seed"),
    ],
)
def test_bad_settings_name_the_field(options: dict, field: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        ApproximateSettings(**options)
    assert raised.value.field == field


def test_settings_round_trip_through_json_and_refuse_unknown_keys() -> None:
    s = ApproximateSettings(family="euclidean", tables=4, bits=3, width=0.25, radius=0.5, seed=9)
    assert ApproximateSettings.from_json(s.to_json()) == s
    with pytest.raises(InvalidInput, match="approximate.bitz"):
        ApproximateSettings.from_json({"bitz": 3})
