"""What is deployed, persisted under `<home>/clipper/`, so a restart serves the same thing.

    clipper/models/<name>/versions/<v>/meta.json   framework, method, batching, created_at
    clipper/models/<name>/versions/<v>/<file>      the model file, copied in (rollback never
                                                   depends on the original still existing)
    clipper/models/<name>/ACTIVE                   the serving version
    clipper/models/<name>/status.json              each version's history and its probed
                                                   input_shape and output_shape
    clipper/models/<name>/REPLICAS                 how many container processes serve it
    clipper/apps/<name>.json                       an application's configuration
    clipper/apps/<name>.feedback                   its feedback log (veloxserve/clipper/feedback_log.py)
    clipper/apps/<name>.feedback-<i>               frontend i's, with several frontends (frontends.py)
    clipper/serving.json, clipper/OWNER.lock       the owner frontend's containers (frontends.py)

A model's versions are the core's version catalogue (storage/version_catalog.py over
storage/versions.py), as for Velox models: `v1`, `v2`, … never overwritten, each written under a
temporary name, fsynced and renamed into place; ACTIVE, REPLICAS and status.json are replaced
atomically and fsynced (storage/pointer.py).
"""

from __future__ import annotations

import datetime as dt
import glob
import shutil
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from veloxserve.clipper.adapters import Framework
from veloxserve.clipper.application import AppConfig
from veloxserve.clipper.batching import BatchingConfig
from veloxserve.clipper.replica import ContainerSpec
from veloxserve.errors import ModelNotFound, NotFound
from veloxserve.storage.atomic import replace_atomically
from veloxserve.storage.pointer import read_pointer, write_pointer
from veloxserve.storage.version_catalog import VersionCatalog


class ModelRegistry:
    """Model versions, the active one, replica counts and applications, on disk."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.models = self.root / "models"
        self.apps = self.root / "apps"

    # ---- models ------------------------------------------------------------------------
    def model_names(self) -> list[str]:
        if not self.models.is_dir():
            return []
        return sorted(p.name for p in self.models.iterdir() if (p / "ACTIVE").exists())

    def _catalog(self, name: str) -> VersionCatalog:
        return VersionCatalog(self.models / name)

    def add_version(
        self,
        name: str,
        framework: Framework,
        source: Path,
        method: str | None,
        batching: BatchingConfig,
        hang_timeout: float,
        **extra: Any,
    ) -> dict[str, Any]:
        """Copy `source` in as the next version; `extra` goes into its meta.json (method_from, sample).
        The version store writes it (fsynced, renamed into place), as it writes the core's versions."""
        source = Path(source)
        meta = {
            "model": name,
            "framework": Framework(framework).value,
            "file": source.name,
            "source": str(source.resolve()),
            "method": method,
            "hang_timeout": hang_timeout,
            "batching": {
                "objective": batching.objective,
                "delay": batching.delay,
                "adaptive": batching.adaptive,
                "initial_size": batching.initial_size,
                "max_size": batching.max_size,
            },
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            **{key: value for key, value in extra.items() if value is not None},
        }

        def copy(fh: BinaryIO) -> None:
            with open(source, "rb") as original:
                shutil.copyfileobj(original, fh)

        version = self._catalog(name).versions.write({}, meta, files={source.name: copy})
        return {**meta, "version": version}

    def meta(self, name: str, version: str) -> dict[str, Any]:
        """meta.json with what the catalogue learned since (probed shapes) and its status."""
        catalog = self._catalog(name)
        if not catalog.versions.exists(version):
            raise NotFound(f"Model {name!r} has no version {version!r}; see GET /containers/{name}.")
        return catalog.entry(version)

    def update_meta(self, name: str, version: str, **fields: Any) -> dict[str, Any]:
        """Add what was learned about a version once it ran (its probed input and output shapes)."""
        self._catalog(name).annotate(version, **fields)
        return self.meta(name, version)

    def versions(self, name: str) -> list[str]:
        return self._catalog(name).versions.versions()

    def spec(self, name: str, version: str) -> tuple[ContainerSpec, BatchingConfig]:
        meta = self.meta(name, version)
        path = self.models / name / "versions" / version / meta["file"]
        spec = ContainerSpec(Framework(meta["framework"]), path, meta["method"], meta["hang_timeout"])
        return spec, BatchingConfig(**meta["batching"])

    def active(self, name: str) -> str:
        version = self._catalog(name).pointed()
        if version is None:
            raise ModelNotFound(f"No model {name!r} is deployed; deploy it with POST /containers.")
        return version

    def activate(self, name: str, version: str) -> None:
        self._catalog(name).activate(version)

    def replicas(self, name: str) -> int:
        return int(read_pointer(self.models / name / "REPLICAS") or 1)

    def set_replicas(self, name: str, replicas: int) -> None:
        write_pointer(self.models / name / "REPLICAS", str(replicas))

    def discard_version(self, name: str, version: str) -> None:
        """Remove a version that never served (its containers failed to start)."""
        self._catalog(name).discard(version)
        if not self.versions(name) and not (self.models / name / "ACTIVE").exists():
            shutil.rmtree(self.models / name, ignore_errors=True)

    def remove(self, name: str) -> None:
        shutil.rmtree(self.models / name, ignore_errors=True)

    # ---- applications ------------------------------------------------------------------
    def app_configs(self) -> list[AppConfig]:
        if not self.apps.is_dir():
            return []
        return [AppConfig.from_json(orjson.loads(p.read_bytes())) for p in sorted(self.apps.glob("*.json"))]

    def save_app(self, config: AppConfig) -> None:
        self.apps.mkdir(parents=True, exist_ok=True)
        body = orjson.dumps(config.to_json(), option=orjson.OPT_INDENT_2)
        replace_atomically(self.apps / f"{config.name}.json", lambda fh: fh.write(body))

    def feedback_log(self, name: str, frontend: int = 0) -> Path:
        """Frontend `frontend`'s feedback file for app `name` (frontend 0's is the one-process name)."""
        return self.apps / (f"{name}.feedback" if frontend == 0 else f"{name}.feedback-{frontend}")

    def feedback_logs(self, name: str) -> dict[int, Path]:
        """Every frontend's feedback file for app `name`, by frontend index."""
        found = {0: self.feedback_log(name)} if self.feedback_log(name).exists() else {}
        prefix = f"{name}.feedback-"
        for path in self.apps.glob(f"{glob.escape(prefix)}*") if self.apps.is_dir() else ():
            index = path.name[len(prefix) :]
            if index.isdigit() and index == str(int(index)):
                found[int(index)] = path
        return found

    def remove_app(self, name: str) -> None:
        (self.apps / f"{name}.json").unlink(missing_ok=True)
        for path in self.feedback_logs(name).values():
            path.unlink(missing_ok=True)
