"""Crash-safe file replacement: write a temporary file, fsync it, rename it over the target,
fsync the directory. A reader (or a restart after a crash) sees the old file or the new one."""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

Writer = Callable[[BinaryIO], object]


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_name(path: Path) -> Path:
    """Hidden, beside the target (same filesystem, so the rename is atomic), and unique to this
    process, thread and call: two writers replacing one file at once (two servers starting over
    one home both write ACTIVE; two `token create`) never write into or rename away each other's
    temporary. Call it once per write and keep the name."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}.tmp")


def write_synced(path: Path, write: Writer) -> None:
    with open(path, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())


def replace_atomically(path: Path, write: Writer) -> None:
    """Replace `path` with what `write(file)` writes. OSError propagates; the temporary is removed."""
    path = Path(path)
    tmp = temporary_name(path)
    try:
        write_synced(tmp, write)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        if tmp.exists():
            tmp.unlink()
