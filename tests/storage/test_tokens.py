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
    altered = token[:position] + replacement + token[position + 1:]
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
