"""Clipper's generalisation of the split model: any framework's model in its own process behind
one interface, adaptive batching under a latency objective, a prediction cache, and applications
whose policies select, ensemble and personalise models from feedback (Crankshaw et al., NSDI 2017).

Imports are lazy: a model container imports this package and must stay light.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "Clipper": "veloxserve.clipper.sync",
    "ClipperRuntime": "veloxserve.clipper.runtime",
    "Framework": "veloxserve.clipper.adapters",
    "Frontend": "veloxserve.clipper.frontends",
    "PolicyKind": "veloxserve.clipper.policies",
    "Loss": "veloxserve.clipper.policies",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'veloxserve.clipper' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


__all__ = sorted(_EXPORTS)
