"""Durable state: model versions, user states, the observation log. Knows nothing of models."""

from veloxserve.storage.lmdb_store import LMDBUserStore
from veloxserve.storage.observation_log import ObservationLog, ObservationRecord
from veloxserve.storage.sqlite_store import SQLiteUserStore
from veloxserve.storage.user_store import Checkpoint, MemoryUserStore, UserStore

__all__ = [
    "Checkpoint",
    "LMDBUserStore",
    "MemoryUserStore",
    "ObservationLog",
    "ObservationRecord",
    "SQLiteUserStore",
    "UserStore",
]
