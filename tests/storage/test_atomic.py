"""Crash-safe replacement when several writers replace one file at once."""

from __future__ import annotations

import threading
from pathlib import Path

from veloxserve.storage.atomic import replace_atomically


def test_concurrent_replacements_of_one_file_all_succeed_and_leave_one_whole_version(tmp_path: Path) -> None:
    """Two servers starting over one home both write ACTIVE: with one shared temporary name one
    writer renamed the other's temporary away and failed with FileNotFoundError."""
    target, errors, start = tmp_path / "ACTIVE", [], threading.Barrier(4)

    def writer(n: int) -> None:
        start.wait()
        for _ in range(200):
            try:
                replace_atomically(target, lambda fh: fh.write(f"v{n}".encode() * 1000))
            except OSError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert target.read_bytes() in {f"v{n}".encode() * 1000 for n in range(4)}
    assert [p.name for p in tmp_path.iterdir()] == ["ACTIVE"]  # no temporary left behind
