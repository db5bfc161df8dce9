"""Backend: where users' state lives and what an observation waits on, chosen once per home.

Two deployments, one class each, built by `open_backend` (the one place that picks them):

- EmbeddedBackend: one process per home. Users' state in this process's memory
  (serving/local_state.py), checkpointed to the user store (LMDB by default); an observation is
  acknowledged once the log's group commit made it durable; idempotency keys in memory. Under
  `serve --workers N` it is worker 0's, and it also publishes every learned weight and version
  switch for the reader workers (storage/published_states.py) before acknowledging them.
- SharedBackend: several processes over one Redis (`serve --store redis://… --instance ID`).
  Users' state in Redis (serving/shared_state.py); an observation is acknowledged once fsynced and
  learned into Redis (serving/applier.py); idempotency keys in Redis; a watch thread keeps Redis's
  health off the event loop (serving/redis_watch.py). A version switch is coordinated through
  Redis (serving/coordination.py): it moves the active pointer there and returns once every live
  process serves the version; a forget, once every live process forgot the user, who is then
  never learned again (Redis keeps the model's forgotten set). A retrain runs only in the process
  holding the model's training lease, and its promotion is refused once that lease was lost.

Velox asks its backend; it never checks which one it has.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from veloxserve.config import HomeLayout, ServingConfig, is_name
from veloxserve.errors import invalid_parameter
from veloxserve.models.version import ModelVersion
from veloxserve.serving.applier import Applier
from veloxserve.serving.coordination import Coordinator, HeldLease
from veloxserve.serving.durability import Acknowledgement
from veloxserve.serving.idempotency import IdempotencyWindow, LocalWindow, RedisWindow
from veloxserve.serving.local_state import LocalUserState
from veloxserve.serving.model_server import FeedbackListener
from veloxserve.serving.redis_watch import RedisWatch
from veloxserve.serving.shared_state import SharedUserState, namespace
from veloxserve.serving.user_state import ErrorsListener, UserStateFactory
from veloxserve.storage.lmdb_store import LMDBUserStore
from veloxserve.storage.observation_log import MAIN_INSTANCE, ObservationLog
from veloxserve.storage.published_states import PublishedStates
from veloxserve.storage.redis_cache import TrackedCache
from veloxserve.storage.redis_client import RedisSettings
from veloxserve.storage.redis_lifecycle import FORGET, SWITCH, Announcement, Lease, RedisLifecycle
from veloxserve.storage.redis_store import RedisUserStore
from veloxserve.storage.user_store import UserStore
from veloxserve.storage.versions import VersionStore


class Served(Protocol):
    """What a backend switches in this process (serving.model_set.ModelSet)."""

    def serving(self, model: str) -> str | None:
        """The version of `model` this process serves (None: not served here yet)."""
        ...

    def swap(self, model: str, version_id: str) -> None:
        """Serve `version_id` of `model` from now on, its users' state caught up."""
        ...


ForgetHere = Callable[[str, str], None]


class Backend(ABC):
    """The deployment-specific parts of serving a home."""

    store: UserStore
    instance: str | None  # this process's instance id when several share the home, else None
    redis_watch: RedisWatch | None = None
    _served: Served  # set by start

    def __init__(self, layout: HomeLayout, config: ServingConfig) -> None:
        self.layout = layout
        self.config = config

    @property
    def redis_settings(self) -> RedisSettings | None:
        """How to reach the shared Redis (its deadline bounds each request's Redis work), or None."""
        return None

    @property
    def redis_cache(self) -> TrackedCache | None:
        """This process's copy of hot users' state in Redis (storage/redis_cache.py), or None."""
        return None

    def log_dir(self, model: str) -> Path:
        """The observation log this process writes for `model`."""
        return self.layout.instance_log_dir(model, self.instance)

    @abstractmethod
    def take_lease(self, model: str) -> HeldLease | None:
        """The right to retrain `model` (None: nothing to share it with), or Conflict naming its holder."""

    @abstractmethod
    def switch(self, model: str, version: str, lease: Lease | None = None) -> None:
        """Serve `version` of `model` (checked servable) from now on, in every process serving it;
        with `lease` (a retrain's promotion), FencedOut (409) once that lease was lost."""

    @abstractmethod
    def forget(self, model: str, user: str, here: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Forget `user` in `model` here (`here()`, its receipt) and in every process serving it."""

    @abstractmethod
    def feedback(self, listener: FeedbackListener) -> FeedbackListener | None:
        """Who hears each learned batch's prequential errors: the retrainer's triggers where this
        deployment retrains, nobody where it does not."""

    @abstractmethod
    def window(self, model: str, obs_log: ObservationLog) -> IdempotencyWindow:
        """The model's idempotency keys (serving/idempotency.py), kept across versions."""

    @abstractmethod
    def acknowledgement(self, model: str, obs_log: ObservationLog) -> Acknowledgement:
        """What an observation of `model` waits on before it is acknowledged."""

    @abstractmethod
    def user_state(self, model: str, obs_log: ObservationLog) -> UserStateFactory:
        """How a served version of `model` keeps its users' state."""

    @abstractmethod
    def start(self, served: Served, forget_here: ForgetHere, models: Sequence[str]) -> None:
        """Every model is open and served: start what watches them, what switches `served` and
        what calls `forget_here(model, user)` for a user another process forgot."""

    @abstractmethod
    def stop(self) -> None:
        """First of all at close: stop what watches the models (it may rebuild a server's state)."""

    def close(self) -> None:
        """After the servers were checkpointed and the logs closed: close the store."""
        self.store.close()


class EmbeddedBackend(Backend):
    """One process per home: state in memory, checkpointed to `store`; acknowledged by the log."""

    def __init__(
        self,
        layout: HomeLayout,
        config: ServingConfig,
        store: UserStore | None = None,
        published: PublishedStates | None = None,
    ) -> None:
        super().__init__(layout, config)
        self.instance = None
        self.store = store if store is not None else LMDBUserStore(layout.state_db)
        self.published = published

    def take_lease(self, model: str) -> HeldLease | None:
        return None  # one process: the retrainer's own lock is enough

    def switch(self, model: str, version: str, lease: Lease | None = None) -> None:
        self._served.swap(model, version)

    def forget(self, model: str, user: str, here: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        return here()

    def feedback(self, listener: FeedbackListener) -> FeedbackListener | None:
        return listener

    def window(self, model: str, obs_log: ObservationLog) -> IdempotencyWindow:
        config = self.config
        return LocalWindow.from_log(
            obs_log.directory,
            seconds=config.idempotency_seconds,
            max_keys=config.idempotency_keys,
            instance=MAIN_INSTANCE,
        ).attach(obs_log)

    def acknowledgement(self, model: str, obs_log: ObservationLog) -> Acknowledgement:
        return obs_log  # its commit hooks learn a batch before its waiters are told

    def user_state(self, model: str, obs_log: ObservationLog) -> UserStateFactory:
        return LocalUserState if self.published is None else partial(LocalUserState, published=self.published)

    def start(self, served: Served, forget_here: ForgetHere, models: Sequence[str]) -> None:
        self._served = served  # nothing to watch: no network service behind the state

    def stop(self) -> None:
        pass


class SharedBackend(Backend):
    """Several processes over one Redis: state in Redis, acknowledged once learned there."""

    def __init__(
        self, layout: HomeLayout, config: ServingConfig, store: RedisUserStore, instance: str | None = None
    ) -> None:
        super().__init__(layout, config)
        self.store: RedisUserStore = store
        self.instance = instance
        self._appliers: dict[str, Applier] = {}
        self._states: dict[str, SharedUserState] = {}  # per model, the serving version's
        self._coordinators: dict[str, Coordinator] = {}
        self._coordinators_lock = threading.Lock()
        self._forgotten: dict[str, set[str]] = {}  # per model, as Redis's forgotten set says

    @property
    def redis_settings(self) -> RedisSettings:
        return self.store.settings

    @property
    def redis_cache(self) -> TrackedCache | None:
        return self.store.tracked_cache()

    @property
    def _name(self) -> str:
        return self.instance or MAIN_INSTANCE

    def take_lease(self, model: str) -> HeldLease:
        return HeldLease(RedisLifecycle(self.store, model), self._name, self.config.lease_seconds)

    def switch(self, model: str, version: str, lease: Lease | None = None) -> None:
        """Move the active pointer in Redis and announce it; return once every live process
        (this one too: its follower thread swaps) serves `version`, else NotAcknowledged (504)."""
        self._coordinator(model).announce_and_wait(SWITCH, version, self.config.lifecycle_timeout, lease)

    def forget(self, model: str, user: str, here: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Forget `user` here (`here`: the files all share too; ModelNotFound before anything
        changes), never learn them again, delete their state in every version's namespace, and
        return once every live process forgot them (this one again: a batch queued meanwhile is
        dropped) -- the forgotten set in Redis outlives the announcement -- else NotAcknowledged (504)."""
        receipt = here()
        coordinator = self._coordinator(model)
        self.forgotten(model).add(user)
        for version in VersionStore(self.layout.versions_dir(model)).versions():  # a rollback must not find them
            self.store.state_space(namespace(model, version)).remove(user)
        coordinator.announce_and_wait(FORGET, user, self.config.lifecycle_timeout)
        return receipt

    def forgotten(self, model: str) -> set[str]:
        """The users of `model` never to learn again (read from Redis once, then kept up to date)."""
        if model not in self._forgotten:
            self._forgotten[model] = RedisLifecycle(self.store, model).forgotten_users()
        return self._forgotten[model]

    def _coordinator(self, model: str) -> Coordinator:
        """`model`'s coordinator, started at its first need (a model trained after the start)."""
        with self._coordinators_lock:
            return self._coordinators.get(model) or self._start_coordinator(model)

    def _start_coordinator(self, model: str) -> Coordinator:
        served = self._served

        def apply(announcement: Announcement) -> None:
            if announcement.kind == SWITCH:
                converge(announcement.what)
            elif announcement.kind == FORGET:
                self.forgotten(model).add(announcement.what)  # first: no batch learns them after this
                self._forget_here(model, announcement.what)

        def converge(version: str | None) -> None:
            if version is not None and served.serving(model) != version:
                served.swap(model, version)

        coordinator = Coordinator(
            RedisLifecycle(self.store, model), self._name, apply, converge, heartbeat=self.config.heartbeat_seconds
        )
        self._coordinators[model] = coordinator.start()
        return coordinator

    def feedback(self, listener: FeedbackListener) -> FeedbackListener | None:
        return listener  # each process's triggers: only the one that takes the lease retrains

    def window(self, model: str, obs_log: ObservationLog) -> IdempotencyWindow:
        # A retry may reach another process: the keys live in Redis.
        return RedisWindow(
            self.store, model, seconds=self.config.idempotency_seconds, instance=self._name, obs_log=obs_log
        )

    def acknowledgement(self, model: str, obs_log: ObservationLog) -> Acknowledgement:
        return self._applier(model, obs_log)

    def _applier(self, model: str, obs_log: ObservationLog) -> Applier:
        if model not in self._appliers:
            settings = self.store.settings
            self._appliers[model] = Applier(
                obs_log, self._name, settings.policy, deadline=settings.deadline, where=f"Redis at {settings.where}"
            )
        return self._appliers[model]

    def user_state(self, model: str, obs_log: ObservationLog) -> UserStateFactory:
        applier = self._applier(model, obs_log)

        def shared_state(
            version: ModelVersion,
            store: UserStore,
            obs_log: ObservationLog,
            config: ServingConfig,
            *,
            upto_lsn: int,
            on_errors: ErrorsListener,
        ) -> SharedUserState:
            state = SharedUserState(
                version,
                self.store,
                obs_log,
                config,
                upto_lsn=upto_lsn,
                on_errors=on_errors,
                instance=self._name,
                applier=applier,
                log_root=self.layout.log_dir(model),
                forgotten=self.forgotten(model),
            )
            self._states[model] = state  # the one the watch checks and rebuilds
            return state

        return shared_state

    def start(self, served: Served, forget_here: ForgetHere, models: Sequence[str]) -> None:
        """Follow each model's lifecycle in Redis (converging on its active version now); /healthz's
        view of Redis, found off the event loop; a lost state rebuilt from the logs."""
        self._served, self._forget_here = served, forget_here
        for model in models:
            self._coordinator(model)
        self.redis_watch = RedisWatch(
            self.store.settings,
            lambda: {m: s.table for m, s in self._states.items()},
            rebuild=lambda model: self._states[model].rebuild_lost_state(),
        )

    def stop(self) -> None:
        for coordinator in self._coordinators.values():
            coordinator.close()  # first: its thread may swap a version
        self._coordinators.clear()
        if self.redis_watch is not None:
            self.redis_watch.close()

    def close(self) -> None:
        for applier in self._appliers.values():
            applier.close()
        self._appliers.clear()
        super().close()


def check_instance(store: UserStore | None, instance: str | None) -> None:
    """An instance id names one of several processes sharing a home over Redis, and nothing else."""
    shared = isinstance(store, RedisUserStore)
    if instance is not None and (not shared or not is_name(instance) or instance == MAIN_INSTANCE):
        raise invalid_parameter(
            "instance",
            "serve",
            "1-64 letters, digits, '_', '.' or '-', other than 'main', with a shared store (--store redis://...)",
            instance,
        )


def open_backend(
    layout: HomeLayout,
    config: ServingConfig,
    store: UserStore | None = None,
    instance: str | None = None,
    published: PublishedStates | None = None,
) -> Backend:
    """The backend `store` implies: shared over Redis for a RedisUserStore (each process with its
    own `instance` id, its own log and lock), embedded otherwise (LMDB in the home by default),
    publishing for reader workers with `published`."""
    check_instance(store, instance)
    if isinstance(store, RedisUserStore):
        if published is not None:
            raise invalid_parameter("workers", "serve", "1 with a shared store", "reader workers")
        return SharedBackend(layout, config, store, instance)
    return EmbeddedBackend(layout, config, store, published)
