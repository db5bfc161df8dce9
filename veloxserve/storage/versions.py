"""VersionStore: one directory of .npy arrays and meta.json per model version.

A version is written under a temporary name, fsynced, then renamed into place, so a reader sees
a whole version or none; an existing version is never overwritten. Writers hold a shared flock
on `.writing` meanwhile, so cleaning up after a trainer that died never removes a version another
process is writing now (several `serve` processes share a home over Redis).
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from veloxserve.errors import NotFound, StoreUnavailable
from veloxserve.storage.atomic import Writer, fsync_dir, write_synced
from veloxserve.storage.home_lock import shared_file_lock

META = "meta.json"
_WRITING = ".writing"  # held shared by every process writing a version, exclusively by a cleanup


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
        found = [
            (n, p.name) for p in self.directory.iterdir() if (n := _number(p.name)) is not None and (p / META).exists()
        ]
        return [name for _, name in sorted(found)]

    def latest(self) -> str | None:
        versions = self.versions()
        return versions[-1] if versions else None

    def exists(self, version: str) -> bool:
        return _number(version) is not None and (self.directory / version / META).exists()

    def reserve(self) -> str:
        """Claim the next version id with an empty directory (a training run fills it later);
        an id is never handed out twice, even if its run fails."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            number = max((_number(p.name) or 0 for p in self.directory.iterdir()), default=0) + 1
            while True:
                try:
                    (self.directory / f"v{number}").mkdir()
                    return f"v{number}"
                except FileExistsError:
                    number += 1
        except OSError as exc:
            raise StoreUnavailable(f"Cannot reserve a version under {self.directory}: {exc}.") from exc

    def clean_incoming(self) -> int:
        """Remove half-written versions left by a trainer that died; returns how many. Nothing is
        removed while any process writes a version (it holds `.writing` shared, see `write`)."""
        if not self.directory.is_dir():
            return 0
        try:
            with shared_file_lock(self.directory / _WRITING, fcntl.LOCK_EX | fcntl.LOCK_NB):
                stale = list(self.directory.glob(".incoming-*"))
                for path in stale:
                    shutil.rmtree(path, ignore_errors=True)
                return len(stale)
        except BlockingIOError:
            return 0  # a writer is alive: whatever a dead one left is removed next time
        except OSError:
            return 0  # a read-only home: nothing is written there either

    def write(
        self,
        arrays: dict[str, np.ndarray],
        meta: dict[str, Any],
        *,
        version: str | None = None,
        files: Mapping[str, Writer] | None = None,
    ) -> str:
        """Store a new version; returns its id (v1, v2, …). With `version` (from `reserve`), fill
        that reserved id instead of taking the next one. `files` are other files of the version
        (name → what writes it: a Clipper model file), written and fsynced like the arrays."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with shared_file_lock(self.directory / _WRITING, fcntl.LOCK_SH):  # clean_incoming waits for us
                tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.directory))
                try:
                    for name, array in arrays.items():
                        write_synced(tmp / f"{name}.npy", functools.partial(_save_array, array=array))
                    for name, writer in (files or {}).items():
                        write_synced(tmp / name, writer)
                    existing = [_number(p.name) or 0 for p in self.directory.iterdir()]
                    number = max(existing, default=0) + 1
                    reserved = version
                    while True:
                        version = reserved or f"v{number}"
                        text = json.dumps({**meta, "version": version}, indent=2, default=_jsonable)
                        write_synced(tmp / META, functools.partial(_write_text, text=text))
                        try:
                            # Replaces an empty (reserved) directory; fails if the target holds a version.
                            os.rename(tmp, self.directory / version)
                            break
                        except OSError:
                            if reserved or not (self.directory / version).exists():
                                raise
                            number += 1
                    fsync_dir(self.directory)
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


def _save_array(fh: BinaryIO, array: np.ndarray) -> None:
    np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def _write_text(fh: BinaryIO, text: str) -> None:
    fh.write(text.encode("utf-8"))


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
