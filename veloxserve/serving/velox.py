"""Velox: the in-process API over every model in a home directory.

A notebook or a test uses this class directly; the HTTP app and the CLI are thin translations of
it. It is a facade over small parts, each the one owner of its idea:

    backend.py     where users' state lives and what an observation waits on (embedded or shared)
    model_set.py   the served version of every model, its log, and the swap between versions
    retraining.py  background retrains, policies and promotion
    forgetting.py  removing a user from everything a model keeps
    config.py      the home layout

The concrete backends are chosen by `open_backend` from the store, here and in the CLI only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

from veloxserve.config import HomeLayout, ServingConfig, check_model_name
from veloxserve.errors import StoreUnavailable
from veloxserve.ids import Id, canonical_id
from veloxserve.models.attributes import ItemAttributes
from veloxserve.serving.backend import Backend, check_instance, open_backend
from veloxserve.serving.decisions import recommend_logged
from veloxserve.serving.durability import Acknowledgement
from veloxserve.serving.feature_cache import FeatureCache
from veloxserve.serving.forgetting import Forgetting
from veloxserve.serving.idempotency import Original
from veloxserve.serving.model_server import ModelServer, Observation, Receipt, Recommendation, ServerRetired
from veloxserve.serving.model_set import ModelSet
from veloxserve.serving.redis_watch import RedisWatch
from veloxserve.serving.retraining import Retrainer, RetrainJob, RetrainPolicy
from veloxserve.storage.decision_log import DecisionLog
from veloxserve.storage.home_lock import HomeLock
from veloxserve.storage.item_tables import read_item_table, write_item_table
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.storage.published_states import PublishedStates
from veloxserve.storage.redis_cache import TrackedCache
from veloxserve.storage.redis_client import RedisSettings
from veloxserve.storage.sketch_files import SketchFiles
from veloxserve.storage.user_store import UserStore
from veloxserve.storage.version_catalog import VersionCatalog

DURABLE_TIMEOUT_S = 30.0
__all__ = ["DURABLE_TIMEOUT_S", "Velox", "check_model_name"]


class Velox:
    """Serve, learn and train every model under `home`."""

    def __init__(
        self,
        home: str | Path,
        *,
        config: ServingConfig | None = None,
        store: UserStore | None = None,
        instance: str | None = None,
        home_lock: HomeLock | None = None,
        published: PublishedStates | None = None,
        sketches: SketchFiles | None = None,
    ) -> None:
        """`store`: where users' state lives (default: LMDB in the home). A shared store
        (RedisUserStore) makes Redis the state shared by several processes serving this home, each with its own
        `instance` id (its own observation log and lock); see serving/backend.py. `home_lock`:
        the home's lock, already taken by the caller (the demo takes it before preparing the home).
        `published`: where worker 0 of `serve --workers N` publishes for its readers (serving/reader.py);
        `sketches`: where those readers leave what their monitors saw, counted in `alerts`."""
        check_instance(store, instance)
        self.instance = instance
        self._sketches = sketches
        self.layout = HomeLayout(Path(home))
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self._home_lock = home_lock or HomeLock(self.layout.lock_file(instance))
        try:
            self.config = config or ServingConfig()
            self._backend: Backend = open_backend(self.layout, self.config, store, instance, published)
            self.feature_cache = FeatureCache(self.config.feature_cache_bytes)  # shared by every model
            self._models = ModelSet(self.layout, self.config, self._backend, self.feature_cache)
            self._forgetting = Forgetting(
                self._models,
                self._backend.store,
                self.layout,
                forgotten=lambda model, user: self.retrainer.forgotten(model, user),
            )
            self.retrainer = Retrainer(
                self._models,
                self.layout,
                scrub=self._forgetting.scrub,
                take_lease=self._backend.take_lease,
                promote=self._backend.switch,
            )
            self._models.on_feedback = self.retrainer.on_feedback
            self._decision_logs: dict[str, DecisionLog] = {}
            self._decision_lock = threading.Lock()
            for name in self.layout.model_names():
                self.retrainer.recover(name)
            self._models.open_all()
            self._backend.start(self._models, self._forgetting.forget_here, self._models.names())
        except BaseException:
            self._home_lock.release()  # a failed open must not keep the home locked
            raise

    # ---- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Checkpoint every model and close logs and store. Safe to call twice. A retrain still
        running is stopped and its version marked `failed`."""
        self._backend.stop()  # first: the Redis watch may rebuild a server's state
        self.retrainer.close()
        self._models.close()
        for decision_log in self._decision_logs.values():
            decision_log.close()
        self._decision_logs.clear()
        self._backend.close()
        self._home_lock.release()

    def __enter__(self) -> Velox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- catalogue -----------------------------------------------------------------------
    def model_names(self) -> list[str]:
        return self._models.names()

    def health(self) -> dict[str, list[str]]:
        """Per model, why it is degraded: damaged log records skipped on open, a disk refusing
        writes (observe answers 507/503 meanwhile; predictions are still served), Redis not
        answering or having lost the users' state (serving/redis_watch.py). Empty when healthy."""
        reasons = {name: obs_log.health() for name, obs_log in self._models.logs()}
        for name, decisions in sorted(self._decision_logs.items()):
            reasons.setdefault(name, []).extend(decisions.health())
        if self.redis_watch is not None:  # what the watch last found: no Redis call here
            for name, why in self.redis_watch.health().items():
                reasons.setdefault(name, []).extend(why)
        return {name: why for name, why in reasons.items() if why}

    @property
    def redis_settings(self) -> RedisSettings | None:
        """How to reach the shared Redis (its deadline bounds each request's Redis work), or None."""
        return self._backend.redis_settings

    @property
    def redis_cache(self) -> TrackedCache | None:
        """Hot users' state held in this process, coherent with Redis (None without one)."""
        return self._backend.redis_cache

    @property
    def redis_watch(self) -> RedisWatch | None:
        """What /healthz knows of the shared Redis (None without one)."""
        return self._backend.redis_watch

    @property
    def _store(self) -> UserStore:
        return self._backend.store

    def server(self, model: str) -> ModelServer:
        return self._models.server(model)

    def catalog(self, model: str) -> VersionCatalog:
        return self._models.catalog(model)

    def describe(self, model: str) -> dict[str, Any]:
        server = self.server(model)
        job = self.retrainer.job(model)
        return {
            "name": model,
            "active_version": server.version_id,
            "link": server.version.link.value,
            "n_items": len(server.version.catalog),
            "n_users": len(server.users),
            "dim": server.version.dim,
            "versions": self.versions(model),
            "retrain": None if job is None else job.describe(),
            "policy": self.retrainer.policy(model).__dict__,
        }

    def versions(self, model: str) -> list[dict[str, Any]]:
        """Every version with its metadata and status, oldest first."""
        self.server(model)
        return self.catalog(model).list()

    def version(self, model: str, version: str) -> dict[str, Any]:
        self.server(model)
        return self.catalog(model).entry(version)

    # ---- serving -------------------------------------------------------------------------
    def predict(self, model: str, user: Id, item: Id) -> float:
        return self.server(model).predict(user, item)

    def predict_many(self, model: str, queries: Sequence[tuple[Id, Id]]) -> list[float]:
        return self.server(model).predict_many(queries).tolist()

    def predict_text(self, model: str, queries: Sequence[tuple[Id, str]]) -> list[float]:
        """Scores of (user, text) pairs for items known only by their text (content features)."""
        return self.server(model).predict_text(queries).tolist()

    def top_k(
        self,
        model: str,
        user: Id,
        k: int,
        *,
        candidates: Sequence[Id] | None = None,
        exclude_seen: bool = False,
        filter: str | None = None,
    ) -> list[tuple[Id, float]]:
        """The k best items for a user, best first (greedy). The list is logged as a decision."""
        rec = self.recommend(model, user, k, candidates=candidates, exclude_seen=exclude_seen, filter=filter)
        return list(zip(rec.items, rec.scores))

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
        """A top-k list under an exploration policy (greedy, epsilon_greedy, linucb, thompson).

        The list is logged to the model's decision log with each item's propensity; pass the
        returned `decision` id with the observations that answer it (`observe(..., decision=)`),
        so off-policy estimates can join what was shown with what users did."""
        options = {"candidates": candidates, "exclude_seen": exclude_seen, "filter": filter}
        return recommend_logged(
            self.server(model),
            self._models.recent_decisions(model),
            self._decision_log(model),
            user,
            k,
            policy=policy,
            epsilon=epsilon,
            alpha=alpha,
            **options,
        )

    def alerts(self, model: str) -> dict[str, Any]:
        """What to fix in the served version: its deviations from its training data, its drift
        detectors on the prequential error, and the alerts they raise (docs/monitoring.md)."""
        server = self.server(model)
        peers = [] if self._sketches is None else self._sketches.read(model, server.version_id)
        return server.monitor.report(server.prequential.report(), peers)

    def decision_log_dir(self, model: str) -> Path:
        return self.layout.decision_log_dir(model, self.instance)

    def _decision_log(self, model: str) -> DecisionLog:
        log = self._decision_logs.get(model)
        if log is None:
            with self._decision_lock:
                log = self._decision_logs.get(model)
                if log is None:
                    log = self._decision_logs[model] = DecisionLog(self.decision_log_dir(model))
        return log

    def set_item_attributes(self, model: str, path: str | Path) -> dict[str, Any]:
        """Load item attributes (CSV or Parquet with an `item` column) for `filter=` in top-k;
        kept in the home as Parquet and reloaded with every version."""
        server = self.server(model)
        table = read_item_table(Path(path))
        attributes = ItemAttributes.from_table(table, server.version.catalog)  # validates before keeping it
        write_item_table(self.layout.items_file(model), table)
        server.attributes = attributes
        return {"model": model, "attributes": sorted(attributes.columns), "items": table.num_rows}

    def submit(self, model: str, observations: Sequence[Observation]) -> Receipt:
        """Learn a batch now and return its last LSN; it is durable once `observation_log(model)`
        says so. The HTTP layer awaits that; `observe` blocks on it. Rows with an idempotency key
        already logged are not learned again (the receipt counts them: serving/idempotency.py)."""
        while True:
            try:
                return self.server(model).observe_many(observations)
            except ServerRetired:  # a swap happened between looking the server up and its lock
                continue

    def observe(
        self, model: str, user: Id, item: Id, score: float, *, decision: str | None = None, id: str | None = None
    ) -> Receipt:
        """Learn one observation and return once it is durable (its log sequence number).
        `decision`: the id of the served list this answers, from `recommend`. `id`: an idempotency
        key; a retry with the same key is acknowledged (`.duplicates == 1`) without being learned again."""
        return self.observe_many(model, [(user, item, score, decision, id)])

    def observe_many(self, model: str, observations: Sequence[Observation]) -> Receipt:
        lsn = self.submit(model, observations)
        self.acknowledger(model).wait_durable(lsn, DURABLE_TIMEOUT_S)
        self.wait_originals(model, lsn.foreign, DURABLE_TIMEOUT_S)
        return lsn

    def wait_originals(self, model: str, originals: Sequence[Original], timeout: float) -> None:
        """Block until observations that other processes logged (retries answered here, with the
        state shared in Redis) are learned; StoreUnavailable (503) if not within `timeout`."""
        if not originals:
            return
        state = self.server(model).state
        deadline = time.monotonic() + timeout
        pending = list(originals)
        while pending := [o for o in pending if not state.learned(o.instance, o.user, o.lsn)]:
            if time.monotonic() >= deadline:
                first = pending[0]
                raise StoreUnavailable(
                    f"Observation {first.lsn} of instance {first.instance!r}, which this retry "
                    f"repeats, was not learned within {timeout} s; retry later."
                )
            time.sleep(0.02)

    def observation_log(self, model: str) -> ObservationLog:
        return self._models.observation_log(model)

    def acknowledger(self, model: str) -> Acknowledgement:
        """What an observation waits on before it is acknowledged: the log's group commit, and
        with a shared store also its update in Redis (serving/durability.py)."""
        return self._models.acknowledgement(model)

    # ---- versions ------------------------------------------------------------------------
    def train(
        self, model: str, ratings: Any, config: Any = None, *, items: str | Path | None = None, progress: bool = False
    ) -> dict[str, Any]:
        """Train a new version from a ratings file or `Ratings`, make it active and serve it.
        `items`: an item table (CSV/Parquet, `item` column) of filter attributes and, in a `text`
        column, the texts that train content features."""
        from veloxserve.training.trainer import train_version  # training pulls in numba kernels

        check_model_name(model)
        meta = train_version(self.layout, model, ratings, config, items=items, progress=progress)
        self.activate(model, meta["version"])
        return meta

    def retrain(
        self,
        model: str,
        *,
        reason: str = "manual",
        promote: str = "if_better",
        overrides: dict[str, Any] | None = None,
        wait: bool = False,
    ) -> RetrainJob:
        """Retrain θ from the base data and the log in a background process; 409 if one runs.

        Serving and online learning go on meanwhile; the new version is promoted when it beats
        the active one on the most recent logged observations neither was fitted on
        (`promote="always"|"never"` overrides that). With `wait`, return once the job has finished."""
        job = self.retrainer.start(model, reason=reason, promote=promote, overrides=overrides)
        if wait:
            self.retrainer.wait(model)
        return job

    def policy(self, model: str) -> RetrainPolicy:
        self.server(model)
        return self.retrainer.policy(model)

    def set_policy(self, model: str, policy: RetrainPolicy | dict[str, Any]) -> RetrainPolicy:
        self.server(model)
        if not isinstance(policy, RetrainPolicy):
            policy = RetrainPolicy.from_dict(policy)
        return self.retrainer.set_policy(model, policy)

    def activate(self, model: str, version: str) -> None:
        """Serve `version` of `model` from now on (promote or roll back).

        Every user's state is rebuilt against its θ from the version's trained statistics plus
        every logged observation after its log position, so feedback that arrived since that
        version was trained is not lost, then the swap is atomic: a request sees the old or the
        new version, never a mix (serving/model_set.py). With several processes over Redis, it
        returns once every live one serves `version`, else NotAcknowledged (504) naming those that
        did not (serving/coordination.py)."""
        self._models.check_servable(model, version)
        self._backend.switch(model, version)

    # ---- forgetting ----------------------------------------------------------------------
    def forget_user(self, user: Id, model: str | None = None) -> dict[str, Any]:
        """Remove a user from one model (or every model): weights and statistics in memory and in
        the store, observations in the log (replaced by erased markers), the user's rows in the
        base training data and in every version's trained statistics. Returns a receipt.

        θ of versions already trained stays as it is (it holds no per-user data); the next
        retrain trains θ without the user, because neither the base data nor the log holds them.
        A retrain running at the time of the forget is patched, not waited for or cancelled: its
        version's per-user statistics lose the user before it is marked ready or promoted (see
        serving/forgetting.py), so no version trained or served after the receipt holds them.

        With several processes over Redis, the receipt comes once every live one forgot the user
        (else NotAcknowledged, 504); the user id is never learned again in that model."""
        key = canonical_id(user, "user", "forget")
        models = [model] if model is not None else self.model_names()
        receipt: dict[str, Any] = {"user": key, "models": {}}
        for name in models:
            receipt["models"][name] = self._backend.forget(name, key, partial(self._forgetting.forget, name, key))
        return receipt
