"""One process owns a home directory: two writers on one observation log would interleave it."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from veloxserve.errors import Conflict


class HomeLock:
    """An exclusive advisory lock, released by the OS even if the process is killed with -9."""

    def __init__(self, path: Path, advice: str = "Stop it, or use another --home.") -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            raise Conflict(f"{path.parent} is in use by another veloxserve process (pid {owner}). {advice}") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


@contextmanager
def shared_file_lock(path: Path, operation: int = fcntl.LOCK_EX, mode: int = 0o644) -> Iterator[None]:
    """Waits for, then holds, an flock on `path` (created if missing) across the processes sharing
    a home: two forgets rewriting one version's files at once would bring a user back, two status
    updates would lose one. `operation`: LOCK_EX, LOCK_SH, either with LOCK_NB (then
    BlockingIOError if another holds it). The kernel releases it when its process dies."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, mode)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)  # releases the lock
