"""Real server processes for tests: start `veloxserve serve` on a free port, stop or kill it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np


def admin_headers(home: Path) -> dict[str, str]:
    """A new admin token for `home`, as the header a client sends (admin routes need one)."""
    from veloxserve.config import HomeLayout
    from veloxserve.storage.tokens import TokenStore

    return {"authorization": f"Bearer {TokenStore(HomeLayout(Path(home)).tokens_file).create(name='tests')}"}


def eventually(condition, within: float = 60.0, every: float = 0.05) -> bool:
    """Poll `condition` until it holds or `within` seconds pass: a wait for a state, never a
    bound on how fast the state is reached (the generous deadline only stops a broken test)."""
    deadline = time.monotonic() + within
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, home: Path, *args: str, command: str = "serve") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "veloxserve.cli", command, "--home", str(home), "--port", str(self.port), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.proc.stdout.read()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError(f"server on {self.url} not ready after {timeout} s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


class RedisServer:
    """A redis-server of the test's own on a free port, with append-only persistence in
    `directory`: tests that stop or restart Redis never touch a shared one."""

    def __init__(self, directory: Path, *, port: int | None = None, args: tuple[str, ...] = ()) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.args = args
        self.proc: subprocess.Popen | None = None

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                *self.args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    import random

    while True:
        port = random.randint(20000, 40000)
        try:
            for p in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return port
        except OSError:
            continue


class RedisClusterServers:
    """A real Redis Cluster of our own: three masters with one replica each (six redis-servers),
    a node timeout of one second so a killed master's replica takes over within seconds."""

    def __init__(self, directory: Path) -> None:
        args = (
            "--cluster-enabled",
            "yes",
            "--cluster-node-timeout",
            "1000",
            "--appendfsync",
            "everysec",
            "--repl-diskless-sync-delay",
            "0",
        )
        self.servers = [RedisServer(Path(directory) / f"n{i}", port=_cluster_port(), args=args) for i in range(6)]
        self.address = f"redis://127.0.0.1:{self.servers[0].port}/0"  # a seed node, without options
        self.url = f"{self.address}?cluster=1"

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.servers]

    def pids(self) -> list[int]:
        """The redis-server processes' ids (their CPU time is in /proc/<pid>/stat)."""
        return [s.proc.pid for s in self.servers if s.proc is not None]

    def masters(self) -> list[int]:
        """The ports of the masters now (the shards that serve requests)."""
        return sorted({int(master[1]) for _, _, master, *_ in self._slots()})

    def start(self) -> RedisClusterServers:
        for server in self.servers:
            server.start()
        nodes = [f"127.0.0.1:{s.port}" for s in self.servers]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *nodes, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=60,
        )
        self.wait_ok()
        return self

    def live(self) -> list[RedisServer]:
        return [s for s in self.servers if s.proc is not None and s.proc.poll() is None]

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every live node says cluster_state:ok, every slot has a live master and every live
        replica is in sync with its master (its link up)."""
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                live = self.live()
                states = [redis.Redis(port=s.port).cluster("info")["cluster_state"] for s in live]
                ports = {s.port for s in live}
                links = [redis.Redis(port=s.port).info("replication") for s in live]
                in_sync = sum(i.get("master_link_status") == "up" for i in links) == len(live) - 3
                if (
                    in_sync
                    and all(state == "ok" for state in states)
                    and all(int(e[2][1]) in ports for e in self._slots())
                ):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the Redis Cluster did not reach cluster_state:ok")

    def _slots(self) -> list:
        import redis

        return redis.Redis(port=self.live()[0].port).execute_command("CLUSTER SLOTS")

    def master_of(self, key: str) -> RedisServer:
        """The server that owns `key`'s slot now."""
        import redis

        slot = int(redis.Redis(port=self.live()[0].port).execute_command("CLUSTER KEYSLOT", key))
        for low, high, master, *_ in self._slots():
            if low <= slot <= high:
                return next(s for s in self.servers if s.port == int(master[1]))
        raise LookupError(key)

    def kill(self, server: RedisServer) -> None:
        assert server.proc is not None
        server.proc.kill()  # -9: no chance to hand anything over
        server.proc.wait(10)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def observe_load(
    servers: list[ServerProcess],
    users: list[str],
    acked: list,
    stop: threading.Event,
    workers: int = 6,
    refused: list | None = None,
    items: range = range(100, 150),
):
    """Observations of `users` and `items` through all servers at once, `workers` threads each
    alternating between them, until `stop`; the 200s go to `acked`, the rest (503, timeouts, a
    killed server's connections: not acknowledged, maybe learned) to `refused`. Returns the threads."""
    lock = threading.Lock()
    refused = [] if refused is None else refused

    def client(worker: int) -> None:
        rng = np.random.default_rng(worker)
        clients = [httpx.Client(base_url=s.url, timeout=10) for s in servers]
        n = 0
        while not stop.is_set():
            obs = {
                "user": users[int(rng.integers(len(users)))],
                "item": int(items[int(rng.integers(len(items)))]),
                "score": float(rng.integers(1, 6)),
            }
            http = clients[(worker + n) % len(clients)]  # every worker alternates between the servers
            n += 1
            try:
                ok = http.post("/models/songs/observe", json=obs).status_code == 200
            except httpx.HTTPError:  # a killed server: go on with the others
                ok = False
            with lock:
                (acked if ok else refused).append((obs["user"], obs["item"], obs["score"]))
        for c in clients:
            c.close()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(workers)]
    for t in threads:
        t.start()
    return threads
