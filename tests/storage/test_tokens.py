"""API tokens: shown once, stored as salted sha256, verified in constant time, revocable."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veloxserve.errors import InvalidInput
from veloxserve.storage import tokens as tokens_module
from veloxserve.storage.tokens import TokenStore


def test_a_token_is_stored_only_as_a_salted_hash(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "auth" / "tokens.json")
    token = store.create(name="ci")
    _, token_id, secret = token.split("_", 2)
    text = (tmp_path / "auth" / "tokens.json").read_text()
    assert secret not in text
    (record,) = json.loads(text)["tokens"]
    assert record["id"] == token_id and record["scope"] == "admin"
    assert record["hash"] == hashlib.sha256(bytes.fromhex(record["salt"]) + secret.encode()).hexdigest()
    assert (tmp_path / "auth" / "tokens.json").stat().st_mode & 0o077 == 0  # owner only
    assert store.verify(token).name == "ci"
    assert [r.public() for r in store.records()] == [{k: record[k] for k in ("id", "name", "scope", "created_at")}]


@settings(max_examples=50, deadline=None)
@given(position=st.integers(min_value=0, max_value=200), replacement=st.characters(codec="ascii"))
def test_any_altered_token_is_refused(tmp_path_factory, position: int, replacement: str) -> None:
    store = TokenStore(tmp_path_factory.mktemp("t") / "tokens.json")
    token = store.create()
    altered = token[:position] + replacement + token[position + 1 :]
    assert (store.verify(altered) is not None) == (altered == token)


def test_revoke_by_id_or_name_and_scopes(tmp_path: Path) -> None:
    store = TokenStore(tmp_path / "tokens.json")
    admin, key = store.create(name="ops"), store.create(name="app", scope="model:songs")
    assert store.verify(key).allows_model("songs") and not store.verify(key).allows_model("other")
    assert store.verify(admin).allows_model("anything")
    assert store.revoke(admin.split("_")[1]) == [admin.split("_")[1]]
    assert store.verify(admin) is None and store.verify(key) is not None
    assert len(store.revoke("app")) == 1 and store.verify(key) is None
    assert store.revoke("nobody") == []
    with pytest.raises(InvalidInput):
        store.create(scope="model:")


def test_a_running_server_sees_tokens_created_and_revoked_elsewhere(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(tokens_module, "RELOAD_S", 0.0)
    serving, cli = TokenStore(tmp_path / "tokens.json"), TokenStore(tmp_path / "tokens.json")
    assert not serving.has_admin()
    token = cli.create()
    assert serving.verify(token) is not None
    cli.revoke(token.split("_")[1])
    assert serving.verify(token) is None


def test_concurrent_token_creates_from_several_processes_and_threads_keep_every_token(tmp_path: Path) -> None:
    """Before the lock and the unique temporary name, two writers shared `.tokens.json.tmp` and
    each re-read the file before the other's rename: tokens were lost (or a write failed)."""
    import subprocess
    import sys
    import threading

    path = tmp_path / "auth" / "tokens.json"
    script = (
        "import sys, threading\n"
        "from pathlib import Path\n"
        "from veloxserve.storage.tokens import TokenStore\n"
        "path, n = Path(sys.argv[1]), int(sys.argv[2])\n"
        "made = []\n"
        "def make():\n"
        "    store = TokenStore(path)\n"
        "    made.extend(store.create(name=f't{i}') for i in range(n))\n"
        "threads = [threading.Thread(target=make) for _ in range(2)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "print('\\n'.join(made))\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), "15"], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    here: list[str] = []

    def make_here() -> None:
        store = TokenStore(path)
        here.extend(store.create(name="local") for _ in range(15))

    threads = [threading.Thread(target=make_here) for _ in range(2)]
    for t in threads:
        t.start()
    outputs = [proc.communicate()[0] for proc in procs]
    for t in threads:
        t.join()
    assert all(proc.returncode == 0 for proc in procs)
    created = here + [line for out in outputs for line in out.split()]
    assert len(created) == 4 * 2 * 15 + 2 * 15
    store = TokenStore(path)
    assert all(store.verify(token) is not None for token in created)  # every one of them, from the file
    assert len(store.records()) == len(created)
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []
