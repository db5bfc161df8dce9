"""Topology: order, sources and sinks, and refusals naming the stage; Plan and StagePlan JSON."""

from __future__ import annotations

import math

import pytest

from veloxserve.errors import InvalidInput
from veloxserve.pipelines.plans import Plan, StagePlan, Topology


def test_from_edges_orders_topologically_and_finds_sources_and_sinks() -> None:
    t = Topology.from_edges(
        ["correct", "featurise", "sk", "torch"],
        [
            ("featurise", "sk"),
            ("featurise", "torch"),
            ("sk", "correct"),
            ("torch", "correct"),
        ],
    )
    assert t.stages == ("featurise", "sk", "torch", "correct")
    assert t.parents["correct"] == ("sk", "torch")
    assert t.sources == ("featurise",)
    assert t.sinks == ("correct",)
    assert len(t.longest_path()) == 3
    assert Topology.from_json(t.to_json()) == t


def test_one_stage_and_several_sources() -> None:
    assert Topology.from_edges(["a"], []).sinks == ("a",)
    t = Topology.from_edges(["a", "b", "c"], [("a", "c"), ("b", "c")])
    assert t.sources == ("a", "b") and t.sinks == ("c",)


@pytest.mark.parametrize(
    ("stages", "edges", "named", "word"),
    [
        (["a", "b", "c"], [("a", "b"), ("b", "c"), ("c", "b")], "'b'", "cycle"),
        (["a", "b"], [("a", "b"), ("b", "b")], "'b'", "itself"),
        (["a", "b"], [("a", "x")], "'x'", "Unknown"),
        (["a", "b", "c"], [("a", "b")], "'c'", "unreachable"),
        (["a", "b", "a"], [("a", "b")], "'a'", "twice"),
    ],
)
def test_invalid_dags_name_the_stage(stages: list[str], edges: list[tuple[str, str]], named: str, word: str) -> None:
    with pytest.raises(InvalidInput) as info:
        Topology.from_edges(stages, edges)
    assert named in info.value.message and word in info.value.message
    assert info.value.status == 400


def test_a_cycle_is_reported_as_a_path() -> None:
    with pytest.raises(InvalidInput, match=r"b -> c -> d -> b"):
        Topology.from_edges(["a", "b", "c", "d"], [("a", "b"), ("b", "c"), ("c", "d"), ("d", "b")])


def test_direct_construction_checks_order_and_names() -> None:
    with pytest.raises(InvalidInput, match="topological"):
        Topology(("b", "a"), {"b": ("a",)})
    with pytest.raises(InvalidInput, match="'z'"):
        Topology(("a",), {"a": ("z",)})


def test_plan_json_round_trip_and_inf() -> None:
    plan = Plan({"a": StagePlan("a", "threads=1", 4, 2)}, math.inf, 2.0, False, "never served")
    data = plan.to_json()
    assert data["predicted_p99_s"] is None
    assert Plan.from_json(data) == plan


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["stages"]["a"].update(replicas=0), "replicas"),
        (lambda d: d["stages"]["a"].update(batch_size=True), "batch_size"),
        (lambda d: d["stages"]["a"].update(stage="b"), "stages"),
        (lambda d: d.update(cost_per_s=-1), "cost_per_s"),
        (lambda d: d.update(feasible="yes"), "feasible"),
        (lambda d: d.pop("stages"), "stages"),
    ],
)
def test_bad_plan_json_names_the_field(change, field: str) -> None:
    data = Plan({"a": StagePlan("a", "k", 1, 1)}, 0.05, 1.0, True, "").to_json()
    change(data)
    with pytest.raises(InvalidInput) as info:
        Plan.from_json(data)
    assert info.value.field == field
