"""Every route of the table has a client verb (checked by matching each verb's request against
the Router), and the requests the verbs build: encoding, which are repeated, which body."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from veloxserve.api.routes import ROUTES, Router
from veloxserve.client import AsyncClient, Client
from veloxserve.client import velox_calls as v
from veloxserve.client.clients import Verbs
from veloxserve.client.wire import NO_BODY, Call, verb

EXAMPLES: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {  # arguments for each verb
    "predict": (("m", 1, 2), {}),
    "predict_many": (("m", [(1, 2)]), {}),
    "predict_text": (("m", [(1, "a song")]), {}),
    "top_k": (("m", 1, 3), {}),
    "recommend": (("m", 1, 3), {"candidates": [1, 2]}),
    "observe": (("m", 1, 2, 3.0), {}),
    "observe_many": (("m", [(1, 2, 3.0)]), {}),
    "describe": (("m",), {}),
    "metrics": (("m",), {}),
    "alerts": (("m",), {}),
    "versions": (("m",), {}),
    "version": (("m", "v1"), {}),
    "activate": (("m", "v1"), {}),
    "retrain": (("m",), {}),
    "retrain_status": (("m",), {}),
    "policy": (("m",), {}),
    "set_policy": (("m", {}), {}),
    "forget_user": ((1,), {}),
    "deploy": (("m", "callable", "/f"), {}),
    "describe_container": (("m",), {}),
    "scale": (("m", 2), {}),
    "rollback": (("m",), {}),
    "remove_container": (("m",), {}),
    "create_app": (("a", ["m"]), {}),
    "describe_app": (("a",), {}),
    "remove_app": (("a",), {}),
    "app_predict": (("a", [1.0]), {}),
    "app_observe": (("a", [1.0], 1), {}),
    "deploy_pipeline": (({"name": "p", "objective_ms": 50, "stages": []},), {}),
    "describe_pipeline": (("p",), {}),
    "remove_pipeline": (("p",), {}),
    "pipeline_predict": (("p", [1.0]), {}),
    "pipeline_observe": (("p", [1.0], 1), {}),
}
EXTRA_CALLS = [v.forget_user(1, "m"), v.recommend("m", 1, 3)]  # the other route of a verb


def _verbs() -> dict[str, verb]:
    return {name: value for cls in Verbs.__mro__ for name, value in vars(cls).items() if isinstance(value, verb)}


def _first_call(name: str, descriptor: verb) -> Call[Any]:
    args, kwargs = EXAMPLES.get(name, ((), {}))
    work = descriptor.build(*args, **kwargs)
    return work if isinstance(work, Call) else next(work)  # a plan: its first request


def test_every_route_of_the_table_has_a_client_verb() -> None:
    router = Router(ROUTES)
    covered = set()
    for call in [_first_call(name, d) for name, d in _verbs().items()] + EXTRA_CALLS:
        path = call.path.split("?")[0]
        route, _ = router.match(call.method, path, path.split("/"))
        covered.add(route)
    pages = {"html", "asset"}  # web pages for browsers (/dashboard, /docs, /assets), not API verbs
    missing = sorted(f"{r.method} {r.path}" for r in ROUTES if r not in covered and r.response not in pages)
    assert not missing, f"routes without a client verb (add one to a *_calls.py group): {missing}"


def test_both_clients_expose_every_verb_with_the_builders_signature() -> None:
    for name, descriptor in _verbs().items():
        assert inspect.signature(getattr(Client(), name)) == inspect.signature(descriptor.build)
        assert getattr(Client, name).__doc__, f"{name} has no docstring"
        assert hasattr(AsyncClient, name)


def test_path_parameters_are_encoded_whole() -> None:
    assert v.forget_user("a/b c", "m").path == "/models/m/users/a%2Fb%20c"
    assert v.version("my model", "v1").path == "/models/my%20model/versions/v1"


@pytest.mark.parametrize(
    ("call", "retryable"),
    [
        (v.observe("m", 1, 2, 3.0), False),
        (v.observe("m", 1, 2, 3.0, id="k"), True),
        (v.observe_many("m", [(1, 2, 3.0, None, "a"), {"user": 1, "item": 3, "score": 1.0, "id": "b"}]), True),
        (v.observe_many("m", [(1, 2, 3.0, None, "a"), (1, 3, 1.0)]), False),
        (v.predict_many("m", [(1, 2)]), True),  # a read sent by POST
        (v.recommend("m", 1, 2, candidates=[1]), True),
        (v.activate("m", "v1"), False),
        (v.set_policy("m", {}), False),
        (v.metrics("m"), True),
    ],
)
def test_only_calls_a_repeat_cannot_change_are_retryable(call: Call[Any], retryable: bool) -> None:
    assert call.retryable is retryable


def test_what_the_serving_verbs_send() -> None:
    assert v.predict("m", 1, 2).params == {"user": 1, "item": 2}
    by_text = v.predict("m", 1, text="short")
    assert by_text.method == "GET" and by_text.params == {"user": 1, "text": "short"}
    long = v.predict("m", 1, text="word " * 1000)  # longer than a query string takes: the body
    assert long.method == "POST" and long.json == {"queries": [{"user": 1, "text": "word " * 1000}]}
    assert long.parse({"scores": [0.5], "model_version": "v2"}).score == 0.5
    greedy = v.recommend("m", 1, 3, filter="genre:jazz")
    assert greedy.method == "GET" and greedy.params == {
        "user": 1,
        "k": 3,
        "exclude_seen": False,
        "filter": "genre:jazz",
    }
    assert v.observe("m", 1, 2, 3.0).json == {"user": 1, "item": 2, "score": 3.0}
    assert v.observe_many("m", [(1, 2, 3.0, "d1")]).json == {
        "observations": [{"user": 1, "item": 2, "score": 3.0, "decision": "d1"}]
    }
    assert v.health().json is NO_BODY


def test_retrain_with_wait_polls_until_the_job_is_done() -> None:
    plan = v.retrain("m", promote="always", overrides={"rank": 3}, wait=True)
    started = next(plan)
    assert started.method == "POST" and started.json == {"promote": "always", "params": {"rank": 3}}
    running = started.parse({"retrain": {**_JOB, "state": "running"}})
    assert next(iter([plan.send(running)])).seconds > 0  # a Sleep between polls
    poll = plan.send(None)
    assert poll.method == "GET" and poll.path == "/models/m/retrain"
    with pytest.raises(StopIteration) as done:
        plan.send(poll.parse({"retrain": {**_JOB, "state": "promoted"}}))
    assert done.value.value.state == "promoted"


_JOB = {
    "model": "m",
    "version": "v2",
    "parent": "v1",
    "reason": "manual",
    "promote": "always",
    "upto_lsn": 0,
    "started_at": "t",
}


def test_verbs_named_as_the_in_process_api_take_its_parameters() -> None:
    """Same name, same parameters as Velox's, but for what HTTP adds or cannot carry."""
    from veloxserve.serving.velox import Velox

    differences = {"predict": ({"text"}, set()), "retrain": (set(), {"reason"})}  # (client only, Velox only)
    shared = [name for name in _verbs() if hasattr(Velox, name)]
    assert len(shared) >= 17
    for name in shared:
        ours = list(inspect.signature(_verbs()[name].build).parameters)
        theirs = [p for p in inspect.signature(getattr(Velox, name)).parameters if p != "self"]
        extra, missing = differences.get(name, (set(), set()))
        assert [p for p in ours if p not in extra] == [p for p in theirs if p not in missing], name
