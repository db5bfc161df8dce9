"""What Clipper's verbs send: options left None take the server's defaults; long operations
get their own timeout and are never repeated."""

from __future__ import annotations

from veloxserve.client import clipper_calls as c


def test_options_left_none_are_not_sent() -> None:
    assert c.deploy("m", "callable", "/f").json == {"name": "m", "framework": "callable", "model": "/f"}
    assert c.deploy("m", "sklearn", "/f", replicas=2, adaptive=False).json["adaptive"] is False
    assert c.rollback("m").json == {} and c.rollback("m", "v1").json == {"version": "v1"}
    assert c.create_app("a", ("m", "n"), policy="exp4").json == {"name": "a", "models": ["m", "n"], "policy": "exp4"}
    assert c.create_app("a", ["m"], default=None).json == {"name": "a", "models": ["m"], "default": None}  # null
    assert c.app_predict("a", [1.0]).json == {"input": [1.0]}
    assert c.app_observe("a", [1.0], 0, user=3).json == {"input": [1.0], "label": 0, "user": 3}


def test_starting_containers_is_slow_and_not_repeated() -> None:
    for call in (c.deploy("m", "callable", "/f"), c.scale("m", 2), c.rollback("m"), c.remove_container("m")):
        assert call.timeout == c.CONTAINERS_S and not call.retryable
    assert c.list_containers().retryable and c.describe_app("a").retryable
