"""The client's one core, without I/O: what a verb sends, how an answer or an error comes back,
when to retry, and the two thin drivers that do the sending (httpx.Client, httpx.AsyncClient).

A verb builds a `Call` (method, path, query, body, how to read the answer) or a `Plan` (a
generator yielding Calls and Sleeps, for verbs of several requests such as retrain-and-wait).
`run` turns either into the steps a driver performs: `Call` (send it, answer with the response
or the transport error) and `Sleep`. Retrying, backing off (backoff.RetryPolicy, the project's
one policy), reading answers and mapping errors all happen here, once; the sync and async
drivers differ only in how they send and sleep (httpx's sans-I/O habit: one protocol, two I/O
faces, as STYLE.md asks instead of parallel copies).

Errors come back as the exception classes the in-process API raises (errors.py), chosen by the
error body's `error` name, else by the HTTP status; a connection that fails or times out is
`ServerUnreachable`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, ParamSpec, TypeVar, overload
from urllib.parse import quote

import httpx

from veloxserve import errors
from veloxserve.backoff import RetryPolicy
from veloxserve.errors import MethodNotAllowed, RetryLater, ServerUnreachable, VeloxError

T = TypeVar("T")
P = ParamSpec("P")
NO_BODY: Any = object()
RETRY_STATUSES = frozenset({502, 503, 504})  # refused before anything changed, or a proxy's gateway errors
# A client retries over a network, not a Redis socket: a slower start and a longer cap than RetryPolicy's.
DEFAULT_RETRY = RetryPolicy(retries=3, base=0.1, cap=2.0)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer. GETs are retried on failure; other methods only
    when `idempotent` says a repeat changes nothing (observe with idempotency keys, reads by POST)."""

    method: str
    path: str
    parse: Callable[[Any], T]
    params: Mapping[str, Any] | None = None
    json: Any = NO_BODY
    idempotent: bool = False
    timeout: float | None = None  # seconds, instead of the client's (activate, forget, deploy take long)
    text: bool = False  # the answer is text (Prometheus), not JSON

    @property
    def retryable(self) -> bool:
        return self.idempotent or self.method in ("GET", "HEAD")


@dataclass(frozen=True)
class Sleep:
    seconds: float


Plan = Generator["Call[Any] | Sleep", Any, T]
Outcome = httpx.Response | httpx.TransportError  # what a driver answers a Call with


def segment(value: Any) -> str:
    """A path parameter, percent-encoded whole (the user `a/b` is `a%2Fb`; the server decodes once)."""
    return quote(str(value), safe="")


# ---- answers and errors --------------------------------------------------------------------------
ERROR_CLASSES: dict[str, type[VeloxError]] = {
    name: cls for name, cls in vars(errors).items() if isinstance(cls, type) and issubclass(cls, VeloxError)
}
# An error body without a known name (a proxy's page, an older or newer server): the class of its status.
BY_STATUS: dict[int, type[VeloxError]] = {
    400: errors.InvalidInput,
    401: errors.Unauthorized,
    403: errors.Forbidden,
    404: errors.NotFound,
    405: errors.MethodNotAllowed,
    409: errors.Conflict,
    413: errors.PayloadTooLarge,
    503: errors.RetryLater,
    504: errors.DeadlineExceeded,
    507: errors.InsufficientStorage,
}


def error_from(status: int, body: Any, headers: Mapping[str, str]) -> VeloxError:
    """The exception the server raised, rebuilt from its answer: same class, message and field;
    Retry-After and Allow restored. Its `status` is always the answer's."""
    body = body if isinstance(body, dict) else {}
    cls = ERROR_CLASSES.get(str(body.get("error")))
    if cls is None or cls.status != status:
        cls = BY_STATUS.get(status, VeloxError)
    message = body.get("message")
    if not isinstance(message, str):
        message = f"The server answered HTTP {status} without a veloxserve error body."
    field = body.get("field")
    exc = cls.__new__(cls)  # not cls(...): subclasses' constructors build their own messages
    VeloxError.__init__(exc, message, field=field if isinstance(field, str) else None)
    if exc.status != status:
        exc.status = status
    if isinstance(exc, RetryLater):
        after = headers.get("retry-after", "")
        exc.retry_after = int(after) if after.isdigit() else type(exc).retry_after
    if isinstance(exc, MethodNotAllowed):
        allowed = [m.strip() for m in headers.get("allow", "").split(",") if m.strip()]
        exc.allowed = [m for m in allowed if m != "HEAD"] if "GET" in allowed else allowed
    return exc


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def result(call: Call[T], outcome: Outcome, url: str) -> T:
    """The call's typed answer, or the error it came back as."""
    if isinstance(outcome, httpx.TransportError):
        raise unreachable(call, outcome, url) from outcome
    if outcome.is_success:
        if call.text:
            return call.parse(outcome.text)
        body = _json(outcome)
        if body is None:
            raise VeloxError(
                f"{call.method} {url}{call.path} answered {outcome.status_code} with a body that is not JSON; "
                "is the URL a veloxserve server?"
            )
        return call.parse(body)
    raise error_from(outcome.status_code, _json(outcome), outcome.headers)


def unreachable(call: Call[Any], exc: httpx.TransportError, url: str) -> ServerUnreachable:
    if isinstance(exc, httpx.TimeoutException):
        maybe = "" if call.retryable else " It may have been applied: check before repeating it."
        return ServerUnreachable(f"{call.method} {url}{call.path} got no answer in time ({type(exc).__name__}).{maybe}")
    return ServerUnreachable(f"Cannot reach {url}: {exc or type(exc).__name__}. Is `veloxserve serve` running there?")


def retry_delay(call: Call[Any], outcome: Outcome, failures: int, policy: RetryPolicy) -> float | None:
    """Seconds to wait before repeating `call`, or None to answer now. Only idempotent calls are
    repeated; a server's Retry-After is honoured when longer than the backoff."""
    if not call.retryable or failures >= policy.retries:
        return None
    if isinstance(outcome, httpx.TransportError):
        return policy.delay(failures)
    if outcome.status_code in RETRY_STATUSES:
        after = outcome.headers.get("retry-after", "")
        return max(policy.delay(failures), float(after) if after.isdigit() else 0.0)
    return None


def exchange(call: Call[T], policy: RetryPolicy, url: str) -> Plan[T]:
    """One call's steps: send it; on a retryable failure wait and send again."""
    failures = 0
    while True:
        outcome = yield call
        delay = retry_delay(call, outcome, failures, policy)
        if delay is None:
            return result(call, outcome, url)
        yield Sleep(delay)
        failures += 1


def run(work: Call[T] | Plan[T], policy: RetryPolicy, url: str) -> Plan[T]:
    """The steps of a verb: a Call's exchange, or a plan's calls each through its exchange (errors
    are thrown back into the plan, so it may handle them)."""
    if isinstance(work, Call):
        return (yield from exchange(work, policy, url))
    value: Any = None
    error: VeloxError | None = None
    while True:
        try:
            step = work.send(value) if error is None else work.throw(error)
        except StopIteration as stop:
            return stop.value
        value, error = None, None
        if isinstance(step, Sleep):
            yield step
            continue
        try:
            value = yield from exchange(step, policy, url)
        except VeloxError as exc:
            error = exc


def build_request(http: httpx.Client | httpx.AsyncClient, call: Call[Any]) -> httpx.Request:
    return http.build_request(
        call.method,
        call.path,
        params=call.params,
        json=None if call.json is NO_BODY else call.json,
        timeout=call.timeout if call.timeout is not None else http.timeout,
    )


# ---- the two drivers -----------------------------------------------------------------------------
class SyncDriver:
    """Performs a verb's steps with blocking I/O."""

    url: str
    retry: RetryPolicy

    def _send(self, call: Call[Any]) -> httpx.Response:
        raise NotImplementedError

    def _execute(self, work: Call[T] | Plan[T]) -> T:
        steps = run(work, self.retry, self.url)
        outcome: Outcome | None = None
        while True:
            try:
                step = steps.send(outcome)
            except StopIteration as stop:
                return stop.value
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                outcome = None
                continue
            try:
                outcome = self._send(step)
            except httpx.TransportError as exc:
                outcome = exc


class AsyncDriver:
    """Performs a verb's steps on the running event loop."""

    url: str
    retry: RetryPolicy

    async def _send(self, call: Call[Any]) -> httpx.Response:
        raise NotImplementedError

    async def _execute(self, work: Call[T] | Plan[T]) -> T:
        steps = run(work, self.retry, self.url)
        outcome: Outcome | None = None
        while True:
            try:
                step = steps.send(outcome)
            except StopIteration as stop:
                return stop.value
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                outcome = None
                continue
            try:
                outcome = await self._send(step)
            except httpx.TransportError as exc:
                outcome = exc


class verb(Generic[P, T]):  # noqa: N801 - used like a decorator, lower case as `property` is
    """A verb declared once, for both clients: `predict = verb(calls.predict)`. On an AsyncClient
    it is a coroutine function, on a Client a plain one; both take the builder's parameters and
    answer what its Call or Plan answers."""

    @overload
    def __init__(self, build: Callable[P, Call[T]]) -> None: ...
    @overload
    def __init__(self, build: Callable[P, Plan[T]]) -> None: ...
    def __init__(self, build: Callable[P, Any]) -> None:
        self.build = build
        self.__doc__ = build.__doc__
        self.__wrapped__ = build  # inspect.signature and help() show the builder's parameters

    @overload
    def __get__(self, obj: None, owner: type) -> verb[P, T]: ...
    @overload
    def __get__(self, obj: AsyncDriver, owner: type) -> Callable[P, Coroutine[Any, Any, T]]: ...
    @overload
    def __get__(self, obj: SyncDriver, owner: type) -> Callable[P, T]: ...
    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        build = self.build

        def bound(*args: Any, **kwargs: Any) -> Any:
            return obj._execute(build(*args, **kwargs))

        return functools.update_wrapper(bound, build)
