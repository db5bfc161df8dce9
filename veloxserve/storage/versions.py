"""VersionStore: one directory of .npy arrays and meta.json per model version.

A version is written under a temporary name, fsynced, then renamed into place, so a reader sees
a whole version or none; an existing version is never overwritten.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from veloxserve.errors import NotFound, StoreUnavailable

META = "meta.json"


def _number(version: str) -> int | None:
    if version.startswith("v") and version[1:].isdigit():
        return int(version[1:])
    return None


class VersionStore:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def versions(self) -> list[str]:
        if not self.directory.is_dir():
            return []
        found = [(n, p.name) for p in self.directory.iterdir() if (n := _number(p.name)) is not None and (p / META).exists()]
        return [name for _, name in sorted(found)]

    def latest(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def exists(self, version: str) -> bool:
        return _number(version) is not None and (self.directory / version / META).exists()

    def write(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> str:
        """Store a new version; returns its id (v1, v2, …)."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.directory))
            try:
                for name, array in arrays.items():
                    with open(tmp / f"{name}.npy", "wb") as fh:
                        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
                        fh.flush()
                        os.fsync(fh.fileno())
                existing = [_number(p.name) or 0 for p in self.directory.iterdir()]
                number = max(existing, default=0) + 1
                while True:
                    version = f"v{number}"
                    with open(tmp / META, "w", encoding="utf-8") as fh:
                        json.dump({**meta, "version": version}, fh, indent=2, default=_jsonable)
                        fh.flush()
                        os.fsync(fh.fileno())
                    try:
                        os.rename(tmp, self.directory / version)  # fails if the target exists and is non-empty
                        break
                    except OSError:
                        if not (self.directory / version).exists():
                            raise
                        number += 1
                fd = os.open(self.directory, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                return version
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            raise StoreUnavailable(f"Cannot write a version under {self.directory}: {exc}.") from exc

    def _require(self, version: str) -> Path:
        if not self.exists(version):
            known = ", ".join(self.versions()) or "none"
            raise NotFound(f"No version {version!r} in {self.directory}. Versions: {known}.", field="version")
        return self.directory / version

    def read_meta(self, version: str) -> dict[str, Any]:
        with open(self._require(version) / META, encoding="utf-8") as fh:
            return json.load(fh)

    def read_arrays(self, version: str) -> dict[str, np.ndarray]:
        path = self._require(version)
        return {p.stem: np.load(p, allow_pickle=False) for p in sorted(path.glob("*.npy"))}

    def list(self) -> list[dict[str, Any]]:
        return [self.read_meta(v) for v in self.versions()]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
