"""Reader: what a reader worker of `serve --workers N` answers itself, and from what.

Worker 0 is the home's learner (the log, learning, checkpoints, the lifecycle); every other worker
is a reader. A reader loads each model's served version from the home (its item features,
catalogue and attributes: what a prediction needs besides w_u) and reads each user's w_u from
the weights worker 0 publishes (storage/published_states.py), so a prediction costs a reader what
it costs worker 0, and N workers answer predictions on N cores. Top-k lists are answered here too
(w_u and the user's rated items are published; each list goes to this reader's own decision log),
except those that need what is not published: LinUCB and Thompson (the covariance P_u) and
attribute filters. Everything else (observe, the lifecycle, the admin routes) goes to worker 0
(api/forwarding.py).

A reader answers through a ModelServer of its own, the one worker 0 and a single process use, so
validation, errors, scores and monitoring are the same code. Its users' state is `PublishedUsers`:
each read checks, in the same read transaction, that the version it loaded is still the one
served; otherwise VersionMoved sends the request to worker 0 while the reader loads the new one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import cast

import numpy as np

from veloxserve.config import HomeLayout, ServingConfig
from veloxserve.ids import Id
from veloxserve.models.version import ModelVersion
from veloxserve.serving.decisions import RecentDecisions, recommend_logged
from veloxserve.serving.feature_cache import FeatureCache
from veloxserve.serving.idempotency import LocalWindow
from veloxserve.serving.model_server import ModelServer, Recommendation
from veloxserve.serving.model_set import load_version, read_attributes
from veloxserve.serving.user_state import ErrorsListener, UserState
from veloxserve.storage.decision_log import DecisionLog
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.storage.published_states import PublishedStates, VersionMoved
from veloxserve.storage.sketch_files import PERIOD, SketchFiles
from veloxserve.storage.user_store import UserStore
from veloxserve.storage.version_catalog import VersionCatalog

log = logging.getLogger(__name__)


class PublishedUsers:
    """UserStates (learning/states.py) of one version, read from what worker 0 published."""

    def __init__(self, published: PublishedStates, namespace: str, version: ModelVersion) -> None:
        self.published, self.model, self.namespace = published, version.name, namespace
        self.prior = version.prior.mean
        self.dim = version.dim

    def __len__(self) -> int:
        return self.published.count(self.model, self.namespace)

    def weights(self, user: str) -> np.ndarray:
        return self.published.weights(self.model, self.namespace, [user], self.prior)[0]

    def weights_many(self, users: Sequence[str]) -> np.ndarray:
        return self.published.weights(self.model, self.namespace, users, self.prior)

    def covariance(self, user: str) -> np.ndarray:
        raise VersionMoved(self.model)  # not published (k² floats a user): LinUCB and Thompson are worker 0's

    def seen_rows(self, user: str) -> np.ndarray:
        return self.published.seen(self.model, self.namespace, user, self.dim)


class PublishedUserState(UserState):
    """A reader's user state: read-only. Observations, swaps and forgets happen in worker 0, and
    reach this state through the published map; the write half is never called here."""

    def __init__(
        self,
        version: ModelVersion,
        store: UserStore,
        obs_log: ObservationLog,
        config: ServingConfig,
        *,
        upto_lsn: int,
        on_errors: ErrorsListener,
        published: PublishedStates,
        namespace: str,
    ) -> None:
        self.table = PublishedUsers(published, namespace, version)

    @staticmethod
    def _learner_only() -> RuntimeError:
        return RuntimeError("A reader worker does not learn: observations are forwarded to worker 0.")

    def before_append(self, users: list[str], rows: np.ndarray, scores: np.ndarray) -> np.ndarray | None:
        raise self._learner_only()

    def append(self, append: Callable[[], int], users: list[str], rows: np.ndarray, scores: np.ndarray) -> int:
        raise self._learner_only()

    def after_observe(self, added: int) -> None:
        raise self._learner_only()

    def catch_up(self, upto_lsn: int) -> int:
        raise self._learner_only()

    def remove_user(self, user: str) -> bool:
        raise self._learner_only()

    def learned(self, instance: str, user: str, lsn: int) -> bool:
        raise self._learner_only()

    def activated(self) -> None:
        pass  # a reader serves what worker 0 made active

    def retire(self) -> None:
        pass  # nothing to stop: the reader drops the server

    def checkpoint(self) -> int:
        return 0  # worker 0 checkpoints

    def freeze_checkpoints(self) -> None:
        pass

    def resume_checkpoints(self) -> None:
        pass


_NO_LOG = cast(ObservationLog, None)  # a reader never appends: ModelServer's write half is never reached
_NO_STORE = cast(UserStore, None)


class Readers:
    """The models a reader worker answers, each at the version worker 0 serves. Duck-types the
    part of Velox the prediction routes use (api/handlers.py), so the same app answers them."""

    redis_settings = None
    redis_cache = None
    redis_watch = None

    def __init__(
        self,
        home: str | Path,
        published: Path | PublishedStates,
        config: ServingConfig | None = None,
        *,
        instance: str = "reader",
        sketches: SketchFiles | None = None,
    ) -> None:
        """`published`: the map worker 0 publishes into, opened once worker 0 has created it (or
        open already: LMDB opens a map once per process, so a test's learner and reader share it).
        `instance`: names this reader's decision log (beside those of `serve --instance` processes)
        and its sketch files. `sketches`: where this reader leaves what its monitors saw, every
        PERIOD seconds, for worker 0's monitoring report (storage/sketch_files.py)."""
        self.layout = HomeLayout(Path(home))
        self.instance = instance
        self._decision_logs: dict[str, DecisionLog] = {}
        self._recent = RecentDecisions(0)  # observations are checked by worker 0, which never saw these
        self.config = config or ServingConfig()
        self._published = published if isinstance(published, PublishedStates) else None
        self.published_path = published.path if isinstance(published, PublishedStates) else published
        self.feature_cache = FeatureCache(self.config.feature_cache_bytes)
        self._servers: dict[str, ModelServer] = {}
        self._namespaces: dict[str, str] = {}  # what each server reads (PublishedStates.active)
        self._loading: set[str] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._sketches = sketches
        self._leaving: threading.Thread | None = None
        if sketches is not None:
            self._leaving = threading.Thread(
                target=self._leave_sketches, args=(sketches,), name="reader-sketches", daemon=True
            )
            self._leaving.start()

    def model_names(self) -> list[str]:
        return sorted(self._servers)

    def server(self, model: str) -> ModelServer:
        """The model's server, if this reader has loaded the version last published for it;
        otherwise VersionMoved (the request goes to worker 0) and the version loads meanwhile."""
        server = self._servers.get(model)
        if server is None:
            self.refresh(model)
            raise VersionMoved(model)
        return server

    def recommend(
        self,
        model: str,
        user: Id,
        k: int,
        *,
        candidates: Sequence[Id] | None = None,
        exclude_seen: bool = False,
        filter: str | None = None,
        policy: str | None = None,
        epsilon: float | None = None,
        alpha: float | None = None,
    ) -> Recommendation:
        """Velox.recommend, logged to this reader's decision log. A list that needs what is not
        published (LinUCB's and Thompson's covariances, item attributes worker 0 may have replaced
        since this reader loaded them) is worker 0's: VersionMoved."""
        if filter is not None:
            raise VersionMoved(model)
        server = self.server(model)
        return recommend_logged(
            server,
            self._recent,
            self._decision_log(model),
            user,
            k,
            candidates=candidates,
            exclude_seen=exclude_seen,
            policy=policy,
            epsilon=epsilon,
            alpha=alpha,
        )

    def _decision_log(self, model: str) -> DecisionLog:
        with self._lock:
            log = self._decision_logs.get(model)
            if log is None:
                log = self._decision_logs[model] = DecisionLog(self.layout.decision_log_dir(model, self.instance))
            return log

    def refresh(self, model: str, wait: bool = False) -> None:
        """Load the version worker 0 serves for `model`, in the background (or now, with `wait`)."""
        with self._lock:
            if model in self._loading:
                return
            self._loading.add(model)
        if wait:
            self._load(model)
        else:
            threading.Thread(target=self._load, args=(model,), name=f"reader-load-{model}", daemon=True).start()

    def _map(self) -> PublishedStates | None:
        if self._published is None and (self.published_path / "data.mdb").exists():
            self._published = PublishedStates(self.published_path, readonly=True)
        return self._published

    def _load(self, model: str) -> None:
        try:
            published = self._map()
            namespace = None if published is None else published.active(model)
            current = self._servers.get(model)
            if namespace is None or self._namespaces.get(model) == namespace:
                return  # nothing published (yet, or no such model), or loaded already
            self._servers[model] = self._serve(model, namespace, published)  # type: ignore[arg-type]
            self._namespaces[model] = namespace
            if current is not None:
                self.feature_cache.drop((model, current.version_id))
            log.info("reader: %s serves %s", model, namespace)
        except Exception:  # worker 0 answers meanwhile; the next request retries the load
            log.exception("reader: loading the served version of %s failed", model)
        finally:
            with self._lock:
                self._loading.discard(model)

    def _serve(self, model: str, namespace: str, published: PublishedStates) -> ModelServer:
        """A server of the version `namespace` names (`<version>@<server of worker 0>`)."""
        version = load_version(VersionCatalog(self.layout.model_dir(model)), namespace.split("@", 1)[0])
        config = self.config
        state: Callable[..., UserState] = partial(PublishedUserState, published=published, namespace=namespace)
        return ModelServer(
            version,
            _NO_STORE,
            _NO_LOG,
            config,
            upto_lsn=0,
            feature_cache=self.feature_cache,
            window=LocalWindow(seconds=config.idempotency_seconds, max_keys=config.idempotency_keys),
            attributes=read_attributes(self.layout, model, version),
            user_state=state,
        )

    def _leave_sketches(self, files: SketchFiles) -> None:
        """Write each served model's snapshot every PERIOD (an unchanged one is only touched)."""
        written: dict[str, tuple[int, int, int, int]] = {}  # model -> (server, counts) last written
        failing: set[str] = set()  # logged once per run of failures (a full /dev/shm fails every second)
        while not self._closed.wait(PERIOD):
            for model, server in list(self._servers.items()):
                try:
                    snapshot = server.monitor.sketch.snapshot()
                    mark = (id(server), snapshot["items"], snapshot["users"], snapshot["served"])
                    if written.get(model) != mark or not files.touch(self.instance, model):
                        files.write(self.instance, model, server.version_id, snapshot)
                        written[model] = mark
                    failing.discard(model)
                except Exception:  # monitoring misses this reader's requests until the next write
                    if model not in failing:
                        log.exception(
                            "reader: leaving the monitoring sketch of %s failed (retried every second)", model
                        )
                    failing.add(model)
                    written.pop(model, None)

    def close(self) -> None:
        self._closed.set()
        if self._sketches is not None and self._leaving is not None:
            self._leaving.join(10)
            for model in list(self._servers):  # this reader's requests no longer count
                self._sketches.remove(self.instance, model)
        for decision_log in self._decision_logs.values():
            decision_log.close()
        if self._published is not None:
            self._published.close()
