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
    ├── StoreUnavailable (503)      a backing store (SQLite, Redis, the log) cannot be reached; Retry-After
    │   └── InsufficientStorage (507)  the disk refused the write (full); nothing was learned; Retry-After
    ├── ContainerUnavailable (503)  a model container crashed, hung or failed on a batch
    ├── DeadlineExceeded (504)      a query's latency objective passed before it was computed
    ├── Overloaded (503)            shed at once: the model's queue is full or the deadline cannot be met
    └── TrainingFailed (500)        offline training could not produce a version

Messages say which field, what was expected, what was got, and what to do, in the style of
scikit-learn's parameter validation: "The 'k' parameter of top_k must be an int in [1, 1682].
Got 0 instead."
"""

from __future__ import annotations

from typing import Any


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


class StoreUnavailable(VeloxError):
    """Nothing was acknowledged and nothing learned: retrying after Retry-After is safe."""

    status = 503
    retry_after = 1

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


class InsufficientStorage(StoreUnavailable):
    status = 507
    retry_after = 5


class ContainerUnavailable(VeloxError):
    status = 503


class DeadlineExceeded(VeloxError):
    status = 504


class Overloaded(VeloxError):
    """Refused before any work was done, so retrying after `retry_after` seconds is safe."""

    status = 503

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"retry-after": str(self.retry_after)}


class TrainingFailed(VeloxError):
    status = 500


QUOTE_CHARS = 80  # how much of a bad value an error message echoes back


def quote(value: Any) -> str:
    """A bad value as an error message shows it: its repr, cut to a short prefix (a 1 MB id is not
    echoed back whole), and never a RecursionError for JSON nested a thousand deep."""
    if isinstance(value, (str, bytes)) and len(value) > QUOTE_CHARS:
        value = value[:QUOTE_CHARS]
        return f"{value!r}... ({QUOTE_CHARS} characters shown)"
    try:
        text = repr(value)
    except RecursionError:
        return f"a {type(value).__name__} nested too deeply to show"
    return text if len(text) <= QUOTE_CHARS else f"{text[:QUOTE_CHARS]}... ({len(text)} characters in all)"


def invalid_parameter(field: str, where: str, expected: str, got: Any) -> InvalidInput:
    """Build the one error template for a bad parameter."""
    return InvalidInput(f"The {field!r} parameter of {where} must be {expected}. Got {quote(got)} instead.", field=field)


class MethodNotAllowed(VeloxError):
    status = 405

    def __init__(self, path: str, method: str, allowed: list[str]) -> None:
        super().__init__(f"{path} takes {' or '.join(allowed)}, not {method}. See /openapi.json.")
        self.allowed = allowed

    def headers(self) -> dict[str, str]:
        return {"allow": ", ".join(self.allowed)}  # RFC 9110: a 405 lists the methods that work


def no_route(path: str, method: str, allowed: list[str]) -> VeloxError:
    """405 naming the methods that `path` takes, or 404 when it takes none."""
    if allowed:
        return MethodNotAllowed(path, method, allowed)
    return NotFound(f"No route {path}. See /openapi.json for the API.")
