"""The command line: `veloxserve demo` prints curl commands that work; train; client commands."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers import ServerProcess
from tests.helpers import eventually as _eventually


def test_demo_trains_serves_and_its_curl_commands_work(tmp_path: Path) -> None:
    demo = ServerProcess(tmp_path, "--users", "300", "--songs", "400", "--ratings", "20000", command="demo")
    demo.wait_ready(timeout=300)
    demo.stop()
    output = demo.proc.stdout.read()
    commands = [line.strip() for line in output.splitlines() if line.strip().startswith("curl ")]
    assert len(commands) == 4, output  # predict, top-k with a filter, predict by text, observe
    assert re.search(r"held-out RMSE \d\.\d+", output)
    token = re.search(r"export VELOXSERVE_TOKEN=(vx_\S+)", output).group(1)
    restarted = ServerProcess(tmp_path, command="serve")
    restarted.url = f"http://127.0.0.1:{restarted.port}"
    restarted.wait_ready()
    try:
        for command in commands:  # the printed commands, pointed at this test's port
            args = shlex.split(command.replace(f":{demo.port}", f":{restarted.port}"))
            result = subprocess.run(
                args + ["--silent", "--show-error", "--fail-with-body"], capture_output=True, text=True, timeout=30
            )
            assert result.returncode == 0, (command, result.stdout, result.stderr)
            assert "model_version" in result.stdout
        policy = f"{restarted.url}/models/catify/policy"
        assert httpx.put(policy, json={"every_observations": 100}).status_code == 401
        assert (
            httpx.put(
                policy, json={"every_observations": 100}, headers={"authorization": f"Bearer {token}"}
            ).status_code
            == 200
        )
    finally:
        restarted.stop()


def test_client_commands_talk_to_a_running_server(tmp_path: Path) -> None:
    from veloxserve.training.catify import generate_catify
    from veloxserve.training.ratings import write_ratings_csv

    write_ratings_csv(generate_catify(100, 50, n_ratings=3000, seed=1).ratings, tmp_path / "r.csv")
    cli = [sys.executable, "-m", "veloxserve.cli"]
    trained = subprocess.run(
        cli
        + [
            "train",
            "--home",
            str(tmp_path),
            "--ratings",
            str(tmp_path / "r.csv"),
            "--model",
            "songs",
            "--rank",
            "4",
            "--iterations",
            "3",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr
    assert '"version": "v1"' in trained.stdout
    server = ServerProcess(tmp_path)
    server.wait_ready()
    try:

        def run(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run(
                cli + list(args) + ["--url", server.url, "--model", "songs"], capture_output=True, text=True, timeout=60
            )

        assert '"score"' in run("predict", "--user", "1", "--item", "2").stdout
        assert '"items"' in run("top-k", "--user", "1", "-k", "3").stdout
        assert '"observed": 1' in run("observe", "--user", "1", "--item", "2", "--score", "4.5").stdout
        once = ("observe", "--user", "1", "--item", "3", "--score", "2.0", "--id", "cli-once")
        assert '"duplicate": false' in run(*once).stdout and '"duplicate": true' in run(*once).stdout
        missing = run("predict", "--user", "1", "--item", "no-such-song")
        assert missing.returncode == 1 and "ItemNotFound" in missing.stdout
        refused = run("policy", "--every-observations", "50")
        assert refused.returncode == 1 and "veloxserve token create" in refused.stdout
        created = subprocess.run(
            cli + ["token", "create", "--home", str(tmp_path), "--name", "ops"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        token = created.stdout.strip()
        assert created.returncode == 0 and token.startswith("vx_") and "Shown once" in created.stderr
        # the server re-reads its tokens at most twice a second: poll, do not guess how long that takes
        assert _eventually(
            lambda: '"every_observations": 50' in run("policy", "--every-observations", "50", "--token", token).stdout
        )
        env = {**os.environ, "VELOXSERVE_TOKEN": token}
        via_env = subprocess.run(
            cli + ["versions", "activate", "v1", "--url", server.url, "--model", "songs"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert via_env.returncode == 0 and '"active_version": "v1"' in via_env.stdout
        listed = subprocess.run(cli + ["token", "list", "--home", str(tmp_path)], capture_output=True, text=True)
        assert '"name": "ops"' in listed.stdout and token.split("_", 2)[2] not in listed.stdout
        revoked = subprocess.run(
            cli + ["token", "revoke", "ops", "--home", str(tmp_path)], capture_output=True, text=True
        )
        assert revoked.returncode == 0
        assert _eventually(lambda: run("policy", "--every-observations", "60", "--token", token).returncode == 1)
    finally:
        server.stop()
    assert httpx.get  # the server is gone; the CLI reports it clearly
    down = subprocess.run(
        cli + ["predict", "--url", server.url, "--model", "songs", "--user", "1", "--item", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 2 and "cannot reach" in down.stderr


def test_train_rejects_a_bad_file_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("user,item\n1,2\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "veloxserve.cli",
            "train",
            "--home",
            str(tmp_path),
            "--ratings",
            str(tmp_path / "bad.csv"),
            "--model",
            "m",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "missing column(s) score" in result.stderr


def test_serve_without_auth_warns_loudly(tmp_path: Path) -> None:
    from tests.conftest import synthetic_version_arrays
    from veloxserve.config import HomeLayout
    from veloxserve.storage.versions import VersionStore

    arrays, meta = synthetic_version_arrays(name="songs")
    VersionStore(HomeLayout(tmp_path).versions_dir("songs")).write(arrays, meta)
    server = ServerProcess(tmp_path, "--no-auth")
    server.wait_ready()
    try:
        assert httpx.put(f"{server.url}/models/songs/policy", json={"every_observations": 7}).status_code == 200
    finally:
        server.stop()
    assert "WARNING: --no-auth" in server.proc.stdout.read()


def _snapshot(home: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(home.rglob("*"))
        if p.is_file()
    }


def test_a_second_demo_on_a_taken_port_or_a_locked_home_changes_nothing_and_says_what_to_do(tmp_path: Path) -> None:
    import socket

    from tests.helpers import free_port
    from veloxserve.storage.home_lock import HomeLock
    from veloxserve.storage.tokens import TokenStore
    from veloxserve.training.catify import generate_catify
    from veloxserve.training.ratings import write_ratings_csv

    home = tmp_path / "home"
    write_ratings_csv(generate_catify(60, 40, n_ratings=1500, seed=2).ratings, tmp_path / "r.csv")
    cli = [sys.executable, "-m", "veloxserve.cli"]
    trained = subprocess.run(
        cli
        + [
            "train",
            "--home",
            str(home),
            "--ratings",
            str(tmp_path / "r.csv"),
            "--model",
            "catify",
            "--rank",
            "3",
            "--iterations",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert trained.returncode == 0, trained.stderr
    token = TokenStore(home / "auth" / "tokens.json").create(name="demo")  # the running demo's token
    demo = cli + ["demo", "--home", str(home), "--users", "50", "--songs", "40", "--ratings", "1000"]

    with socket.socket() as taken:  # anything on the port, here a plain socket
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        before = _snapshot(home)
        result = subprocess.run(
            demo + ["--port", str(taken.getsockname()[1])], capture_output=True, text=True, timeout=300
        )
        assert result.returncode != 0
        assert "--port" in result.stderr and str(taken.getsockname()[1]) in result.stderr, result.stderr
        assert "serving" not in result.stdout
        assert _snapshot(home) == before

    lock = HomeLock(home / ".lock")  # what a running demo or server holds
    try:
        before = _snapshot(home)
        result = subprocess.run(demo + ["--port", str(free_port())], capture_output=True, text=True, timeout=300)
        assert result.returncode != 0
        assert "--home" in result.stderr and "in use" in result.stderr, result.stderr
        assert "serving" not in result.stdout and "Catify:" not in result.stdout
        assert _snapshot(home) == before
    finally:
        lock.release()
    assert TokenStore(home / "auth" / "tokens.json").verify(token) is not None  # its token was not revoked


def test_train_with_an_oracle_mtl_basis_writes_an_active_black_box_version(tmp_path: Path, capsys) -> None:
    import json

    import pyarrow as pa
    import pyarrow.csv as pacsv

    from veloxserve.cli import main
    from veloxserve.training.corpus import generate_corpus, read_corpus, topic_ratings
    from veloxserve.training.ratings import write_ratings_parquet

    ids, topics, texts = read_corpus(generate_corpus(tmp_path / "corpus", topics=3, docs_per_topic=8))
    pacsv.write_csv(pa.table({"item": ids, "text": texts}), tmp_path / "docs.csv")
    ratings, _ = topic_ratings(ids, topics, 10, 6)
    with open(tmp_path / "ratings.parquet", "wb") as fh:
        write_ratings_parquet(ratings, fh)
    argv = [
        "train",
        "--home",
        str(tmp_path / "home"),
        "--model",
        "docs",
        "--ratings",
        str(tmp_path / "ratings.parquet"),
    ]
    basis = ["--basis", "oracle-mtl:sklearn.linear_model.Ridge", "--basis-k", "2", "--iterations", "2"]
    assert main([*argv, *basis, "--basis-params", '{"alpha": 2.0}', "--items", str(tmp_path / "docs.csv")]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["kind"] == "black_box" and meta["basis"]["training"] == "oracle-mtl" and meta["k"] == 3
    assert (tmp_path / "home" / "models" / "docs" / "versions" / "v1" / "basis.pkl").is_file()
    assert main([*argv, *basis]) == 2 and "--basis needs --items" in capsys.readouterr().err
