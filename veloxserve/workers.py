"""Workers: `veloxserve serve --workers N` serves one home with N processes on one port.

The `serve` process becomes a supervisor: it holds the port (a bound socket that does not listen)
and starts N workers, each listening on the port with its own SO_REUSEPORT socket, so the kernel
spreads new connections evenly over them. (One listening socket inherited by every worker was
measured first: every one of wrk's 32 connections went to the same worker, the other idle.)

Worker 0 is the home's embedded server as `serve` alone runs it (the home lock, the log, learning,
checkpoints, the lifecycle); it publishes every learned weight and version switch into a map in
shared memory before acknowledging it (storage/published_states.py), and listens on a Unix
socket. Workers 1..N-1 are readers: they answer predictions themselves from that map
(serving/reader.py) and forward everything else to worker 0 over persistent connections
(api/forwarding.py). Durability and recovery are embedded mode's own: an observation is
acknowledged after the log's group commit, and a worker 0 restarted after kill -9 recovers from
the LMDB checkpoint and the log, and republishes, before it answers again (readers go on
answering predictions from the map meanwhile, and queue and retry the rest). Each reader leaves
a snapshot of its monitors' sketches beside the map every second, and worker 0's monitoring
report counts them with its own (storage/sketch_files.py). Any worker that dies is restarted; a worker that exits with 2 (a usage error, such as
a home another process holds) stops them all. docs/deployment.md says what this buys, measured.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from veloxserve.children import die_with_parent

MAX_WORKERS = 64
_SHARED_MEMORY = Path("/dev/shm")  # the published map and the socket: in memory, where the system has it


def published_path(worker0_socket: str | Path) -> Path:
    """Where worker 0 publishes learned weights for the readers (storage/published_states.py)."""
    return Path(worker0_socket).parent / "published"


def sketches_path(worker0_socket: str | Path) -> Path:
    """Where the readers leave what their monitors saw, for worker 0's reports (storage/sketch_files.py)."""
    return Path(worker0_socket).parent / "sketches"


_USAGE_ERROR = 2  # cli.py's exit code for a VeloxError


class Supervisor:
    """Starts, watches and restarts the workers of one `serve --workers N`."""

    def __init__(self, argv: list[str], workers: int, held: socket.socket) -> None:
        """`argv`: the `serve` command line, given again to each worker with its role; `held`: the
        socket that holds the port (bound, not listening)."""
        self.argv = argv
        self.held = held
        shm = _SHARED_MEMORY if _SHARED_MEMORY.is_dir() and os.access(_SHARED_MEMORY, os.W_OK) else None
        self._dir = Path(tempfile.mkdtemp(prefix="veloxserve-workers-", dir=shm))
        self.worker0_socket = self._dir / "worker0.sock"
        self._metrics_dir = self._dir / "metrics"
        self._metrics_dir.mkdir()
        self._procs: list[subprocess.Popen[bytes] | None] = [None] * workers
        self._started = [0.0] * workers
        self._failures = [0] * workers
        self._stopping = False

    def _command(self, index: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "veloxserve.cli",
            *self.argv,
            "--worker-index",
            str(index),
            "--port",  # the port held (the command line may say 0: any free port)
            str(self.held.getsockname()[1]),
            "--worker0-socket",
            str(self.worker0_socket),
        ]

    def _start(self, index: int) -> None:
        # every worker's request metrics in one directory, summed by worker 0's /metrics (api/metrics.py)
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self._metrics_dir)}
        self._procs[index] = subprocess.Popen(self._command(index), env=env, preexec_fn=die_with_parent)
        self._started[index] = time.monotonic()

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0) or a worker's usage error (2)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        try:
            for index in range(len(self._procs)):
                self._start(index)
            return self._watch()
        finally:
            self._stop_all()
            self.held.close()
            shutil.rmtree(self._dir, ignore_errors=True)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _watch(self) -> int:
        due: dict[int, float] = {}  # dead workers and when to restart them
        while not self._stopping:
            time.sleep(0.1)
            now = time.monotonic()
            for index, proc in enumerate(self._procs):
                if proc is None or index in due or proc.poll() is None:
                    continue
                if proc.returncode == _USAGE_ERROR:
                    print(f"worker {index} refused to start (see above): stopping", file=sys.stderr, flush=True)
                    return _USAGE_ERROR
                # A worker that dies soon after starting is restarted ever more slowly (up to 5 s).
                self._failures[index] = self._failures[index] + 1 if now - self._started[index] < 10 else 0
                due[index] = now + min(0.1 * 2 ** self._failures[index], 5.0)
                print(
                    f"worker {index} (pid {proc.pid}) exited with {proc.returncode}: restarting it",
                    file=sys.stderr,
                    flush=True,
                )
            for index, when in list(due.items()):
                if now >= when:
                    del due[index]
                    self._start(index)
        return 0

    def _stop_all(self) -> None:
        """Readers first (their requests in flight finish on worker 0), then worker 0 (it checkpoints)."""
        for group in (self._procs[1:], self._procs[:1]):
            for proc in group:
                if proc is not None and proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                if proc is None:
                    continue
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
