"""The web pages' files: the dashboard and the API documentation page, and the assets they load.

Everything a page loads is in the package (veloxserve/api/static/, package data): its own HTML,
JS and CSS, and the chart and OpenAPI libraries vendored from npm at build time (docs/dashboard.md
says which versions and how to update them). Nothing is fetched from another origin at run time,
and the pages say so to the browser: their Content-Security-Policy allows this origin only, so a
stray CDN link fails loudly in the browser test instead of quietly phoning out.

A file is served from `/assets/{asset}` only if it is in `ASSETS` (the static directory's files
with a known type, listed once at import): the name is a key of that table, never a path.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from veloxserve.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent / "static"
PAGES = {"dashboard": "dashboard.html", "docs": "docs.html"}  # served at /dashboard and /docs
_TYPES = {
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".txt": b"text/plain; charset=utf-8",  # the vendored libraries' licences
}
HTML = b"text/html; charset=utf-8"
# This origin only. 'unsafe-inline' styles: uPlot and Swagger UI set style attributes on the
# elements they draw; data: images are Swagger UI's inline SVG icons. No inline script runs.
CONTENT_SECURITY_POLICY = (
    b"default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
ASSETS: dict[str, bytes] = {
    path.name: _TYPES[path.suffix] for path in sorted(STATIC_DIR.iterdir()) if path.suffix in _TYPES
}


@dataclass(frozen=True)
class Asset:
    """A non-JSON answer that says its own content type (app.py renders it as given)."""

    body: bytes
    content_type: bytes
    page: bool = False  # an HTML page: sent with the Content-Security-Policy

    def headers(self) -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", self.content_type), (b"x-content-type-options", b"nosniff")]
        if self.page:
            return [*headers, (b"content-security-policy", CONTENT_SECURITY_POLICY), (b"cache-control", b"no-cache")]
        return [*headers, (b"cache-control", b"public, max-age=300")]


@cache
def page(name: str) -> Asset:
    """The HTML of a page of PAGES (read once)."""
    return Asset((STATIC_DIR / PAGES[name]).read_bytes(), HTML, page=True)


@cache
def _read(name: str) -> Asset:
    return Asset((STATIC_DIR / name).read_bytes(), ASSETS[name])


def asset(name: str) -> Asset:
    """The file `name` of ASSETS; NotFound (404) for any other name."""
    if name not in ASSETS:
        raise NotFound(
            f"No asset {name!r}. The pages' assets are: {', '.join(ASSETS)}.",
            field="asset",
        )
    return _read(name)
