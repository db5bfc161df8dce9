"""The version catalog's status records when several processes share a home."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from veloxserve.storage.version_catalog import Status, VersionCatalog

_MARKER = """
import sys
from pathlib import Path
from veloxserve.storage.version_catalog import Status, VersionCatalog
catalog, name = VersionCatalog(Path(sys.argv[1])), sys.argv[2]
for i in range(60):
    catalog.mark(f"v{i}", Status.READY, **{f"by_{name}": i})
"""


def test_status_changes_by_concurrent_processes_are_all_kept(tmp_path: Path) -> None:
    """Each change re-reads status.json under an flock: without it two processes' read-modify-write
    cycles interleave and one's records vanish."""
    procs = [
        subprocess.Popen([sys.executable, "-c", _MARKER, str(tmp_path), name], stderr=subprocess.PIPE, text=True)
        for name in ("a", "b", "c")
    ]
    for proc in procs:
        assert proc.wait(120) == 0, proc.stderr.read() if proc.stderr else ""
    catalog = VersionCatalog(tmp_path)
    for i in range(60):
        entry = catalog.entry(f"v{i}")
        assert entry["status"] == Status.READY.value
        assert (entry["by_a"], entry["by_b"], entry["by_c"]) == (i, i, i), entry
