"""Property-based fuzzing of the whole HTTP API from its own OpenAPI schema (schemathesis).

Every operation gets generated inputs, valid and invalid, sent in-process to the ASGI app with an
admin token; every answer must be a non-5xx that the schema describes (status, headers, body).
The example count is bounded so the whole run stays around a minute on two cores.
"""

from __future__ import annotations


import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.conftest import synthetic_version_arrays
from tests.helpers import admin_headers
from veloxserve.api import create_app
from veloxserve.api.openapi import openapi_schema
from veloxserve.config import HomeLayout
from veloxserve.serving.velox import Velox
from veloxserve.storage.versions import VersionStore

EXAMPLES_PER_OPERATION = 25


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    home = tmp_path_factory.mktemp("fuzz")
    arrays, meta = synthetic_version_arrays(name="songs")
    VersionStore(HomeLayout(home).versions_dir("songs")).write(arrays, meta)
    with Velox(home) as velox:
        SERVED.app = create_app(velox)
        SERVED.token = admin_headers(home)["authorization"].removeprefix("Bearer ")
        yield
        SERVED.app = None


class _ServedApp:
    """The ASGI app the module fixture builds, reachable before it exists: schemathesis binds the
    schema (collected at import) to an app, and a Velox must not be opened at import."""

    app = None
    token = ""

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)


SERVED = _ServedApp()
schema = schemathesis.openapi.from_dict(openapi_schema())  # the very schema /openapi.json serves
schema.app = SERVED


@schema.auth()
class AdminToken:
    """Sent with every case; schemathesis's ignored-auth check also replays admin calls without it."""

    def get(self, case, context) -> str:
        return SERVED.token

    def set(self, case, data: str, context) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}  # as the scheme declares it


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_no_generated_request_gets_a_5xx_or_an_undocumented_answer(case, served) -> None:
    case.call_and_validate(base_url="http://testserver")
