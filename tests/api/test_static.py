"""The pages' files over HTTP: content types, the security policy, only this origin, nothing missing."""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from html.parser import HTMLParser
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from veloxserve.api import create_app
from veloxserve.api.static import ASSETS, PAGES, STATIC_DIR
from veloxserve.serving.velox import Velox

ROOT = Path(__file__).resolve().parents[2]
# The project's own files; the others in static/ are vendored from npm (vendored.json).
OWN = ("dashboard.html", "dashboard.js", "charts.js", "dashboard.css", "docs.html", "docs.js", "docs.css")
URL = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://|(?<![\w:])//[a-z0-9-]+\.[a-z]")  # a scheme, or a protocol-relative host
TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory):
    with Velox(tmp_path_factory.mktemp("static")) as velox, TestClient(create_app(velox)) as c:
        yield c


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.links += [value for name, value in attrs if name in ("src", "href") and value]


def _links(html: str) -> list[str]:
    parser = _Links()
    parser.feed(html)
    return parser.links


@pytest.mark.parametrize("path, name", [(f"/{page}", file) for page, file in PAGES.items()])
def test_the_pages_are_html_under_a_policy_that_allows_this_origin_only(client, path: str, name: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.content == (STATIC_DIR / name).read_bytes()
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "script-src" not in policy  # scripts: this origin, never inline
    head = client.head(path)
    assert (
        head.status_code == 200 and head.content == b"" and head.headers["content-length"] == str(len(response.content))
    )


@pytest.mark.parametrize("name", sorted(ASSETS))
def test_every_asset_is_served_as_its_own_type(client, name: str) -> None:
    response = client.get(f"/assets/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == TYPES[Path(name).suffix]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content == (STATIC_DIR / name).read_bytes()


@pytest.mark.parametrize("page", sorted(PAGES.values()))
def test_a_page_links_only_relative_paths_that_this_server_serves(client, page: str) -> None:
    links = _links((STATIC_DIR / page).read_text())
    assert links, page
    for link in links:
        if link == "data:,":  # the empty favicon: no request at all
            continue
        assert not URL.search(link) and not link.startswith("/"), link  # relative: works behind a path prefix
        assert client.get(f"/{link}").status_code == 200, link


@pytest.mark.parametrize("name", OWN)
def test_the_projects_own_files_name_no_other_origin(name: str) -> None:
    text = (STATIC_DIR / name).read_text()
    assert not URL.search(text), URL.search(text)


def test_the_vendored_files_load_nothing_from_a_cdn_and_carry_their_licences() -> None:
    vendored = set(ASSETS) - set(OWN)
    assert {"uPlot.iife.min.js", "uPlot.min.css", "swagger-ui-bundle.js", "swagger-ui.css"} <= vendored
    for name in vendored:
        text = (STATIC_DIR / name).read_text()
        assert not re.search(r"unpkg\.com|jsdelivr|cdnjs|googleapis|sourceMappingURL=https?:", text), name
    assert "MIT License" in (STATIC_DIR / "uPlot.LICENSE.txt").read_text()
    assert "Apache License" in (STATIC_DIR / "swagger-ui.LICENSE.txt").read_text()


def test_the_vendored_versions_are_recorded_in_one_script_the_files_and_the_docs() -> None:
    versions = json.loads((STATIC_DIR / "vendored.json").read_text())
    script = (ROOT / "scripts" / "vendor-web-assets.sh").read_text()
    docs = (ROOT / "docs" / "dashboard.md").read_text()
    assert f"UPLOT={versions['uplot']} " in script and f"SWAGGER_UI={versions['swagger-ui-dist']} " in script
    assert f"(v{versions['uplot']})" in (STATIC_DIR / "uPlot.iife.min.js").read_text()[:200]
    assert versions["uplot"] in docs and versions["swagger-ui-dist"] in docs


def test_the_package_data_ships_every_static_file() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["veloxserve.api"]
    for path in STATIC_DIR.iterdir():
        assert any(fnmatch.fnmatch(f"static/{path.name}", p) for p in patterns), path.name


@pytest.mark.parametrize("name", ["nope.js", "dashboard.html", "vendored.json", "..%2Fstatic.py", "%2E%2E"])
def test_anything_but_an_asset_is_a_404_naming_the_assets(client, name: str) -> None:
    response = client.get(f"/assets/{name}")
    assert response.status_code == 404
    body = response.json()
    assert body["field"] == "asset" and "uPlot.iife.min.js" in body["message"]
