"""Pipeline declarations: what is accepted, and each refusal naming the stage and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.errors import InvalidInput, ModelNotFound
from veloxserve.pipelines.spec import ModelShapes, check_against, load_file, parse_spec


def _pipeline(edges: list[list[str]], names: list[str] | None = None, **extra) -> dict:
    names = names or sorted({n for e in edges for n in e})
    return {
        "name": "p",
        "objective_ms": 50,
        "stages": [{"name": n, "model": f"m-{n}"} for n in names],
        "edges": edges,
        **extra,
    }


DIAMOND = [["feat", "a"], ["feat", "b"], ["a", "out"], ["b", "out"]]


def test_a_diamond_is_accepted_in_topological_order_with_one_source_and_one_sink() -> None:
    spec = parse_spec(_pipeline(DIAMOND))
    order = spec.order()
    assert order.index("feat") < order.index("a") < order.index("out") and order.index("b") < order.index("out")
    assert spec.sources == ["feat"] and spec.sink == "out" and spec.parents("out") == ["a", "b"]
    assert parse_spec(spec.to_json()) == spec  # what a pipeline version keeps reads back the same


def test_a_cycle_is_refused_naming_a_stage_on_it() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_spec(_pipeline([["src", "a"], ["a", "b"], ["b", "c"], ["c", "a"], ["c", "out"]]))
    message = caught.value.message
    assert "cycle" in message and any(f"Stage {s!r}" in message for s in "abc") and caught.value.field == "edges"


@pytest.mark.parametrize(
    ("data", "names"),
    [
        (_pipeline([["a", "ghost"]], ["a"]), "'ghost'"),  # an edge to an undeclared stage
        (_pipeline([["a", "a"]], ["a"]), "'a' feeds itself"),
        (_pipeline([["a", "b"], ["a", "c"]]), "['b', 'c']"),  # two final stages
        (_pipeline([], ["a", "b"]), "['a', 'b']"),  # an unconnected stage: two sinks
        ({**_pipeline([["a", "b"]]), "stages": [{"name": "a", "model": "m"}, {"name": "a", "model": "m"}]}, "'a'"),
        (
            {**_pipeline([["v", "b"]]), "stages": [{"name": "v", "model": "m"}, {"name": "b", "model": "velox:x"}]},
            "'b'",
        ),  # a Velox stage takes the request's input: no parents
        ({**_pipeline([["a", "b"]]), "objective_ms": -1}, "objective_ms"),
        (
            {
                **_pipeline([["a", "b"]]),
                "stages": [{"name": "a", "model": "m", "replicas": 0}, {"name": "b", "model": "m"}],
            },
            "stage 'a'",
        ),
        (
            {**_pipeline([["a", "b"]]), "stages": [{"name": "a", "model": "bad name!"}, {"name": "b", "model": "m"}]},
            "stage 'a'",
        ),
    ],
)
def test_bad_declarations_are_refused_with_a_message_naming_the_stage(data: dict, names: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_spec(data)
    assert names in caught.value.message or names == caught.value.field
    assert caught.value.status == 400


def _acyclic(n: int, edges: set[tuple[int, int]]) -> bool:
    """Independent check: depth-first search for a back edge."""
    state = [0] * n

    def visit(u: int) -> bool:
        state[u] = 1
        for a, b in edges:
            if a == u and (state[b] == 1 or (state[b] == 0 and not visit(b))):
                return False
        state[u] = 2
        return True

    return all(state[u] or visit(u) for u in range(n))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(2, 6).flatmap(
        lambda n: st.tuples(
            st.just(n), st.sets(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda e: e[0] != e[1]))
        )
    )
)
def test_exactly_the_acyclic_graphs_get_past_the_cycle_check(case: tuple[int, set[tuple[int, int]]]) -> None:
    n, edges = case
    data = _pipeline([[f"s{a}", f"s{b}"] for a, b in sorted(edges)], [f"s{i}" for i in range(n)])
    try:
        spec = parse_spec(data)
    except InvalidInput as exc:
        assert ("cycle" in exc.message) != _acyclic(n, edges) or "final stage" in exc.message
        return
    assert _acyclic(n, edges)
    order = spec.order()
    assert all(order.index(f"s{a}") < order.index(f"s{b}") for a, b in edges)


SHAPES = {
    "m-feat": ModelShapes([3], [4]),
    "m-a": ModelShapes([4], [2]),
    "m-b": ModelShapes([4], []),
    "m-out": ModelShapes([3], []),
}


def test_the_parents_outputs_concatenated_must_have_the_stages_input_shape() -> None:
    spec = parse_spec(_pipeline(DIAMOND))
    shapes = check_against(spec, SHAPES.get, lambda name: False)  # a gives 2, b gives one number: 3 in all
    assert shapes["out"].input_shape == [3]
    wrong = {**SHAPES, "m-out": ModelShapes([5], [])}
    with pytest.raises(InvalidInput) as caught:
        check_against(spec, wrong.get, lambda name: False)
    assert "Stage 'out'" in caught.value.message and "[5]" in caught.value.message and "[3]" in caught.value.message


def test_unknown_models_are_not_found_naming_the_stage() -> None:
    spec = parse_spec(_pipeline(DIAMOND))
    with pytest.raises(ModelNotFound, match="Stage 'b' names the model 'm-b'"):
        check_against(spec, {k: v for k, v in SHAPES.items() if k != "m-b"}.get, lambda name: False)
    velox = parse_spec(
        {**_pipeline([["v", "out"]]), "stages": [{"name": "v", "model": "velox:mf"}, {"name": "out", "model": "m-b"}]}
    )
    with pytest.raises(ModelNotFound, match="Stage 'v' names the Velox model 'mf'"):
        check_against(velox, {"m-b": ModelShapes([1], [])}.get, lambda name: False)
    shapes = check_against(velox, {"m-b": ModelShapes([1], [])}.get, lambda name: name == "mf")
    assert shapes["v"].output_shape == []


def test_files_are_toml_or_json(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text(
        'name = "p"\nobjective_ms = 50\nedges = [["a", "b"]]\n[[stages]]\nname = "a"\nmodel = "m"\n'
        '[[stages]]\nname = "b"\nmodel = "n"\ndefault = 0.5\n'
    )
    as_json = tmp_path / "p.json"
    as_json.write_text(json.dumps(load_file(toml)))
    assert parse_spec(load_file(toml)) == parse_spec(load_file(as_json))
    assert parse_spec(load_file(toml)).stage("b").default == 0.5
    (tmp_path / "bad.toml").write_text("name = ")
    with pytest.raises(InvalidInput, match="bad.toml"):
        load_file(tmp_path / "bad.toml")
