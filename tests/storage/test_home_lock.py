"""The lock file the processes sharing a home take around rewriting the files they share."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from veloxserve.storage.home_lock import shared_file_lock


def test_a_second_process_waits_for_the_shared_file_lock_until_it_is_released(tmp_path: Path) -> None:
    lock, trace = tmp_path / ".forget.lock", tmp_path / "trace"
    other = [
        sys.executable,
        "-c",
        "import sys; from pathlib import Path; from veloxserve.storage.home_lock import shared_file_lock\n"
        f"Path({str(trace)!r}).open('a').write('waiting\\n')\n"
        f"with shared_file_lock(Path({str(lock)!r})):\n"
        f"    Path({str(trace)!r}).open('a').write('other\\n')",
    ]
    with shared_file_lock(lock):
        proc = subprocess.Popen(other)
        while not trace.exists() or "waiting" not in trace.read_text():
            assert proc.poll() is None
            time.sleep(0.01)
        with trace.open("a") as f:
            f.write("released\n")  # before the other process can have taken it
    assert proc.wait(60) == 0
    assert trace.read_text().split() == ["waiting", "released", "other"]
