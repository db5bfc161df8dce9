"""PublishedStates: the users' weights one learner publishes for the reader workers of its home.

`serve --workers N` runs one learner (worker 0: the log, learning, checkpoints) and N-1 readers that
answer predictions themselves. The learner publishes into one LMDB environment, a memory map every
worker opens: each served version's w_u per user, and which version each model serves. LMDB
gives what the readers need and nothing home-made: one writer, many readers in other processes,
each read transaction a consistent snapshot, no lock taken by a read.

When a write is published decides what a reader may answer (docs/deployment.md):

- the learner publishes a batch's users in its log's commit hook, after the group commit made the
  batch durable and before the observation is acknowledged, so a prediction that reaches any
  worker after an acknowledgement reflects it;
- a forget deletes the user's entries before its receipt is returned; a version switch moves the
  model's pointer (and drops the other versions' entries) before the switch returns;
- a reader reads the model's pointer and the user's weights in one read transaction, and answers
  only for the version it has loaded: anything else raises VersionMoved, and the request goes to
  the learner instead. A reader never mixes two versions, or answers for a version no longer served.

Nothing here is durable, nor needs to be: the log is the truth. The map lives beside the
supervisor's socket, new for every `serve --workers`, and a learner that starts (or restarts after
kill -9) replaces each namespace it serves in one transaction once it has recovered from the log.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lmdb
import numpy as np

from veloxserve.errors import StoreUnavailable, VeloxError

_MAP_SIZE = 1 << 36  # address space only: the file grows with the data
_ACTIVE = b"a\0"
_WEIGHTS = b"w\0"
_COUNT = b"n\0"


class VersionMoved(VeloxError):
    """The model no longer serves the version a reader has loaded (or the reader has not loaded
    it yet): the request is answered by the learner instead. No client ever sees this status (421
    Misdirected Request): the reader's app (api/forwarding.py) forwards the request instead."""

    status = 421

    def __init__(self, model: str) -> None:
        super().__init__(f"This reader does not serve {model!r} at its current version: worker 0 answers.")
        self.model = model


def _namespace(model: str, namespace: str) -> bytes:
    return f"{model}\0{namespace}\0".encode()


class PublishedStates:
    """One home's published weights. `PublishedStates(path)` is the learner's (it creates the
    map), `PublishedStates(path, readonly=True)` a reader's."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        try:
            if not readonly:
                self.path.mkdir(parents=True, exist_ok=True)
            # sync off: the log, not this map, makes observations durable; a learner that restarts
            # republishes everything it serves.
            self._env = lmdb.open(
                str(self.path),
                map_size=_MAP_SIZE,
                readonly=readonly,
                create=not readonly,
                sync=False,
                metasync=False,
                max_readers=1024,
            )
        except lmdb.Error as exc:
            raise StoreUnavailable(f"Cannot open the workers' published states {self.path}: {exc}.") from exc

    def close(self) -> None:
        self._env.close()

    # ---- the learner's side ----------------------------------------------------------------
    def replace(
        self, model: str, namespace: str, users: Sequence[str], weights: np.ndarray, seen: Sequence[np.ndarray]
    ) -> None:
        """Publish every user of a server's `namespace` (a version, and which server of it) at once,
        after its recovery or a swap's rebuild. Row i of `weights` is users[i]'s w_u,
        seen[i] the item rows they rated (for top-k's exclude_seen)."""
        prefix = _WEIGHTS + _namespace(model, namespace)
        self._env.reader_check()  # a reader killed inside a read transaction would pin old pages forever
        with self._env.begin(write=True) as txn:
            _delete_prefix(txn, prefix)
            self._put(txn, prefix, users, weights, seen)
            txn.put(_COUNT + _namespace(model, namespace), str(len(users)).encode())

    def publish(
        self,
        model: str,
        namespace: str,
        users: Sequence[str],
        weights: np.ndarray,
        seen: Sequence[np.ndarray],
        count: int,
    ) -> None:
        """Publish the users a batch changed, as `replace` does; `count`: the version's users now."""
        with self._env.begin(write=True) as txn:
            self._put(txn, _WEIGHTS + _namespace(model, namespace), users, weights, seen)
            txn.put(_COUNT + _namespace(model, namespace), str(count).encode())

    def remove(self, model: str, user: str) -> None:
        """A forgotten user: gone from every version of `model` (a reader answers the prior)."""
        prefix = _WEIGHTS + f"{model}\0".encode()
        name = user.encode()
        with self._env.begin(write=True) as txn:
            for key in _keys(txn.cursor(), prefix):
                if key[len(prefix) :].split(b"\0", 1)[-1] == name:  # model\0namespace\0user
                    txn.delete(key)

    def activate(self, model: str, namespace: str) -> None:
        """`model` is served from `namespace` from now on; every other namespace of it is dropped."""
        keep = (_WEIGHTS + _namespace(model, namespace), _COUNT + _namespace(model, namespace))
        self._env.reader_check()
        with self._env.begin(write=True) as txn:
            txn.put(_ACTIVE + model.encode(), namespace.encode())
            for kind in (_WEIGHTS, _COUNT):
                for key in _keys(txn.cursor(), kind + f"{model}\0".encode()):
                    if not key.startswith(keep):
                        txn.delete(key)

    @staticmethod
    def _put(
        txn: lmdb.Transaction, prefix: bytes, users: Sequence[str], weights: np.ndarray, seen: Sequence[np.ndarray]
    ) -> None:
        """Each user's entry: w_u (k float64), then the item rows they rated (int64)."""
        rows = np.ascontiguousarray(weights, dtype=np.float64)
        txn.cursor().putmulti(
            [
                (prefix + user.encode(), row.tobytes() + np.asarray(items, dtype=np.int64).tobytes())
                for user, row, items in zip(users, rows, seen)
            ]
        )

    # ---- a reader's side -----------------------------------------------------------------
    def active(self, model: str) -> str | None:
        """The namespace `model` is served from (`<version>@<server>`; None before the learner published it)."""
        with self._env.begin() as txn:
            value = txn.get(_ACTIVE + model.encode())
        return None if value is None else bytes(value).decode()

    def count(self, model: str, namespace: str) -> int:
        with self._env.begin() as txn:
            value = txn.get(_COUNT + _namespace(model, namespace))
        return 0 if value is None else int(bytes(value))

    def weights(self, model: str, version: str, users: Sequence[str], prior: np.ndarray) -> np.ndarray:
        """w_u of each user as `version` of `model` serves it now (the prior for a user it does
        not know); VersionMoved if the model serves another version."""
        expected = version.encode()
        prefix = _WEIGHTS + _namespace(model, version)
        out = np.empty((len(users), prior.size))
        with self._env.begin(buffers=True) as txn:  # one snapshot: the pointer and every user
            active = txn.get(_ACTIVE + model.encode())
            if active is None or bytes(active) != expected:
                raise VersionMoved(model)
            for i, user in enumerate(users):
                value = txn.get(prefix + user.encode())
                out[i] = prior if value is None else np.frombuffer(value, dtype=np.float64, count=prior.size)
        return out

    def seen(self, model: str, namespace: str, user: str, dim: int) -> np.ndarray:
        """The item rows `user` rated, as `namespace` of `model` holds them (VersionMoved as `weights`)."""
        with self._env.begin() as txn:
            active = txn.get(_ACTIVE + model.encode())
            if active is None or bytes(active) != namespace.encode():
                raise VersionMoved(model)
            value = txn.get(_WEIGHTS + _namespace(model, namespace) + user.encode())
        if value is None:
            return np.empty(0, dtype=np.int64)
        return np.frombuffer(value, dtype=np.int64, offset=8 * dim).copy()


def _keys(cursor: lmdb.Cursor, prefix: bytes) -> list[bytes]:
    found = []
    if cursor.set_range(prefix):
        for key in cursor.iternext(keys=True, values=False):
            if not bytes(key).startswith(prefix):
                break
            found.append(bytes(key))
    return found


def _delete_prefix(txn: lmdb.Transaction, prefix: bytes) -> None:
    for key in _keys(txn.cursor(), prefix):
        txn.delete(key)
