"""Who may call what. One table classifies the routes; a guard checks the bearer token.

Admin routes change models or erase data and always need an admin token (unless the server runs
with `--no-auth`). Prediction and observation routes are open by default; a model listed in
`AuthConfig.keyed_models` needs a key for it (a `model:<name>` token) or an admin token. Every
other route (listing, metadata, metrics, health, the schema) is open.

A new admin route is one line in ADMIN_ROUTES, keyed by the method and the route label the app
gives it for metrics (`veloxserve.api.app._route_label`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from veloxserve.api.clipper_routes import ADMIN_ROUTES as CLIPPER_ADMIN_ROUTES
from veloxserve.errors import Forbidden, Unauthorized
from veloxserve.storage.tokens import ADMIN, TokenRecord, TokenStore

ADMIN_ROUTES: frozenset[tuple[str, str]] = frozenset({
    ("POST", "retrain"),
    ("POST", "activate"),
    ("PUT", "policy"),
    ("DELETE", "forget"),
}) | CLIPPER_ADMIN_ROUTES  # deploy, scale, roll back and remove containers; create and remove applications
MODEL_ROUTES: frozenset[tuple[str, str]] = frozenset({
    ("GET", "predict"), ("POST", "predict"), ("GET", "top_k"), ("POST", "top_k"), ("POST", "observe"),
    ("POST", "/apps/{app}/predict"), ("POST", "/apps/{app}/observe"),  # keyed by application name
})
ALL_MODELS = "*"
_HOW = ("Send it as 'Authorization: Bearer <token>' (the CLI: --token or VELOXSERVE_TOKEN). "
        "An operator creates one on the server with `veloxserve token create --home <home>`{model}.")


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

    def check(self, method: str, label: str, path: str, headers: Iterable[tuple[bytes, bytes]]) -> None:
        if not self.config.enabled:
            return
        route = (method, label)
        if route in ADMIN_ROUTES:
            record = self._authenticate(headers, route, "")
            if record.scope != ADMIN:
                raise Forbidden(f"The token {record.name or record.id!r} has scope {record.scope!r}; "
                                f"{method} {path} needs an admin token: `veloxserve token create --home <home>`.")
        elif self._keyed and route in MODEL_ROUTES:
            model = path.split("/")[2]
            if ALL_MODELS not in self._keyed and model not in self._keyed:
                return
            hint = f" --model {model}"
            record = self._authenticate(headers, route, hint)
            if not record.allows_model(model):
                raise Forbidden(f"The token {record.name or record.id!r} has scope {record.scope!r}; {method} {path} "
                                f"needs an admin token or a key for model {model!r}: `veloxserve token create{hint}`.")

    def _authenticate(self, headers: Iterable[tuple[bytes, bytes]], route: tuple[str, str], hint: str) -> TokenRecord:
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                record = self.tokens.verify(token.strip()) if scheme.lower() == "bearer" else None
                if record is None:
                    raise Unauthorized("The API token is not valid (unknown, revoked or mistyped). "
                                       + _HOW.format(model=hint), field="authorization")
                return record
        raise Unauthorized(f"{route[0]} {route[1]} needs an API token. " + _HOW.format(model=hint), field="authorization")
