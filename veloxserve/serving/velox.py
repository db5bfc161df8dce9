"""Velox: the in-process API over every model in a home directory.

A notebook or a test uses this class directly; the HTTP app and the CLI are thin translations of
it. It owns the concrete backends (the user store and one observation log per model), chosen
here and in the CLI and nowhere else.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from veloxserve.config import HomeLayout, ServingConfig
from veloxserve.errors import ModelNotFound, NotFound, invalid_parameter
from veloxserve.ids import Id
from veloxserve.models.version import ModelVersion
from veloxserve.serving.model_server import ModelServer, Observation
from veloxserve.storage.home_lock import HomeLock
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.storage.pointer import read_pointer, write_pointer
from veloxserve.storage.lmdb_store import LMDBUserStore
from veloxserve.storage.user_store import UserStore
from veloxserve.storage.versions import VersionStore

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DURABLE_TIMEOUT_S = 30.0


def check_model_name(name: Any, where: str = "train") -> str:
    if not isinstance(name, str) or not _MODEL_NAME.fullmatch(name):
        raise invalid_parameter(
            "model", where, "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit", name
        )
    return name


class Velox:
    """Serve, learn and train every model under `home`."""

    def __init__(self, home: str | Path, *, config: ServingConfig | None = None, store: UserStore | None = None) -> None:
        self.layout = HomeLayout(Path(home))
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self._home_lock = HomeLock(self.layout.root / ".lock")
        try:
            self.config = config or ServingConfig()
            self._store = store if store is not None else LMDBUserStore(self.layout.state_db)
            self._logs: dict[str, ObservationLog] = {}
            self._servers: dict[str, ModelServer] = {}
            self._swap_lock = threading.Lock()
            for name in self.layout.model_names():
                if VersionStore(self.layout.versions_dir(name)).latest() is not None:
                    self._load(name)
        except BaseException:
            self._home_lock.release()  # a failed open must not keep the home locked
            raise

    # ---- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Checkpoint every model and close logs and store. Safe to call twice."""
        for server in list(self._servers.values()):
            server.checkpoint()
        for obs_log in self._logs.values():
            obs_log.close()
        self._servers.clear()
        self._logs.clear()
        self._store.close()
        self._home_lock.release()

    def __enter__(self) -> Velox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- catalogue -----------------------------------------------------------------------
    def model_names(self) -> list[str]:
        return sorted(self._servers)

    def server(self, model: str) -> ModelServer:
        try:
            return self._servers[model]
        except KeyError:
            known = ", ".join(self.model_names()) or "none yet: train one with `veloxserve train`"
            raise ModelNotFound(f"No model named {model!r}. Models: {known}.", field="model") from None

    def describe(self, model: str) -> dict[str, Any]:
        server = self.server(model)
        return {
            "name": model,
            "active_version": server.version_id,
            "link": server.version.link.value,
            "n_items": len(server.version.catalog),
            "n_users": len(server.users),
            "dim": server.version.dim,
            "versions": VersionStore(self.layout.versions_dir(model)).list(),
        }

    # ---- serving -------------------------------------------------------------------------
    def predict(self, model: str, user: Id, item: Id) -> float:
        return self.server(model).predict(user, item)

    def predict_many(self, model: str, queries: Sequence[tuple[Id, Id]]) -> list[float]:
        return self.server(model).predict_many(queries).tolist()

    def top_k(
        self, model: str, user: Id, k: int, *, candidates: Sequence[Id] | None = None, exclude_seen: bool = False
    ) -> list[tuple[Id, float]]:
        return self.server(model).top_k(user, k, candidates=candidates, exclude_seen=exclude_seen)

    def submit(self, model: str, observations: Sequence[Observation]) -> int:
        """Learn a batch now and return its last LSN; it is durable once `observation_log(model)`
        says so. The HTTP layer awaits that; `observe` blocks on it."""
        return self.server(model).observe_many(observations)

    def observe(self, model: str, user: Id, item: Id, score: float) -> int:
        """Learn one observation and return once it is durable (its log sequence number)."""
        return self.observe_many(model, [(user, item, score)])

    def observe_many(self, model: str, observations: Sequence[Observation]) -> int:
        lsn = self.submit(model, observations)
        self._logs[model].wait_durable(lsn, DURABLE_TIMEOUT_S)
        return lsn

    def observation_log(self, model: str) -> ObservationLog:
        self.server(model)
        return self._logs[model]

    # ---- versions ------------------------------------------------------------------------
    def train(self, model: str, ratings: Any, config: Any = None, *, progress: bool = False) -> dict[str, Any]:
        """Train a new version from a ratings file or `Ratings`, make it active and serve it."""
        from veloxserve.training.trainer import train_version  # training pulls in numba kernels

        check_model_name(model)
        meta = train_version(self.layout, model, ratings, config, progress=progress)
        self.activate(model, meta["version"])
        return meta

    def activate(self, model: str, version: str) -> None:
        """Serve `version` of `model` from now on; users' state is rebuilt against its θ."""
        versions = VersionStore(self.layout.versions_dir(model))
        if not versions.exists(version):
            raise NotFound(f"Model {model!r} has no version {version!r}.", field="version")
        write_pointer(self.layout.active_file(model), version)
        self._load(model)

    def _load(self, model: str) -> None:
        versions = VersionStore(self.layout.versions_dir(model))
        version_id = read_pointer(self.layout.active_file(model)) or versions.latest()
        version = ModelVersion.from_arrays(versions.read_arrays(version_id), versions.read_meta(version_id))
        with self._swap_lock:
            obs_log = self._logs.get(model)
            if obs_log is None:
                obs_log = self._logs[model] = ObservationLog(
                    self.layout.log_dir(model), fsync=self.config.fsync, commit_delay=self.config.commit_delay
                )
            old = self._servers.get(model)
            if old is not None:
                old.checkpoint()
            self._servers[model] = ModelServer(version, self._store, obs_log, self.config)
