"""veloxserve.client: the HTTP API from Python, with the verbs of the in-process `Velox`.

`Client` (blocking) and `AsyncClient` share one core (wire.py) and one declaration of each verb
(velox_calls.py, clipper_calls.py); answers are the small values of results.py; errors are the
exception classes of veloxserve.errors, as the in-process API raises them. See docs/client.md.
"""

from veloxserve.client.clients import DEFAULT_URL, TOKEN_ENV, AsyncClient, Client
from veloxserve.client.results import (
    App,
    AppObserved,
    AppPrediction,
    Deployment,
    ForgetReceipt,
    Health,
    ModelInfo,
    ModelMetrics,
    Observed,
    Prediction,
    RankedItem,
    Recommendation,
    RetrainJob,
    RetrainPolicy,
    Scores,
    Version,
    Versions,
)
from veloxserve.client.wire import DEFAULT_RETRY

__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_URL",
    "TOKEN_ENV",
    "App",
    "AppObserved",
    "AppPrediction",
    "AsyncClient",
    "Client",
    "Deployment",
    "ForgetReceipt",
    "Health",
    "ModelInfo",
    "ModelMetrics",
    "Observed",
    "Prediction",
    "RankedItem",
    "Recommendation",
    "RetrainJob",
    "RetrainPolicy",
    "Scores",
    "Version",
    "Versions",
]
