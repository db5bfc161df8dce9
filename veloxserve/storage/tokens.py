"""API tokens, stored hashed: `<home>/auth/tokens.json` never holds a usable secret.

A token reads `vx_<id>_<secret>`: the id finds the record, the secret (32 random bytes) is
checked against sha256(salt + secret) with a constant-time comparison. A fast hash is enough
because the secret is random and 256 bits long — there is no dictionary to brute-force, which
is what scrypt or bcrypt slow down — and it keeps a per-model key check cheap on the predict path.

A scope is `admin` (every route) or `model:<name>` (predict, top_k and observe on one model).
The server re-reads the file when it changes (checked at most every `RELOAD_S` seconds), so
tokens created or revoked by `veloxserve token` take effect within a second, without a restart.

Every change is a read-modify-write of the whole file, so changes are serialised across processes
by an exclusive flock on `tokens.json.lock` held from the re-read to the rename: two `token create`
at once (or one while the demo revokes its old token) both end up in the file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from veloxserve.errors import InvalidInput
from veloxserve.storage.atomic import replace_atomically
from veloxserve.storage.home_lock import shared_file_lock

RELOAD_S = 0.5
ADMIN = "admin"


@dataclass(frozen=True)
class TokenRecord:
    id: str
    name: str
    scope: str
    salt: str
    hash: str
    created_at: str

    def public(self) -> dict[str, str]:
        """What `token list` shows: never the hash or salt."""
        return {"id": self.id, "name": self.name, "scope": self.scope, "created_at": self.created_at}

    def allows_model(self, model: str) -> bool:
        return self.scope == ADMIN or self.scope == f"model:{model}"


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + secret.encode()).hexdigest()


class TokenStore:
    """The tokens of one home directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._records: dict[str, TokenRecord] = {}
        self._version: tuple[int, int, int] | None = None
        self._checked = -RELOAD_S
        self._reload()

    def _reload(self) -> None:
        try:
            version = self._stat()
        except FileNotFoundError:
            self._records, self._version = {}, None
            return
        if version != self._version:
            records = json.loads(self.path.read_text())["tokens"]
            self._records = {r["id"]: TokenRecord(**r) for r in records}
            self._version = version

    def _stat(self) -> tuple[int, int, int]:
        """Every save renames a new file into place: a new inode, whatever the clock's resolution."""
        st = self.path.stat()
        return st.st_ino, st.st_mtime_ns, st.st_size

    @contextmanager
    def _changing(self) -> Iterator[None]:
        """Hold the store's lock and start from the file as it is now (another process may have
        changed it since this one last read it)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with shared_file_lock(self.path.with_name(self.path.name + ".lock"), mode=0o600):
            self._version = None  # re-read even if the stat looks unchanged
            self._reload()
            yield

    def _save(self) -> None:
        data = json.dumps({"tokens": [asdict(r) for r in self._records.values()]}, indent=1).encode()
        replace_atomically(self.path, lambda fh: fh.write(data))
        os.chmod(self.path, 0o600)
        self._version = self._stat()

    def create(self, name: str = "", scope: str = ADMIN) -> str:
        """A new token; returns the only copy of its secret."""
        if scope != ADMIN and not (scope.startswith("model:") and len(scope) > len("model:")):
            raise InvalidInput(
                f"A token scope must be 'admin' or 'model:<name>'. Got {scope!r} instead.", field="scope"
            )
        secret, salt = secrets.token_urlsafe(32), secrets.token_hex(16)
        created = datetime.now(UTC).isoformat(timespec="seconds")
        with self._changing():
            token_id = secrets.token_hex(4)
            while token_id in self._records:  # 32-bit ids: a collision would overwrite a token
                token_id = secrets.token_hex(4)
            self._records[token_id] = TokenRecord(token_id, name, scope, salt, _digest(salt, secret), created)
            self._save()
        return f"vx_{token_id}_{secret}"

    def records(self) -> list[TokenRecord]:
        self._reload()
        return sorted(self._records.values(), key=lambda r: r.created_at)

    def revoke(self, token_id_or_name: str) -> list[str]:
        """Revoke the token with this id, or every token with this name; returns the ids revoked."""
        with self._changing():
            gone = [r.id for r in self._records.values() if token_id_or_name in (r.id, r.name)]
            for token_id in gone:
                del self._records[token_id]
            if gone:
                self._save()
        return gone

    def verify(self, token: str) -> TokenRecord | None:
        """The record of a valid token, else None. Constant time in the secret."""
        now = time.monotonic()
        if now - self._checked >= RELOAD_S:
            self._checked = now
            self._reload()
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != "vx":
            return None
        record = self._records.get(parts[1])
        if record is None:
            return None
        return record if hmac.compare_digest(_digest(record.salt, parts[2]), record.hash) else None

    def has_admin(self) -> bool:
        self._reload()
        return any(r.scope == ADMIN for r in self._records.values())
