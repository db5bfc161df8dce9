"""`serve --no-auth` stays on this machine unless told otherwise: a non-loopback --host is refused
(exit 2, the error says how to proceed) unless --allow-remote-no-auth forces it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.helpers import ServerProcess


@pytest.mark.parametrize("command", ["serve", "demo"])
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.7", "example.com"])
def test_no_auth_on_a_non_loopback_host_is_refused_and_says_how(tmp_path: Path, command: str, host: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "veloxserve.cli", command, "--home", str(tmp_path), "--no-auth", "--host", host],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--allow-remote-no-auth" in result.stderr and host in result.stderr
    assert not (tmp_path / "data").exists()  # demo refused before generating or training anything


def test_no_auth_on_a_non_loopback_host_serves_when_forced(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, "--no-auth", "--host", "0.0.0.0", "--allow-remote-no-auth")
    try:
        server.wait_ready()
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.0.0.2"])
def test_no_auth_on_loopback_needs_no_flag(tmp_path: Path, host: str) -> None:
    from veloxserve.cli import _is_loopback

    assert _is_loopback(host)
