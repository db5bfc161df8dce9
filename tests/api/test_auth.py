"""Authentication over HTTP: admin routes need an admin token; per-model keys for the data plane."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.conftest import synthetic_version_arrays
from veloxserve.api import create_app
from veloxserve.api.auth import ADMIN_ROUTES, MODEL_ROUTES, AuthConfig
from veloxserve.api.openapi import openapi_schema
from veloxserve.api.routes import Router
from veloxserve.config import HomeLayout
from veloxserve.serving.velox import Velox
from veloxserve.storage.tokens import TokenStore
from veloxserve.storage.versions import VersionStore

ADMIN_CALLS = [
    ("POST", "/models/songs/retrain", {"promote": "never"}),
    ("POST", "/models/songs/versions/v1/activate", None),
    ("PUT", "/models/songs/policy", {"every_observations": 5}),
    ("DELETE", "/users/3", None),
    ("DELETE", "/models/songs/users/3", None),
]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    for name in ("songs", "films"):
        arrays, meta = synthetic_version_arrays(name=name)
        VersionStore(HomeLayout(tmp_path).versions_dir(name)).write(arrays, meta)
    return tmp_path


def _client(velox: Velox, **auth) -> TestClient:
    return TestClient(create_app(velox, auth=AuthConfig(**auth)), raise_server_exceptions=False)


def _bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def test_the_schema_and_the_route_table_agree_on_who_needs_a_token() -> None:
    router = Router()
    for path, operations in openapi_schema()["paths"].items():
        concrete = (
            path.replace("{name}", "songs").replace("{version}", "v1").replace("{user}", "3").replace("{app}", "a")
        )
        for method in operations:
            route = (method.upper(), router.label(concrete.split("/")))
            if method != "get":
                assert route in ADMIN_ROUTES | MODEL_ROUTES, (method, path)
            expected = (
                [{"bearer": []}] if route in ADMIN_ROUTES else [{}, {"bearer": []}] if route in MODEL_ROUTES else None
            )
            assert operations[method].get("security") == expected, (method, path)


@pytest.mark.parametrize("method, path, body", ADMIN_CALLS)
def test_admin_routes_refuse_a_missing_invalid_or_underpowered_token_and_change_nothing(
    home, method, path, body
) -> None:
    tokens = TokenStore(HomeLayout(home).tokens_file)
    key = tokens.create(name="app", scope="model:songs")
    revoked = tokens.create(name="old")
    tokens.revoke("old")
    admin = tokens.create(name="ops")
    with Velox(home) as velox, _client(velox) as client:
        before = velox.server("songs").predict("3", "101"), velox.policy("songs"), velox.server("songs").version_id
        missing = client.request(method, path, json=body)
        assert missing.status_code == 401 and missing.json()["field"] == "authorization"
        assert "veloxserve token create" in missing.json()["message"] and missing.headers["www-authenticate"]
        for bad in (revoked, revoked[:-1], "garbage", ""):
            assert client.request(method, path, json=body, headers=_bearer(bad)).status_code == 401
        assert client.request(method, path, json=body, headers={"authorization": key}).status_code == 401  # no scheme
        forbidden = client.request(method, path, json=body, headers=_bearer(key))
        assert forbidden.status_code == 403 and "admin token" in forbidden.json()["message"]
        assert client.get("/models/songs/retrain").json()["retrain"] is None
        assert (
            velox.server("songs").predict("3", "101"),
            velox.policy("songs"),
            velox.server("songs").version_id,
        ) == before
        assert client.request(method, path, json=body, headers=_bearer(admin)).status_code in (200, 202)


def test_no_auth_opens_admin_routes(home) -> None:
    with Velox(home) as velox, _client(velox, enabled=False) as client:
        assert client.put("/models/songs/policy", json={"every_observations": 5}).status_code == 200


def test_per_model_keys_guard_the_data_plane_of_the_models_that_ask(home) -> None:
    tokens = TokenStore(HomeLayout(home).tokens_file)
    songs_key, films_key, admin = (
        tokens.create(scope="model:songs"),
        tokens.create(scope="model:films"),
        tokens.create(),
    )
    calls = [
        ("GET", "/models/songs/predict?user=1&item=101", None),
        ("GET", "/models/songs/top_k?user=1&k=2", None),
        ("POST", "/models/songs/predict", {"queries": [{"user": 1, "item": 101}]}),
        ("POST", "/models/songs/top_k", {"user": 1, "k": 2}),
        ("POST", "/models/songs/observe", {"user": 1, "item": 101, "score": 3.0}),
    ]
    with Velox(home) as velox, _client(velox, keyed_models=frozenset({"songs"})) as client:
        for method, path, body in calls:
            assert client.request(method, path, json=body).status_code == 401
            wrong = client.request(method, path, json=body, headers=_bearer(films_key))
            assert wrong.status_code == 403 and "--model songs" in wrong.json()["message"]
            for good in (songs_key, admin):
                assert client.request(method, path, json=body, headers=_bearer(good)).status_code == 200
            open_path = path.replace("songs", "films")  # films did not ask for keys
            assert client.request(method, open_path, json=body).status_code == 200
        assert client.get("/models/songs").status_code == 200  # metadata stays open
    with Velox(home) as velox, _client(velox, keyed_models=frozenset({"*"})) as client:
        assert client.get("/models/films/predict?user=1&item=101").status_code == 401
