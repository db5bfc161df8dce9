"""Forgetting a user: every place a model keeps their data, under the model's serving lock.

The user's row in memory is reset and unlinked, the user store key deleted, each log record of
theirs rewritten as an erased marker (LSNs stay contiguous, so checkpoints and log positions stay
valid), their rows removed from the base training data and from every version's user arrays. θ of
existing versions stays as it is (it holds no per-user data); the next retrain trains without
them. A retrain running meanwhile may have read the user's rows before they were erased: the
Retrainer records every user forgotten while it runs and, after its worker wrote the version and
before it is marked ready or promoted, calls `scrub` to remove them from it (patching, not
waiting: a forget never blocks on a minutes-long training).

Everything here runs under the swap lock (ModelSet.exclusive), so no swap reads a version while
its files are rewritten.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from veloxserve.config import HomeLayout
from veloxserve.models.version import USER_ARRAYS, without_user
from veloxserve.serving.model_set import ModelSet
from veloxserve.storage.forget import drop_user_from_base_data, read_arrays, replace_arrays
from veloxserve.storage.home_lock import shared_file_lock
from veloxserve.storage.user_store import UserStore


def drop_user_from_version(directory: Path, user: str) -> int:
    """Remove `user`'s trained statistics (and the items they rated) from a version directory;
    returns the number of ratings their statistics summarised (0 if the user was not in it)."""
    ids = read_arrays(directory, ["user_ids"])
    if ids is None or not (ids["user_ids"] == user).any():  # the cheap check first: one small array
        return 0
    arrays = read_arrays(directory, USER_ARRAYS)
    cut = None if arrays is None else without_user(arrays, user)
    if cut is None:
        return 0
    updated, ratings = cut
    replace_arrays(directory, updated, last="user_ids")
    return ratings


class Forgetting:
    """Removes users from the models of a home."""

    def __init__(
        self, models: ModelSet, store: UserStore, layout: HomeLayout, forgotten: Callable[[str, str], None]
    ) -> None:
        """`forgotten(model, user)`: told of each user forgotten (the retrainer's running job)."""
        self._models = models
        self._store = store
        self._layout = layout
        self._forgotten = forgotten

    def forget(self, model: str, user: str) -> dict[str, Any]:
        """Remove `user` from one model; a receipt of what was removed."""
        models = self._models
        models.server(model)  # ModelNotFound before anything changes
        with models.exclusive():
            server = models.server(model)  # under the lock: a swap may have replaced the one looked up
            catalog = models.catalog(model)
            with server.serving_lock():
                erased = models.observation_log(model).erase_users({user})  # syncs: nothing of theirs is left to learn
                in_memory = server.remove_user(user)
                stored = self._store.delete(model, user)
                with shared_file_lock(self._layout.model_dir(model) / ".forget.lock"):  # files other processes share
                    base_rows = drop_user_from_base_data(self._layout.base_data(model), user)
                    version_rows = {
                        v: n
                        for v in catalog.versions.versions()
                        if (n := drop_user_from_version(catalog.versions.directory / v, user))
                    }
            # A retrain running now may have read the user's rows before they were erased: it
            # scrubs them from its version before that version is marked ready or promoted.
            self._forgotten(model, user)
        return {
            "weights_removed": bool(in_memory),
            "state_removed": bool(stored),
            "log_records_erased": erased,
            "base_rows_removed": base_rows,
            "trained_statistics_removed": version_rows,
        }

    def forget_here(self, model: str, user: str) -> None:
        """What this process alone keeps of a user another process forgot (that one rewrote the
        files they share): its log's records of them and its served state."""
        models = self._models
        if models.serving(model) is None:
            return  # not served here: nothing of theirs in memory, and no log open to erase
        with models.exclusive():
            server = models.server(model)
            with server.serving_lock():
                models.observation_log(model).erase_users({user})
                server.remove_user(user)
            self._forgotten(model, user)

    def scrub(self, model: str, version_id: str, users: Callable[[], Iterable[str]]) -> dict[str, int]:
        """Remove `users` (forgotten while `version_id` was being trained) from its trained
        statistics; under the swap lock, so no forget and no swap runs in between. Returns the
        ratings removed per user."""
        with self._models.exclusive():
            directory = self._models.catalog(model).versions.directory / version_id
            return {user: n for user in sorted(users()) if (n := drop_user_from_version(directory, user))}
