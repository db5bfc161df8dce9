"""The client's core: errors come back as the in-process classes, retries only for idempotent
calls, the token from the argument or the environment at construction."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from veloxserve import errors
from veloxserve.api import create_app
from veloxserve.api.handlers import VeloxHandlers
from veloxserve.backoff import RetryPolicy
from veloxserve.client import AsyncClient, Client
from veloxserve.client.wire import ERROR_CLASSES, error_from
from veloxserve.serving.velox import Velox

NO_WAIT = RetryPolicy(retries=2, base=0.0, cap=0.0)
SENT_BY_SERVERS = sorted(set(ERROR_CLASSES) - {"ServerUnreachable"})  # that one only the client raises


def _instance(cls: type[errors.VeloxError]) -> errors.VeloxError:
    """An error as server code raises it, with what each class carries besides its message."""
    if cls is errors.MethodNotAllowed:
        return errors.MethodNotAllowed("/models/x/predict", "PATCH", ["GET", "POST"])
    if issubclass(cls, errors.RetryLater):
        return cls(f"{cls.__name__} happened", retry_after=7)
    return cls(f"{cls.__name__} happened", field="some_field")


def test_the_error_classes_are_every_velox_error_of_the_errors_module() -> None:
    def subclasses(cls: type) -> set[type]:
        return {cls} | {s for sub in cls.__subclasses__() for s in subclasses(sub)}

    declared = {c for c in subclasses(errors.VeloxError) if c.__module__ == "veloxserve.errors"}
    assert declared == set(ERROR_CLASSES.values())


def test_every_error_a_server_sends_comes_back_as_its_class(tmp_path: Path, monkeypatch) -> None:
    """Raised inside a real handler, rendered by the real app, read by the client."""
    raising: list[errors.VeloxError] = []

    async def failing(self: VeloxHandlers) -> None:
        raise raising[-1]

    monkeypatch.setattr(VeloxHandlers, "healthz", failing)

    async def ask(app: object) -> list[tuple[errors.VeloxError, errors.VeloxError]]:
        pairs = []
        once = RetryPolicy(retries=0)  # a 503 carries Retry-After: 7 here; repeating it is another test's
        async with AsyncClient("http://x", transport=httpx.ASGITransport(app), retry=once) as client:
            for name in SENT_BY_SERVERS:
                raising.append(_instance(ERROR_CLASSES[name]))
                with pytest.raises(errors.VeloxError) as caught:
                    await client.health()
                pairs.append((raising[-1], caught.value))
        return pairs

    with Velox(tmp_path) as velox:
        pairs = asyncio.run(ask(create_app(velox)))
    assert len(pairs) == len(SENT_BY_SERVERS) >= 18
    for sent, got in pairs:
        assert type(got) is type(sent) and got.status == sent.status
        assert got.message == sent.message == str(got) and got.field == sent.field
        assert got.headers() == sent.headers()  # Retry-After, Allow, WWW-Authenticate restored


def test_an_answer_without_a_known_error_name_maps_by_status() -> None:
    assert type(error_from(409, {"error": "SomethingNew", "message": "m"}, {})) is errors.Conflict
    gateway = error_from(502, "<html>bad gateway</html>", {})
    assert type(gateway) is errors.VeloxError and gateway.status == 502 and "502" in gateway.message
    internal = error_from(500, {"error": "InternalError", "message": "see its log"}, {})
    assert type(internal) is errors.VeloxError and internal.message == "see its log"
    # a name whose status disagrees with the answer (a proxy rewrote it): the status decides
    assert type(error_from(503, {"error": "ItemNotFound", "message": "m"}, {})) is errors.RetryLater


def _counting(answers: list[httpx.Response | Exception]) -> tuple[httpx.MockTransport, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers[min(len(seen), len(answers)) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.MockTransport(handle), seen


BUSY = httpx.Response(503, json={"error": "Overloaded", "message": "busy"})
OBSERVED = httpx.Response(200, json={"observed": 1, "lsn": 9, "duplicates": 0, "duplicate": False})


def test_idempotent_calls_are_retried_and_others_are_not() -> None:
    transport, seen = _counting([BUSY, BUSY, httpx.Response(200, json={"status": "ok", "models": []})])
    with Client("http://x", transport=transport, retry=NO_WAIT) as client:
        assert client.health().status == "ok" and len(seen) == 3  # GET: twice more

    transport, seen = _counting([BUSY, OBSERVED])
    with Client("http://x", transport=transport, retry=NO_WAIT) as client, pytest.raises(errors.Overloaded):
        client.observe("m", 1, 2, 3.0)  # no idempotency key: a repeat could learn it twice
    assert len(seen) == 1

    transport, seen = _counting([BUSY, OBSERVED])
    with Client("http://x", transport=transport, retry=NO_WAIT) as client:
        assert client.observe("m", 1, 2, 3.0, id="k").lsn == 9 and len(seen) == 2

    transport, seen = _counting([BUSY])
    with Client("http://x", transport=transport, retry=NO_WAIT) as client, pytest.raises(errors.Overloaded):
        client.observe_many("m", [(1, 2, 3.0, None, "a"), (1, 3, 3.0)])  # one row without a key
    assert len(seen) == 1


def test_retries_stop_at_the_policy_and_a_lost_connection_is_server_unreachable() -> None:
    transport, seen = _counting([httpx.ConnectError("refused")])
    with Client("http://x", transport=transport, retry=NO_WAIT) as client, pytest.raises(errors.ServerUnreachable):
        client.versions("m")
    assert len(seen) == 1 + NO_WAIT.retries

    transport, seen = _counting([httpx.ReadTimeout("slow")])
    with Client("http://x", transport=transport, retry=NO_WAIT) as client:
        with pytest.raises(errors.ServerUnreachable) as timed_out:
            client.activate("m", "v2")
    assert len(seen) == 1 and "may have been applied" in timed_out.value.message


def test_a_retry_waits_for_the_servers_retry_after(monkeypatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr("time.sleep", slept.append)
    after = httpx.Response(503, headers={"retry-after": "2"}, json={"error": "Overloaded", "message": "busy"})
    transport, _ = _counting([after, httpx.Response(200, json={"status": "ok", "models": []})])
    with Client("http://x", transport=transport, retry=RetryPolicy(retries=1, base=0.1, cap=1.0)) as client:
        client.health()
    assert slept == [2.0]


def test_the_token_comes_from_the_argument_or_the_environment_when_the_client_is_made(monkeypatch) -> None:
    transport, seen = _counting([httpx.Response(200, json={"status": "ok", "models": []})])
    monkeypatch.delenv("VELOXSERVE_TOKEN", raising=False)
    with Client("http://x", transport=transport) as client:
        client.health()
    monkeypatch.setenv("VELOXSERVE_TOKEN", "from-env")
    with Client("http://x", transport=transport) as from_env:
        monkeypatch.setenv("VELOXSERVE_TOKEN", "changed-later")
        from_env.health()
    with Client("http://x", token="given", transport=transport) as given:
        given.health()
    assert [r.headers.get("authorization") for r in seen] == [None, "Bearer from-env", "Bearer given"]
