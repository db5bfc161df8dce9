"""Who may call what. One table classifies the routes; a guard checks the bearer token.

Admin routes change models or erase data and always need an admin token (unless the server runs
with `--no-auth`). Prediction and observation routes are open by default; a model listed in
`AuthConfig.keyed_models` needs a key for it (a `model:<name>` token) or an admin token. Every
other route (listing, metadata, metrics, health, the schema) is open.

Who may call a route is declared with the route, in the route table (routes.py: `Route.access`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from veloxserve.api.routes import ADMIN_ROUTES, MODEL_ROUTES, Access, Route
from veloxserve.errors import Forbidden, Unauthorized
from veloxserve.storage.tokens import ADMIN

if TYPE_CHECKING:
    from veloxserve.storage.tokens import TokenRecord, TokenStore

__all__ = ["ADMIN_ROUTES", "ALL_MODELS", "MODEL_ROUTES", "AuthConfig", "Guard"]
ALL_MODELS = "*"
_HOW = (
    "Send it as 'Authorization: Bearer <token>' (the CLI: --token or VELOXSERVE_TOKEN). "
    "An operator creates one on the server with `veloxserve token create --home <home>`{model}."
)


@dataclass(frozen=True)
class AuthConfig:
    """`enabled=False` is `serve --no-auth` (local development only). `keyed_models` are the models
    whose predict/top_k/observe need a key; "*" means every model."""

    enabled: bool = True
    keyed_models: frozenset[str] = field(default_factory=frozenset)


class Guard:
    """Raise Unauthorized (401) or Forbidden (403) for a request that may not run."""

    def __init__(self, tokens: TokenStore, config: AuthConfig | None = None) -> None:
        self.tokens = tokens
        self.config = config or AuthConfig()
        self._keyed = self.config.keyed_models

    def check(self, route: Route, args: list[str], path: str, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """`args` are the route's path arguments: a keyed route's first names the model (or application)."""
        if not self.config.enabled or route.access is Access.OPEN:
            return
        method = route.method
        if route.access is Access.ADMIN:
            record = self._authenticate(headers, route, "")
            if record.scope != ADMIN:
                raise Forbidden(
                    f"The token {record.name or record.id!r} has scope {record.scope!r}; "
                    f"{method} {path} needs an admin token: `veloxserve token create --home <home>`."
                )
        elif self._keyed:
            model = args[0]
            if ALL_MODELS not in self._keyed and model not in self._keyed:
                return
            hint = f" --model {model}"
            record = self._authenticate(headers, route, hint)
            if not record.allows_model(model):
                raise Forbidden(
                    f"The token {record.name or record.id!r} has scope {record.scope!r}; {method} {path} "
                    f"needs an admin token or a key for model {model!r}: `veloxserve token create{hint}`."
                )

    def _authenticate(self, headers: Iterable[tuple[bytes, bytes]], route: Route, hint: str) -> TokenRecord:
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                record = self.tokens.verify(token.strip()) if scheme.lower() == "bearer" else None
                if record is None:
                    raise Unauthorized(
                        "The API token is not valid (unknown, revoked or mistyped). " + _HOW.format(model=hint),
                        field="authorization",
                    )
                return record
        raise Unauthorized(
            f"{route.method} {route.label} needs an API token. " + _HOW.format(model=hint), field="authorization"
        )
