"""Sketch files count while their writer is alive and keeps them fresh, and only for their version."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from veloxserve.storage.sketch_files import STALE_AFTER, SketchFiles


def _snapshot(n: int) -> dict:
    return {"items": n, "unknown": np.arange(n) % 2 == 0, "served": n, "scores": np.linspace(0, 1, n)}


def test_a_snapshot_reads_back_as_written_for_its_version_only(tmp_path: Path) -> None:
    files = SketchFiles(tmp_path)
    files.write("worker-1", "songs", "v1", _snapshot(5))
    files.write("worker-2", "songs", "v2", _snapshot(3))  # another version: not these requests
    files.write("worker-1", "films", "v1", _snapshot(4))
    (got,) = files.read("songs", "v1")
    expected = _snapshot(5)
    assert got.keys() == expected.keys() and got["items"] == 5 and isinstance(got["items"], int)
    assert all(np.array_equal(got[k], expected[k]) for k in ("unknown", "scores"))
    assert files.read("missing", "v1") == []
    files.write("worker-1", "songs", "v1", _snapshot(7))  # replaced, not added
    assert [s["items"] for s in files.read("songs", "v1")] == [7]


def test_a_stale_snapshot_is_not_counted_until_its_writer_touches_it(tmp_path: Path) -> None:
    files = SketchFiles(tmp_path)
    files.write("worker-1", "songs", "v1", _snapshot(5))
    path = tmp_path / "songs" / "worker-1.npz"
    written = path.stat().st_mtime
    assert len(files.read("songs", "v1", now=written + STALE_AFTER - 0.5)) == 1
    assert files.read("songs", "v1", now=written + STALE_AFTER + 0.5) == []
    old = time.time() - 2 * STALE_AFTER
    os.utime(path, (old, old))  # a writer that stopped writing
    assert files.read("songs", "v1") == []
    assert files.touch("worker-1", "songs") and len(files.read("songs", "v1")) == 1
    files.remove("worker-1", "songs")
    assert not files.touch("worker-1", "songs") and files.read("songs", "v1") == []


def test_a_dead_writers_snapshot_is_not_counted_though_fresh(tmp_path: Path) -> None:
    files = SketchFiles(tmp_path)
    files.write("worker-1", "songs", "v1", _snapshot(5))
    script = (
        "import sys, numpy as np; from veloxserve.storage.sketch_files import SketchFiles; "
        "SketchFiles(sys.argv[1]).write('worker-2', 'songs', 'v1', {'items': 9, 'unknown': np.ones(9, bool)})"
    )
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)  # written, then the writer exited
    assert (tmp_path / "songs" / "worker-2.npz").exists()
    assert [s["items"] for s in files.read("songs", "v1")] == [5]


def test_an_unreadable_file_is_left_out(tmp_path: Path) -> None:
    files = SketchFiles(tmp_path)
    files.write("worker-1", "songs", "v1", _snapshot(5))
    (tmp_path / "songs" / "worker-2.npz").write_bytes(b"not a zip")
    assert [s["items"] for s in files.read("songs", "v1")] == [5]
