"""A local Redis Cluster for benchmarks and tests: 6 redis-server processes on free ports (3
masters, 3 replicas) joined by `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`.

Self-contained (it imports nothing of the project), so bench/ and tests/ can share it. No
persistence: it is thrown away with its directory.
"""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_ports() -> tuple[int, int]:
    """A client port and a cluster-bus port (by default the bus is port + 10000, which may be taken
    or past 65535: it is chosen free here and passed as --cluster-port)."""
    return _free_port(), _free_port()


class RedisCluster:
    """`with RedisCluster(tmp) as cluster: cluster.url` (the first master's address; a cluster
    client discovers the others)."""

    def __init__(self, directory: Path, nodes: int = 6) -> None:
        self.directory = Path(directory)
        self.nodes = nodes
        self.ports: list[int] = []
        self.procs: list[subprocess.Popen] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> RedisCluster:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        for _ in range(self.nodes):
            port, bus = _node_ports()
            node = self.directory / str(port)
            node.mkdir(parents=True, exist_ok=True)
            self.ports.append(port)
            self.procs.append(
                subprocess.Popen(
                    [
                        "redis-server",
                        "--port",
                        str(port),
                        "--cluster-port",
                        str(bus),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        str(node),
                    ]
                    + ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--appendonly", "no"]
                    + ["--save", "", "--daemonize", "no"],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for port in self.ports:
            self._wait(lambda port=port: self._cli(port, "ping") == "PONG", f"redis-server on port {port}")
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
            + ["--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self._wait(lambda: "cluster_state:ok" in self._cli(self.ports[0], "cluster", "info"), "cluster_state:ok")
        self._wait(lambda: len(self.masters()) == self.nodes // 2, "replicas attached")

    def pids(self) -> list[int]:
        """The redis-server processes' ids (their CPU time is in /proc/<pid>/stat)."""
        return [p.pid for p in self.procs]

    def masters(self) -> list[int]:
        """The ports of the masters (the shards that serve requests)."""
        lines = self._cli(self.ports[0], "cluster", "nodes").splitlines()
        return [
            int(line.split()[1].split(":")[1].split("@")[0]) for line in lines if "master" in line.split()[2].split(",")
        ]

    @staticmethod
    def _cli(port: int, *command: str) -> str:
        done = subprocess.run(["redis-cli", "-p", str(port), *command], capture_output=True, text=True, timeout=10)
        return done.stdout.strip()

    @staticmethod
    def _wait(ready, what: str, timeout: float = 30) -> None:  # noqa: ANN001
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.1)
        raise TimeoutError(f"{what} not ready within {timeout} s")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            proc.wait(10)

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
