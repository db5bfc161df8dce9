"""The catalogue of one model's versions: what each is (its meta.json) and where it stands.

A version's arrays and meta.json never change once written; its status does (training → ready →
active → retired, or failed), so statuses live beside them in one small JSON file replaced
atomically. The ACTIVE pointer stays the single source of truth for which version serves;
`status.json` records the history and the reasons (why trained, why not promoted, what failed).
"""

from __future__ import annotations

import enum
import json
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from veloxserve.errors import NotFound
from veloxserve.storage.home_lock import shared_file_lock
from veloxserve.storage.pointer import read_pointer, write_pointer
from veloxserve.storage.versions import VersionStore


class Status(str, enum.Enum):
    TRAINING = "training"
    READY = "ready"
    ACTIVE = "active"
    RETIRED = "retired"
    FAILED = "failed"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


class VersionCatalog:
    """Versions of one model with their metadata and status. Every change re-reads and rewrites
    status.json holding `.status.lock` (an flock): several `serve` processes share a home over
    Redis, and a change made by one is never lost to another's concurrent rewrite."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = Path(model_dir)
        self.versions = VersionStore(self.model_dir / "versions")
        self._status_file = self.model_dir / "status.json"
        self._active_file = self.model_dir / "ACTIVE"
        self._lock = threading.Lock()

    # ---- reading -------------------------------------------------------------------------
    def active(self) -> str | None:
        return read_pointer(self._active_file) or self.versions.latest()

    def pointed(self) -> str | None:
        """The version ACTIVE names, None before the first activation (no fallback to the latest)."""
        return read_pointer(self._active_file)

    def _statuses(self) -> dict[str, dict[str, Any]]:
        text = read_pointer(self._status_file)
        return json.loads(text) if text else {}

    def entry(self, version: str) -> dict[str, Any]:
        """meta.json merged with the status record; the status of a version never recorded is
        `ready` (or `active` if the pointer names it)."""
        statuses = self._statuses()
        record = statuses.get(version)
        if record is None and not self.versions.exists(version):
            known = ", ".join(sorted(set(self.versions.versions()) | set(statuses), key=_order)) or "none"
            raise NotFound(f"No version {version!r}. Versions: {known}.", field="version")
        meta = self.versions.read_meta(version) if self.versions.exists(version) else {"version": version}
        entry = {**meta, **(record or {})}
        entry.setdefault("status", Status.READY.value)
        if version == self.active():
            entry["status"] = Status.ACTIVE.value
        elif entry["status"] == Status.ACTIVE.value:  # the pointer moved on (e.g. a crash mid-activation)
            entry["status"] = Status.RETIRED.value
        return entry

    def list(self) -> list[dict[str, Any]]:
        names = set(self.versions.versions()) | set(self._statuses())
        return [self.entry(v) for v in sorted(names, key=_order)]

    # ---- changing ------------------------------------------------------------------------
    def reserve(self, **fields: Any) -> str:
        """Claim the next version number for a training run and record it as `training`."""
        with self._changing():
            version = self.versions.reserve()
            self._update(version, status=Status.TRAINING.value, started_at=now(), **fields)
            return version

    def mark(self, version: str, status: Status, **fields: Any) -> None:
        with self._changing():
            self._update(version, status=status.value, updated_at=now(), **fields)

    def annotate(self, version: str, **fields: Any) -> None:
        """Record what was learned about a version after it was written (Clipper: its probed
        shapes); `entry` merges it over meta.json, which never changes."""
        with self._changing():
            self._update(version, **fields)

    def discard(self, version: str) -> None:
        """Forget a version that never served: its directory and its record, so the id can be
        written afresh without inheriting anything."""
        with self._changing():
            shutil.rmtree(self.versions.directory / version, ignore_errors=True)
            statuses = self._statuses()
            if statuses.pop(version, None) is not None:
                write_pointer(self._status_file, json.dumps(statuses, indent=1, sort_keys=True))

    def activate(self, version: str) -> str | None:
        """Point ACTIVE at `version` (atomically) and retire the previous one; returns it."""
        with self._changing():
            previous = self.active()
            write_pointer(self._active_file, version)
            if previous is not None and previous != version:
                self._update(previous, status=Status.RETIRED.value, retired_at=now())
            self._update(version, status=Status.ACTIVE.value, activated_at=now())
            return previous

    @contextmanager
    def _changing(self) -> Iterator[None]:
        self.model_dir.mkdir(parents=True, exist_ok=True)
        with self._lock, shared_file_lock(self.model_dir / ".status.lock"):
            yield

    def _update(self, version: str, **fields: Any) -> None:
        statuses = self._statuses()
        statuses[version] = {**statuses.get(version, {}), **fields}
        write_pointer(self._status_file, json.dumps(statuses, indent=1, sort_keys=True))


def _order(version: str) -> int:
    return int(version[1:]) if version[1:].isdigit() else 0
