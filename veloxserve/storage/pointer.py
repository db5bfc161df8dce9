"""A small file that names one thing (the active version), replaced atomically."""

from __future__ import annotations

from pathlib import Path

from veloxserve.errors import StoreUnavailable
from veloxserve.storage.atomic import replace_atomically


def write_pointer(path: Path, value: str) -> None:
    """Write `value` to `path` so that readers see the old or the new value, never a mix."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        replace_atomically(path, lambda fh: fh.write(value.encode("utf-8")))
    except OSError as exc:
        raise StoreUnavailable(
            f"Cannot write {path}: {exc}. Check the home directory's permissions and free space."
        ) from exc


def read_pointer(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreUnavailable(f"Cannot read {path}: {exc}.") from exc
