"""HTTP/JSON translation of the in-process API."""

from veloxserve.api.factory import create_app

__all__ = ["create_app"]
