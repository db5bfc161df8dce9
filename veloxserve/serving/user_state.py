"""UserState: where one served version's users' state lives and how logged observations reach it.

ModelServer validates, claims idempotency keys and appends to the log; everything after the
append is the user state's: learning what became durable, recovering at start, checkpointing,
catching up during a swap, forgetting a user. Two implementations, one per deployment:

- LocalUserState (serving/local_state.py): a UserTable in this process's memory, learned by the
  log's commit hook after each group commit, checkpointed to the user store (LMDB by default).
- SharedUserState (serving/shared_state.py): a SharedUserTable in Redis, learned by the Applier
  (serving/applier.py) and shared by every process serving the home; nothing to checkpoint.

The backend (serving/backend.py) says which one a server gets.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol

import numpy as np

from veloxserve.config import ServingConfig
from veloxserve.learning.states import UserStates
from veloxserve.models.version import Link, ModelVersion, sigmoid
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.storage.user_store import UserStore

ErrorsListener = Callable[[np.ndarray], None]  # prequential errors of a learned batch


def link_array(version: ModelVersion, z: np.ndarray) -> np.ndarray:
    """σ(z) of the version's link, elementwise."""
    return z if version.link is Link.IDENTITY else sigmoid(z)


class UserState(ABC):
    """The users' state of one served version."""

    table: UserStates  # what predict and top-k read
    replayed: int = 0  # observations learned from the log(s) at start

    @abstractmethod
    def before_append(self, users: list[str], rows: np.ndarray, scores: np.ndarray) -> np.ndarray | None:
        """Called under the serving lock before a batch is logged: its prequential errors if they
        are known now, or StoreUnavailable to refuse it (nothing is logged then)."""

    @abstractmethod
    def append(self, append: Callable[[], int], users: list[str], rows: np.ndarray, scores: np.ndarray) -> int:
        """Log the batch with `append()` (returns its last LSN) and have it learned once durable,
        in LSN order. Called under the serving lock."""

    @abstractmethod
    def after_observe(self, added: int) -> None:
        """After a batch was logged, outside the serving lock (a checkpoint may be due)."""

    @abstractmethod
    def catch_up(self, upto_lsn: int) -> int:
        """Learn what the log holds up to `upto_lsn` that this state has not learned (a swap, under
        the serving server's lock). Returns the observations learned."""

    @abstractmethod
    def activated(self) -> None:
        """This state is the one served from now on (called under the swap's locks)."""

    @abstractmethod
    def retire(self) -> None:
        """A newer version's server took over: stop learning from the log."""

    @abstractmethod
    def remove_user(self, user: str) -> bool:
        """Forget a user's state here (the log has erased their records already)."""

    @abstractmethod
    def checkpoint(self) -> int:
        """Persist what changed since the last checkpoint; returns how many users were written."""

    @abstractmethod
    def freeze_checkpoints(self) -> None:
        """Stop checkpointing (a newer version's server is about to own the stored state)."""

    @abstractmethod
    def resume_checkpoints(self) -> None:
        """Undo `freeze_checkpoints` (the swap failed)."""

    @abstractmethod
    def learned(self, instance: str, user: str, lsn: int) -> bool:
        """Is observation `lsn` of `instance`'s log, of `user`, reflected in this state?"""


class UserStateFactory(Protocol):
    """Builds (and recovers) the user state of a version about to be served."""

    def __call__(
        self,
        version: ModelVersion,
        store: UserStore,
        obs_log: ObservationLog,
        config: ServingConfig,
        *,
        upto_lsn: int,
        on_errors: ErrorsListener,
    ) -> UserState: ...
