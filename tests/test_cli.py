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
    assert trained.stdout.startswith("trained songs v1 (now active)")
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
        assert missing.returncode == 1 and "ItemNotFound" in missing.stderr
        refused = run("policy", "--every-observations", "50")
        assert refused.returncode == 1 and "veloxserve token create" in refused.stderr
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
        spark = run("policy", "--engine", "spark", "--spark-master", "local[2]", "--token", token).stdout
        assert '"engine": "spark"' in spark and '"spark_master": "local[2]"' in spark
        assert '"every_observations": 50' in spark  # the CLI keeps what it does not change
        bounded = run("policy", "--spark-start-timeout", "30", "--token", token).stdout
        assert '"spark_start_timeout": 30.0' in bounded and '"spark_master": "local[2]"' in bounded
        bad = run("policy", "--spark-master", "local[0]", "--token", token)
        assert bad.returncode == 1 and "spark_master" in bad.stderr
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
    assert down.returncode == 2 and "cannot reach" in down.stderr.lower()


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


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "veloxserve.cli", *args], capture_output=True, text=True, timeout=300, **kwargs
    )


def test_train_maps_columns_serve_reads_a_config_file_flags_override_it_and_output_is_for_people(
    tmp_path: Path,
) -> None:
    import json

    import pyarrow as pa
    import pyarrow.csv as pacsv

    from tests.helpers import free_port
    from veloxserve.training.catify import catify_items, generate_catify

    data = generate_catify(80, 60, n_ratings=2500, seed=5)
    r = data.ratings
    pacsv.write_csv(pa.table({"uid": r.users, "iid": r.items, "rating": r.scores}), tmp_path / "r.csv")
    pacsv.write_csv(pa.table(catify_items(data, seed=5)), tmp_path / "songs.csv")
    home = tmp_path / "home"
    base = ["train", "--home", str(home), "--ratings", str(tmp_path / "r.csv"), "--model", "songs", "--rank", "3"]
    refused = _cli(*base)  # without --columns the file's names are not understood
    assert refused.returncode == 2 and "missing column(s) user, item, score" in refused.stderr
    trained = _cli(*base, "--columns", "user=uid,item=iid,score=rating", "--items", str(tmp_path / "songs.csv"))
    assert trained.returncode == 0, trained.stderr
    assert trained.stdout.startswith("trained songs v1 (now active): 2") and "held-out RMSE" in trained.stdout
    assert len(trained.stdout.splitlines()) == 3 and "Traceback" not in trained.stderr
    again = _cli(*base, "--columns", "user=uid,item=iid,score=rating", "--json")
    assert json.loads(again.stdout)["version"] == "v2"

    config = tmp_path / "veloxserve.toml"
    config.write_text(f'[server]\nport = {free_port()}\nhost = "127.0.0.1"\n\n[serving]\nmax_batch = 3\n')
    server = ServerProcess(home, "--config", str(config), "--no-auth")  # its --port overrides the file's
    server.wait_ready()
    try:
        four = {"queries": [{"user": str(r.users[0]), "item": str(r.items[i])} for i in range(4)]}
        too_many = httpx.post(f"{server.url}/models/songs/predict", json=four)
        assert too_many.status_code == 400 and "3" in too_many.json()["message"]  # [serving] max_batch of the file

        def client(*args: str) -> subprocess.CompletedProcess:
            return _cli(*args, "--url", server.url)

        table = client("versions", "list", "--model", "songs")
        assert table.returncode == 0, table.stderr
        header, v1, v2 = table.stdout.splitlines()
        assert header.split()[:3] == ["VERSION", "STATUS", "CREATED"]
        assert v1.split()[:2] == ["v1", "retired"] and v2.split()[:3] == ["*", "v2", "active"]
        listed = json.loads(client("versions", "list", "--model", "songs", "--json").stdout)
        assert listed["active_version"] == "v2"

        user, a, b = str(r.users[0]), str(r.items[0]), str(r.items[1])
        among = json.loads(
            client("top-k", "--model", "songs", "--user", user, "-k", "1", "--candidates", f"{a},{b}").stdout
        )
        assert len(among["items"]) == 1 and str(among["items"][0]["item"]) in (a, b)
        explored = json.loads(
            client(
                "top-k", "--model", "songs", "--user", user, "-k", "3", "--policy", "epsilon_greedy", "--epsilon", "0.5"
            ).stdout
        )
        assert explored["policy"]["name"] == "epsilon_greedy" and all("propensity" in e for e in explored["items"])
        jazz = client("top-k", "--model", "songs", "--user", user, "-k", "2", "--filter", "genre:jazz")
        assert jazz.returncode == 0, jazz.stderr
        by_text = client("predict", "--model", "songs", "--user", user, "--text", "a slow jazz ballad with piano")
        assert by_text.returncode == 0 and json.loads(by_text.stdout)["text"].startswith("a slow jazz")
        unknown = client("predict", "--model", "songs", "--user", user, "--item", "no-such-song")
        assert unknown.returncode == 1 and "ItemNotFound" in unknown.stderr and "Traceback" not in unknown.stderr

        # stdout a pipe whose reader has gone (`... | head -1` once head has its line): no traceback
        for command in (["versions", "list", "--model", "songs", "--url", server.url], ["serve", "--help"]):
            read, write = os.pipe()
            os.close(read)
            closed = subprocess.run(
                [sys.executable, "-m", "veloxserve.cli", *command], stdout=write, stderr=subprocess.PIPE, timeout=120
            )
            os.close(write)
            assert b"Traceback" not in closed.stderr and b"BrokenPipe" not in closed.stderr, closed.stderr
        head = subprocess.run(
            f"{shlex.quote(sys.executable)} -m veloxserve.cli top-k --model songs --user {user} -k 50 --url "
            f"{server.url} | head -1",
            shell=True,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert head.stdout == "{\n" and "Traceback" not in head.stderr, head.stderr
    finally:
        server.stop()


def test_a_config_file_with_an_unknown_key_is_refused_naming_it(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[serving]\nmax_bach = 10\n")
    result = _cli("serve", "--home", str(tmp_path), "--config", str(config))
    assert result.returncode == 2 and "serving.max_bach" in result.stderr and "max_batch" in result.stderr
    assert "Traceback" not in result.stderr


def test_help_shows_every_default() -> None:
    serve = _cli("serve", "--help").stdout
    for default in ("(default: 8000)", "(default: 127.0.0.1)", "(default: lmdb)", "(default: 512)"):
        assert default in serve
    train = " ".join(_cli("train", "--help").stdout.split())
    assert "latent dimensions of f(x; θ) (default: 10)" in train and "(default: identity)" in train
    top_k = " ".join(_cli("top-k", "--help").stdout.split())
    assert "how many items (default: 10)" in top_k and "(default: http://127.0.0.1:8000)" in top_k


def test_train_shows_a_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    import fcntl
    import pty
    import struct
    import termios

    from veloxserve.training.catify import generate_catify
    from veloxserve.training.ratings import write_ratings_csv

    write_ratings_csv(generate_catify(40, 30, n_ratings=800, seed=6).ratings, tmp_path / "r.csv")
    base = ["train", "--ratings", str(tmp_path / "r.csv"), "--model", "m", "--rank", "2", "--iterations", "3"]
    piped = _cli(*base, "--home", str(tmp_path / "a"))
    assert piped.returncode == 0 and "sweep" not in piped.stderr  # no bar in a log file
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal 100 columns wide
    try:
        on_tty = subprocess.Popen(
            [sys.executable, "-m", "veloxserve.cli", *base, "--home", str(tmp_path / "b")],
            stdout=subprocess.PIPE,
            stderr=follower,
        )
        os.close(follower)
        seen = b""
        while True:  # read while it runs: a terminal's buffer is small
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: everything was read
                break
            if not chunk:
                break
            seen += chunk
        out, _ = on_tty.communicate(timeout=300)
    finally:
        os.close(leader)
    assert on_tty.returncode == 0 and b"ALS" in seen and b"3/3" in seen and b"sweep" in seen, seen
    assert out.decode().startswith("trained m v1 (now active)")


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
    assert (
        main([*argv, *basis, "--basis-params", '{"alpha": 2.0}', "--items", str(tmp_path / "docs.csv"), "--json"]) == 0
    )
    meta = json.loads(capsys.readouterr().out)
    assert meta["kind"] == "black_box" and meta["basis"]["training"] == "oracle-mtl" and meta["k"] == 3
    assert (tmp_path / "home" / "models" / "docs" / "versions" / "v1" / "basis.pkl").is_file()
    assert main([*argv, *basis]) == 2 and "--basis needs --items" in capsys.readouterr().err
