"""The route table is the one contract: dispatch, the OpenAPI document, auth and labels agree with it."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from tests.conftest import synthetic_version_arrays
from tests.helpers import admin_headers
from veloxserve.api import create_app
from veloxserve.api.openapi import openapi_schema
from veloxserve.api.routes import ADMIN_ROUTES, MODEL_ROUTES, ROUTES, Access, Router
from veloxserve.config import HomeLayout, ServingConfig
from veloxserve.errors import MethodNotAllowed, NotFound
from veloxserve.serving.velox import Velox
from veloxserve.storage.versions import VersionStore

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH")
EXAMPLE = {"name": "songs", "version": "v1", "user": "3", "app": "shop"}


def _concrete(template: str) -> str:
    for param, value in EXAMPLE.items():
        template = template.replace("{" + param + "}", value)
    return template


def test_every_dispatched_route_is_in_the_document_and_every_documented_operation_is_dispatched() -> None:
    router = Router()
    dispatched = set()
    for template in {r.path for r in ROUTES}:
        path = _concrete(template)
        for method in METHODS:
            try:
                route, _ = router.match(method, path, path.split("/"))
            except MethodNotAllowed:
                continue
            assert route.path == template  # the concrete path reaches its own template, not another
            dispatched.add((method.lower(), template))
    documented = {(method, path) for path, ops in openapi_schema()["paths"].items() for method in ops}
    assert dispatched == documented
    assert len(documented) == len(ROUTES) and ("get", "/openapi.json") in documented


def test_an_unknown_path_or_an_empty_id_is_404_and_a_known_path_lists_its_methods_in_405() -> None:
    router = Router()
    for path in ("/nowhere", "/models/songs/nothing", "/models//predict", "/models/songs/"):
        with pytest.raises(NotFound):
            router.match("GET", path, path.split("/"))
    with pytest.raises(MethodNotAllowed) as refused:
        router.match("DELETE", "/models/songs/predict", "/models/songs/predict".split("/"))
    assert refused.value.allowed == ["GET", "POST"]


def test_auth_tables_labels_and_security_come_from_the_table() -> None:
    paths = openapi_schema()["paths"]
    for route in ROUTES:
        operation = paths[route.path][route.method.lower()]
        assert (route.method, route.label) in (
            ADMIN_ROUTES
            if route.access is Access.ADMIN
            else MODEL_ROUTES
            if route.access is Access.MODEL_KEY
            else {(route.method, route.label)}
        )
        expected = {Access.ADMIN: [{"bearer": []}], Access.MODEL_KEY: [{}, {"bearer": []}], Access.OPEN: None}
        assert operation.get("security") == expected[route.access]
        assert any(p["name"] == "X-Deadline-Ms" for p in operation["parameters"]) == route.admitted
        assert Router().label(_concrete(route.path).split("/")) == route.label


def test_the_document_states_the_configured_batch_limit(tmp_path: Path) -> None:
    arrays, meta = synthetic_version_arrays(name="songs")
    VersionStore(HomeLayout(tmp_path).versions_dir("songs")).write(arrays, meta)
    with (
        Velox(tmp_path, config=ServingConfig(max_batch=7)) as velox,
        TestClient(create_app(velox), headers=admin_headers(tmp_path)) as client,
    ):
        document = client.get("/openapi.json").json()
        batch = document["paths"]["/models/{name}/predict"]["post"]["requestBody"]["content"]["application/json"]
        assert batch["schema"]["properties"]["queries"]["maxItems"] == 7
        assert client.post("/models/songs/predict", json={"queries": [{"user": 1, "item": 101}] * 8}).status_code == 400
        k = next(p for p in document["paths"]["/models/{name}/top_k"]["get"]["parameters"] if p["name"] == "k")
        assert k["schema"]["maximum"] == 50  # the served catalogue
