"""Where users' online state is checkpointed. Stores know nothing of models: a state is bytes.

A checkpoint writes the changed states together with the log position they reflect, all or
nothing, so recovery = load the states, then replay the log after that position.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Checkpoint:
    """The model version the stored states belong to and the last log position they reflect."""

    version: str
    lsn: int


class UserStore(ABC):
    """Contract every user store passes (tests/storage/test_user_store.py runs it on each)."""

    @abstractmethod
    def get(self, namespace: str, user: str) -> bytes | None: ...

    def get_many(self, namespace: str, users: Sequence[str]) -> list[bytes | None]:
        return [self.get(namespace, user) for user in users]

    @abstractmethod
    def write_checkpoint(
        self, namespace: str, states: Mapping[str, bytes], checkpoint: Checkpoint, *, replace_all: bool = False
    ) -> None:
        """Upsert `states` (or replace the namespace's content) and record `checkpoint`, atomically."""

    @abstractmethod
    def checkpoint(self, namespace: str) -> Checkpoint | None: ...

    @abstractmethod
    def scan(self, namespace: str) -> Iterator[tuple[str, bytes]]: ...

    @abstractmethod
    def delete(self, namespace: str, user: str) -> bool: ...

    @abstractmethod
    def count(self, namespace: str) -> int: ...

    def close(self) -> None:  # noqa: B027  (a store with nothing to release keeps this no-op)
        """Release connections; idempotent."""

    def __enter__(self) -> UserStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_states(states: Mapping[str, bytes]) -> None:
    """Refuse a checkpoint before writing anything if a state is not bytes."""
    for user, state in states.items():
        if not isinstance(user, str) or not isinstance(state, (bytes, bytearray, memoryview)):
            raise TypeError(f"user states must map str to bytes; got {type(user).__name__} -> {type(state).__name__}")


class MemoryUserStore(UserStore):
    """A dict: for tests and for serving that needs no durability beyond the observation log."""

    def __init__(self) -> None:
        self._states: dict[str, dict[str, bytes]] = {}
        self._checkpoints: dict[str, Checkpoint] = {}
        self._lock = threading.Lock()

    def get(self, namespace: str, user: str) -> bytes | None:
        return self._states.get(namespace, {}).get(user)

    def write_checkpoint(
        self, namespace: str, states: Mapping[str, bytes], checkpoint: Checkpoint, *, replace_all: bool = False
    ) -> None:
        check_states(states)
        with self._lock:
            current = {} if replace_all else dict(self._states.get(namespace, {}))
            current.update({user: bytes(state) for user, state in states.items()})
            self._states[namespace] = current
            self._checkpoints[namespace] = checkpoint

    def checkpoint(self, namespace: str) -> Checkpoint | None:
        return self._checkpoints.get(namespace)

    def scan(self, namespace: str) -> Iterator[tuple[str, bytes]]:
        yield from list(self._states.get(namespace, {}).items())

    def delete(self, namespace: str, user: str) -> bool:
        with self._lock:
            return self._states.get(namespace, {}).pop(user, None) is not None

    def count(self, namespace: str) -> int:
        return len(self._states.get(namespace, {}))
