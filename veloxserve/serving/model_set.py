"""ModelSet: the served version of every model in a home, and the swap that replaces one.

Per model it owns what outlives a version: the observation log, the acknowledgement path, the
idempotency window, the recent served lists and the version catalogue. The swap (promote, roll
back) builds the new version's server while the old one serves — trained statistics, then the log
after the version's position up to its durable end L1 — and then, holding the old server's lock
(observations wait a few milliseconds), catches up on (L1, L2], switches ACTIVE and the entry,
and retires the old server: a request that reached it after that retries on the new one. Every
acknowledged observation is therefore in exactly one of the trained statistics or the replay.

`exclusive()` is the swap lock: a forget holds it while it rewrites version files, so a version
read before a forget is never served after it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from veloxserve.config import HomeLayout, ServingConfig
from veloxserve.errors import Conflict, ModelNotFound
from veloxserve.models.attributes import EMPTY, ItemAttributes
from veloxserve.models.version import ModelVersion
from veloxserve.serving.backend import Backend
from veloxserve.serving.decisions import RecentDecisions
from veloxserve.serving.durability import Acknowledgement
from veloxserve.serving.feature_cache import FeatureCache
from veloxserve.serving.idempotency import IdempotencyWindow
from veloxserve.serving.model_server import FeedbackListener, ModelServer
from veloxserve.storage.item_tables import read_item_table
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.storage.version_catalog import Status, VersionCatalog
from veloxserve.training.basis_files import attach_basis


def load_version(catalog: VersionCatalog, version_id: str) -> ModelVersion:
    """A stored version as it serves: its arrays and metadata, and its black-box f if any."""
    version = ModelVersion.from_arrays(catalog.versions.read_arrays(version_id), catalog.versions.read_meta(version_id))
    return attach_basis(version, catalog.versions.directory / version_id)


def read_attributes(layout: HomeLayout, model: str, version: ModelVersion) -> ItemAttributes:
    """The model's item attributes (for top-k's `filter=`) over `version`'s catalogue."""
    items_file = layout.items_file(model)
    if not items_file.is_file():
        return EMPTY
    return ItemAttributes.from_table(read_item_table(items_file), version.catalog)


class ModelSet:
    """Every model's serving version, its per-model resources, and swaps between versions."""

    def __init__(
        self, layout: HomeLayout, config: ServingConfig, backend: Backend, feature_cache: FeatureCache
    ) -> None:
        self.layout = layout
        self.config = config
        self._backend = backend
        self.feature_cache = feature_cache
        self.on_feedback: FeedbackListener | None = None  # set before the first swap (the retrainer's triggers)
        self._servers: dict[str, ModelServer] = {}
        self._catalogs: dict[str, VersionCatalog] = {}
        self._logs: dict[str, ObservationLog] = {}
        self._acks: dict[str, Acknowledgement] = {}
        self._windows: dict[str, IdempotencyWindow] = {}  # per model, across versions (idempotency.py)
        self._recent: dict[str, RecentDecisions] = {}  # per model: serving/decisions.py
        self._swap_lock = threading.Lock()

    # ---- looking up ----------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._servers)

    def items(self) -> list[tuple[str, ModelServer]]:
        return sorted(self._servers.items())

    def server(self, model: str) -> ModelServer:
        try:
            return self._servers[model]
        except KeyError:
            known = ", ".join(self.names()) or "none yet: train one with `veloxserve train`"
            raise ModelNotFound(f"No model named {model!r}. Models: {known}.", field="model") from None

    def catalog(self, model: str) -> VersionCatalog:
        catalog = self._catalogs.get(model)
        if catalog is None:
            catalog = self._catalogs[model] = VersionCatalog(self.layout.model_dir(model))
        return catalog

    def observation_log(self, model: str) -> ObservationLog:
        self.server(model)
        return self._logs[model]

    def logs(self) -> list[tuple[str, ObservationLog]]:
        return sorted(self._logs.items())

    def acknowledgement(self, model: str) -> Acknowledgement:
        self.server(model)
        return self._acks[model]

    def recent_decisions(self, model: str) -> RecentDecisions:
        self.server(model)
        return self._recent[model]

    def active_version(self, model: str) -> str:
        return self.server(model).version_id

    def serving(self, model: str) -> str | None:
        """The version of `model` served here, None before its first swap in this process."""
        server = self._servers.get(model)
        return None if server is None else server.version_id

    def sync_log(self, model: str) -> int:
        """Wait until the model's log is durable; its durable position."""
        return self.observation_log(model).sync()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        """No swap runs while this is held (forgetting rewrites version files under it)."""
        with self._swap_lock:
            yield

    # ---- opening and swapping ------------------------------------------------------------
    def open_all(self) -> None:
        """Serve the active version of every model in the home."""
        for name in self.layout.model_names():
            active = self.catalog(name).active()
            if active is not None:
                self.swap(name, active)

    def activate(self, model: str, version: str) -> None:
        """Serve `version` of `model` from now on (promote or roll back); Conflict if it cannot serve."""
        self.check_servable(model, version)
        self.swap(model, version)

    def check_servable(self, model: str, version: str) -> None:
        """NotFound for an unknown version, Conflict for one that failed or is still training."""
        catalog = self.catalog(model)
        entry = catalog.entry(version)  # NotFound for an unknown version
        if entry["status"] in (Status.FAILED.value, Status.TRAINING.value) or not catalog.versions.exists(version):
            why = entry.get("error") or "it has not finished training"
            raise Conflict(
                f"Version {version!r} of {model!r} is {entry['status']} and cannot serve: {why}.", field="version"
            )

    def _open_model(self, model: str) -> ObservationLog:
        """The model's log and what lives across its versions, opened at its first swap."""
        obs_log = self._logs.get(model)
        if obs_log is None:
            obs_log = self._logs[model] = ObservationLog(
                self._backend.log_dir(model),
                fsync=self.config.fsync,
                commit_delay=self.config.commit_delay,
            )
        if model not in self._windows:
            self._windows[model] = self._backend.window(model, obs_log)
            self._recent[model] = RecentDecisions(self.config.decision_memory)
        if model not in self._acks:
            self._acks[model] = self._backend.acknowledgement(model, obs_log)
        return obs_log

    def swap(self, model: str, version_id: str) -> None:
        catalog = self.catalog(model)
        with self._swap_lock:  # one swap at a time; serving goes on until the last step
            # Read under the lock a forget holds while it rewrites version files: a version read
            # before a forget and served after it would bring the forgotten user back.
            version = load_version(catalog, version_id)
            obs_log = self._open_model(model)
            old = self._servers.get(model)
            if old is not None:
                old.retire_checkpoints()  # the new server's state replaces the old one's in the store
            try:
                new = ModelServer(
                    version,
                    self._backend.store,
                    obs_log,
                    self.config,
                    upto_lsn=obs_log.sync(),
                    on_feedback=None if self.on_feedback is None else self._backend.feedback(self.on_feedback),
                    feature_cache=self.feature_cache,
                    window=self._windows[model],
                    decisions=self._recent[model],
                    attributes=read_attributes(self.layout, model, version),
                    user_state=self._backend.user_state(model, obs_log),
                )
            except BaseException:
                if old is not None:
                    old.resume_checkpoints()
                raise
            if old is None:
                catalog.activate(version_id)
                new.activated()
                self._servers[model] = new
                return
            with old.serving_lock():  # observations wait here for the last few milliseconds
                new.catch_up(obs_log.sync())  # what the old server learned while the new one was built
                catalog.activate(version_id)
                new.activated()
                self._servers[model] = new
                old.retire()
            self.feature_cache.drop((model, old.version_id))
            new.checkpoint()

    def close(self) -> None:
        """Checkpoint every server and close the logs. Safe to call twice."""
        for server in list(self._servers.values()):
            server.checkpoint()
        for obs_log in self._logs.values():
            obs_log.close()
        self._servers.clear()
        self._logs.clear()
