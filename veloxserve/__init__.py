"""veloxserve: personalised predictions that learn online, score = σ(w_u · f(x; θ))."""

__version__ = "0.1.0"

from veloxserve.config import ServingConfig  # noqa: E402
from veloxserve.errors import (  # noqa: E402
    Conflict,
    InvalidInput,
    ItemNotFound,
    ModelNotFound,
    NotFound,
    StoreUnavailable,
    TrainingFailed,
    VeloxError,
)


def __getattr__(name: str) -> object:
    """Velox is imported on first use: a model container (python -m veloxserve.clipper.container)
    imports this package and should not pay for numba, LMDB and FAISS it never uses."""
    if name == "Velox":
        from veloxserve.serving.velox import Velox

        return Velox
    raise AttributeError(f"module 'veloxserve' has no attribute {name!r}")


__all__ = [
    "Conflict",
    "InvalidInput",
    "ItemNotFound",
    "ModelNotFound",
    "NotFound",
    "ServingConfig",
    "StoreUnavailable",
    "TrainingFailed",
    "Velox",
    "VeloxError",
    "__version__",
]
