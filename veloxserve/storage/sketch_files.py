"""Sketch files: what the readers of `serve --workers N` saw, left for worker 0's monitoring.

A reader answers predictions through a ModelServer of its own, so its requests fill its own
monitor's sketch (serving/deviations.py), while the monitoring report is worker 0's. Every
`PERIOD` seconds each reader writes the snapshot of each model it serves to
`<directory>/<model>/<instance>.npz` (a temporary renamed over it, so a read sees a whole file),
and worker 0 merges the snapshots of the version it serves into its own when it reports
(serving/monitoring.py). The directory is the supervisor's, in memory (/dev/shm), and goes with it.

A snapshot counts only while its writer is alive and keeps it fresh: written or touched within
`STALE_AFTER` seconds, by a process that still exists. A reader killed with -9 stops counting at
once (its pid is gone); one that hangs stops counting after STALE_AFTER; the reader that replaces
it writes the same file afresh. A file that cannot be read (a writer's disk full, a format of
another release) is skipped: monitoring then reports what the others saw.
"""

from __future__ import annotations

import logging
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from veloxserve.storage.atomic import replace_atomically

log = logging.getLogger(__name__)

PERIOD = 1.0  # seconds between a reader's writes
STALE_AFTER = 5.0  # a snapshot older than this is not counted: a few missed writes, not a dead reader's forever


class SketchFiles:
    """The readers' sketch snapshots of one `serve --workers N`, by model and worker instance."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, model: str, instance: str) -> Path:
        return self.directory / model / f"{instance}.npz"

    def write(self, instance: str, model: str, version: str, snapshot: dict[str, Any]) -> None:
        """Replace `instance`'s snapshot of `model` (served at `version`)."""
        path = self._path(model, instance)
        path.parent.mkdir(exist_ok=True)
        pid = np.int64(os.getpid())
        replace_atomically(path, lambda fh: np.savez(fh, version=np.str_(version), pid=pid, **snapshot))

    def touch(self, instance: str, model: str) -> bool:
        """Keep an unchanged snapshot fresh; False when there is none to keep (write it)."""
        try:
            os.utime(self._path(model, instance))
            return True
        except FileNotFoundError:
            return False

    def remove(self, instance: str, model: str) -> None:
        self._path(model, instance).unlink(missing_ok=True)

    def read(self, model: str, version: str, *, now: float | None = None) -> list[dict[str, Any]]:
        """The fresh snapshots of `model` at `version` by live writers (other versions: not these requests)."""
        now = time.time() if now is None else now
        out = []
        for path in sorted((self.directory / model).glob("*.npz")):
            try:
                if now - path.stat().st_mtime > STALE_AFTER:
                    continue
                with np.load(path, allow_pickle=False) as data:
                    snapshot = {key: data[key] for key in data.files}
            except FileNotFoundError:
                continue  # its writer removed it meanwhile
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                log.warning("sketch file %s cannot be read: monitoring leaves it out", path, exc_info=True)
                continue
            if str(snapshot.pop("version")) != version or not _alive(int(snapshot.pop("pid"))):
                continue
            out.append({key: int(value) if value.ndim == 0 else value for key, value in snapshot.items()})
        return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True
