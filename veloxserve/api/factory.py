"""The app factory: the one place that chooses the HTTP app's backends (the token store of the
home, the Clipper runtime and the pipeline runtime over it) and hands them to it. The CLI and the tests build apps here."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from veloxserve.api.app import VeloxApp
from veloxserve.api.auth import AuthConfig
from veloxserve.clipper.frontends import Frontend
from veloxserve.clipper.runtime import ClipperRuntime
from veloxserve.pipelines.runtime import PipelineRuntime
from veloxserve.serving.admission import AdmissionConfig
from veloxserve.serving.velox import Velox
from veloxserve.storage.tokens import TokenStore


def create_app(
    velox: Velox,
    *,
    auth: AuthConfig | None = None,
    admission: AdmissionConfig | None = None,
    model_dirs: Iterable[Path] = (),
    frontend: Frontend | None = None,
) -> VeloxApp:
    """An ASGI app serving `velox`. Admin routes need a token from `velox`'s home unless
    `auth=AuthConfig(enabled=False)`; `admission` sets the load-shedding limits; Clipper deploys
    model files from `<home>/models-in/` and `model_dirs` only. `frontend`: which of several
    processes serving the home this is (clipper/frontends.py); default: from the environment
    (VELOXSERVE_WORKER_INDEX, VELOXSERVE_WORKERS), else the only one."""
    tokens = TokenStore(velox.layout.tokens_file)
    frontend = frontend or Frontend.from_env()
    clipper = ClipperRuntime(velox.layout.root, model_dirs=model_dirs, frontend=frontend)
    pipelines = PipelineRuntime(clipper, velox)  # stages over Clipper's deployed models and Velox's
    return VeloxApp(velox, tokens, clipper, auth=auth, admission=admission, pipelines=pipelines)
