"""One hierarchy of domain errors, each carrying the HTTP status that the API layer maps it to.

    VeloxError (500)
    ├── InvalidInput (400)          a field is missing, mistyped or out of range
    ├── NotFound (404)
    │   ├── ModelNotFound           no model of that name in the home directory
    │   └── ItemNotFound            the item is not in the active version's catalogue
    ├── Unauthorized (401)          no API token, or one the server does not know
    ├── Forbidden (403)             a valid token without the right for this route
    ├── MethodNotAllowed (405)      the route exists but not with this method (Allow lists those that do)
    ├── Conflict (409)              the request clashes with the current state
    ├── PayloadTooLarge (413)       the request body is over the server's limit
    ├── RetryLater (503)            refused before anything changed: retry after Retry-After
    │   ├── StoreUnavailable (503)  a backing store (SQLite, Redis, the log) cannot be reached
    │   │   └── InsufficientStorage (507)  the disk refused the write (full); nothing was learned
    │   └── Overloaded (503)        shed at once: the model's queue is full or the deadline cannot be met
    ├── ContainerUnavailable (503)  a model container crashed, hung or failed on a batch
    ├── DeadlineExceeded (504)      a query's latency objective passed before it was computed
    ├── ModelStateInvalid (500)     the model computed a non-finite score (never answered as null)
    ├── TrainingFailed (500)        offline training could not produce a version
    └── ServerUnreachable (503)     (the client only) no answer from the server: refused, reset or timed out

Messages say which field, what was expected, what was got, and what to do, in the style of
scikit-learn's parameter validation: "The 'k' parameter of top_k must be an int in [1, 1682].
Got 0 instead."
"""

from __future__ import annotations

import reprlib
from typing import Any

MAX_QUOTED_CHARS = 80  # an error message quotes at most this much of a bad value (ids can be 1 MB)


class VeloxError(Exception):
    """Base of every error veloxserve raises on purpose."""

    status: int = 500

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def headers(self) -> dict[str, str]:
        """HTTP headers the answer must carry besides the body (Retry-After, WWW-Authenticate)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": type(self).__name__, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class InvalidInput(VeloxError):
    status = 400


class NotFound(VeloxError):
    status = 404


class ModelNotFound(NotFound):
    pass


class ItemNotFound(NotFound):
    pass


class Unauthorized(VeloxError):
    status = 401

    def headers(self) -> dict[str, str]:
        return {"www-authenticate": 'Bearer realm="veloxserve"'}


class Forbidden(VeloxError):
    status = 403


class Conflict(VeloxError):
    status = 409


class PayloadTooLarge(VeloxError):
    """Decided from Content-Length before the body is read (or as soon as a chunked body passes the limit)."""

    status = 413

    def headers(self) -> dict[str, str]:
        return {"connection": "close"}  # the unread body is not swallowed to keep the connection


class RetryLater(VeloxError):
    """Refused before anything changed, so retrying after `retry_after` seconds (the Retry-After
    header) is safe. A class default, or per error: `RetryLater(message, retry_after=3)`."""

    status = 503
    retry_after = 1

    def __init__(self, message: str = "", *, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


class StoreUnavailable(RetryLater):
    """Nothing was acknowledged and nothing learned: retrying after Retry-After is safe."""


class InsufficientStorage(StoreUnavailable):
    status = 507
    retry_after = 5


class ContainerUnavailable(VeloxError):
    status = 503


class DeadlineExceeded(VeloxError):
    status = 504


class NotAcknowledged(DeadlineExceeded):
    """Some live server processes did not apply a version switch or a forget in time (504): it
    stays recorded in Redis and they apply it when they can (serving/coordination.py)."""


class Overloaded(RetryLater):
    """Shed by admission control before any work was done (serving/admission.py)."""


class ModelStateInvalid(VeloxError):
    status = 500


class TrainingFailed(VeloxError):
    status = 500


class ServerUnreachable(VeloxError):
    """Raised by veloxserve.client, never sent by a server: the connection failed or no answer
    came within the client's timeout. A call that is not idempotent may have been applied."""

    status = 503


class _Quote(reprlib.Repr):
    """repr() bounded in depth and width: a value nested 1,000 deep or a 1 MB string is quoted
    as a short prefix, never recursed into or echoed back whole."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel, self.maxlist, self.maxdict, self.maxtuple, self.maxset = 3, 4, 4, 4, 4
        self.maxother = self.maxlong = MAX_QUOTED_CHARS

    def repr_str(self, value: str, level: int) -> str:
        if len(value) <= MAX_QUOTED_CHARS // 2:
            return repr(value)
        return repr(value[: MAX_QUOTED_CHARS // 2])[:-1] + f"...' ({len(value)} characters)"


_QUOTE = _Quote()


def quote(value: Any) -> str:
    """A short, safe rendering of a client's value for an error message."""
    try:
        text = _QUOTE.repr(value)
    except Exception:  # a value whose repr fails still gets a 400, not a 500
        text = f"a {type(value).__name__}"
    return text if len(text) <= 2 * MAX_QUOTED_CHARS else text[: 2 * MAX_QUOTED_CHARS] + "..."


def invalid_parameter(field: str, where: str, expected: str, got: Any) -> InvalidInput:
    """Build the one error template for a bad parameter. The value is quoted by `quote` (a short
    prefix), and so is the field when it came from the client (an unknown key)."""
    if len(field) > MAX_QUOTED_CHARS:
        field = field[:MAX_QUOTED_CHARS] + "..."
    return InvalidInput(
        f"The {field!r} parameter of {where} must be {expected}. Got {quote(got)} instead.", field=field
    )


class MethodNotAllowed(VeloxError):
    status = 405

    def __init__(self, path: str, method: str, allowed: list[str]) -> None:
        super().__init__(f"{path} takes {' or '.join(allowed)}, not {method}. See /openapi.json.")
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        allowed = self.allowed + ["HEAD"] if "GET" in self.allowed and "HEAD" not in self.allowed else self.allowed
        return {"allow": ", ".join(allowed)}  # RFC 9110: a 405 lists the methods that work (HEAD with GET)


def no_route(path: str, method: str, allowed: list[str]) -> VeloxError:
    """405 naming the methods that `path` takes, or 404 when it takes none."""
    if allowed:
        return MethodNotAllowed(path, method, allowed)
    return NotFound(f"No route {path}. See /openapi.json for the API.")
