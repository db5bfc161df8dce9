"""A small file that names one thing (the active version), replaced atomically."""

from __future__ import annotations

import os
from pathlib import Path

from veloxserve.errors import StoreUnavailable


def write_pointer(path: Path, value: str) -> None:
    """Write `value` to `path` so that readers see the old or the new value, never a mix."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(value)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise StoreUnavailable(f"Cannot write {path}: {exc}. Check the home directory's permissions and free space.") from exc


def read_pointer(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreUnavailable(f"Cannot read {path}: {exc}.") from exc
