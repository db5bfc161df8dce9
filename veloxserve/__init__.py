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
from veloxserve.serving.velox import Velox  # noqa: E402

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
