"""HTTP/JSON translation of the in-process API."""

from veloxserve.api.app import create_app

__all__ = ["create_app"]
