"""Velox: the in-process API over every model in a home directory.

A notebook or a test uses this class directly; the HTTP app and the CLI are thin translations of
it. It owns the concrete backends (the user store and one observation log per model), chosen
here and in the CLI and nowhere else.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from veloxserve.config import HomeLayout, ServingConfig
from veloxserve.errors import Conflict, ModelNotFound, StoreUnavailable, invalid_parameter
from veloxserve.ids import Id, canonical_id
from veloxserve.models.version import ModelVersion
from veloxserve.models.attributes import EMPTY, ItemAttributes, read_attribute_table
from veloxserve.serving.exploration import Policy
from veloxserve.serving.feature_cache import FeatureCache
from veloxserve.serving.decisions import RecentDecisions
from veloxserve.serving.idempotency import LocalWindow, Original, RedisWindow
from veloxserve.serving.model_server import ModelServer, Observation, Receipt, Recommendation, ServerRetired
from veloxserve.storage.atomic import replace_atomically
from veloxserve.storage.decision_log import DecisionLog, new_decision_id
from veloxserve.serving.retraining import Retrainer, RetrainJob, RetrainPolicy
from veloxserve.storage.home_lock import HomeLock
from veloxserve.storage.lmdb_store import LMDBUserStore
from veloxserve.storage.redis_client import RedisSettings
from veloxserve.serving.redis_watch import RedisWatch
from veloxserve.serving.shared_server import Applier, SharedModelServer
from veloxserve.storage.observation_log import MAIN_INSTANCE, ObservationLog
from veloxserve.storage.user_store import UserStore
from veloxserve.storage.version_catalog import Status, VersionCatalog

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

    def __init__(self, home: str | Path, *, config: ServingConfig | None = None, store: UserStore | None = None,
                 instance: str | None = None, home_lock: HomeLock | None = None) -> None:
        """`store`: where users' state lives (default: LMDB in the home). A shared store
        (RedisUserStore) makes Redis the state shared by several processes serving this home, each with its own
        `instance` id (its own observation log and lock); see serving/shared_server.py. `home_lock`:
        the home's lock, already taken by the caller (the demo takes it before preparing the home)."""
        self.shared = store is not None and store.shared
        if instance is not None and (not self.shared or not _MODEL_NAME.fullmatch(instance) or instance == MAIN_INSTANCE):
            raise invalid_parameter("instance", "serve", "1-64 letters, digits, '_', '.' or '-', other than 'main', "
                                    "with a shared store (--store redis://...)", instance)
        self.instance = instance
        self.layout = HomeLayout(Path(home))
        self.layout.root.mkdir(parents=True, exist_ok=True)
        self._home_lock = home_lock or HomeLock(self.layout.root / (".lock" if instance is None else f".lock-{instance}"))
        try:
            self.config = config or ServingConfig()
            self._store = store if store is not None else LMDBUserStore(self.layout.state_db)
            self._logs: dict[str, ObservationLog] = {}
            self._appliers: dict[str, Applier] = {}
            self._servers: dict[str, ModelServer] = {}
            self._catalogs: dict[str, VersionCatalog] = {}
            self._decision_logs: dict[str, DecisionLog] = {}
            self._windows: dict[str, LocalWindow | RedisWindow] = {}  # per model, across versions (idempotency.py)
            self._recent_decisions: dict[str, RecentDecisions] = {}  # per model: serving/decisions.py
            self._swap_lock = threading.Lock()
            self.feature_cache = FeatureCache(self.config.feature_cache_bytes)  # shared by every model
            self.retrainer = Retrainer(self)
            self.redis_watch: RedisWatch | None = None
            for name in self.layout.model_names():
                catalog = self.catalog(name)
                self.retrainer.recover(name)
                if catalog.active() is not None:
                    self._swap(name, catalog.active())
            if self.shared:  # /healthz's view of Redis, found off the event loop
                self.redis_watch = RedisWatch(self._store.settings, self._shared_tables,
                                              rebuild=lambda name: self._servers[name].rebuild_lost_state())
        except BaseException:
            self._home_lock.release()  # a failed open must not keep the home locked
            raise

    # ---- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Checkpoint every model and close logs and store. Safe to call twice. A retrain still
        running is stopped and its version marked `failed`."""
        if self.redis_watch is not None:  # first: it may rebuild a server's state
            self.redis_watch.close()
        self.retrainer.close()
        for server in list(self._servers.values()):
            server.checkpoint()
        for obs_log in self._logs.values():
            obs_log.close()
        for applier in self._appliers.values():
            applier.close()
        self._appliers.clear()
        for decision_log in self._decision_logs.values():
            decision_log.close()
        self._decision_logs.clear()
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

    def health(self) -> dict[str, list[str]]:
        """Per model, why it is degraded: damaged log records skipped on open, a disk refusing
        writes (observe answers 507/503 meanwhile; predictions are still served), Redis not
        answering or having lost the users' state (serving/redis_watch.py). Empty when healthy."""
        reasons = {name: obs_log.health() for name, obs_log in sorted(self._logs.items())}
        for name, decisions in sorted(self._decision_logs.items()):
            reasons.setdefault(name, []).extend(decisions.health())
        if self.redis_watch is not None:  # what the watch last found: no Redis call here
            for name, why in self.redis_watch.health().items():
                reasons.setdefault(name, []).extend(why)
        return {name: why for name, why in reasons.items() if why}

    @property
    def redis_settings(self) -> RedisSettings | None:
        """How to reach the shared Redis (its deadline bounds each request's Redis work), or None."""
        return self._store.settings if self.shared else None

    def _shared_tables(self) -> dict:
        return {name: server.users for name, server in self._servers.items() if isinstance(server, SharedModelServer)}

    def server(self, model: str) -> ModelServer:
        try:
            return self._servers[model]
        except KeyError:
            known = ", ".join(self.model_names()) or "none yet: train one with `veloxserve train`"
            raise ModelNotFound(f"No model named {model!r}. Models: {known}.", field="model") from None

    def catalog(self, model: str) -> VersionCatalog:
        catalog = self._catalogs.get(model)
        if catalog is None:
            catalog = self._catalogs[model] = VersionCatalog(self.layout.model_dir(model))
        return catalog

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
        self, model: str, user: Id, k: int, *, candidates: Sequence[Id] | None = None, exclude_seen: bool = False,
        filter: str | None = None,
    ) -> list[tuple[Id, float]]:
        """The k best items for a user, best first (greedy). The list is logged as a decision."""
        rec = self.recommend(model, user, k, candidates=candidates, exclude_seen=exclude_seen, filter=filter)
        return list(zip(rec.items, rec.scores))

    def recommend(
        self, model: str, user: Id, k: int, *, candidates: Sequence[Id] | None = None, exclude_seen: bool = False,
        filter: str | None = None, policy: str | None = None, epsilon: float | None = None, alpha: float | None = None,
    ) -> Recommendation:
        """A top-k list under an exploration policy (greedy, epsilon_greedy, linucb, thompson).

        The list is logged to the model's decision log with each item's propensity; pass the
        returned `decision` id with the observations that answer it (`observe(..., decision=)`),
        so off-policy estimates can join what was shown with what users did."""
        server = self.server(model)
        rec = server.recommend(user, k, candidates=candidates, exclude_seen=exclude_seen, filter=filter,
                               policy=Policy.parse(policy, epsilon, alpha))
        rec.decision = new_decision_id()
        rec.model_version = server.version_id
        items = [str(i) for i in rec.items]
        self._recent_decisions[model].remember(rec.decision, rec.user, items)
        self._decision_log(model).append({
            "decision": rec.decision, "ts": time.time(), "model_version": server.version_id, "user": rec.user,
            "policy": rec.policy.describe(), "items": items, "scores": rec.scores,
            "propensities": rec.propensities,
        })
        return rec

    def decision_log_dir(self, model: str) -> Path:
        directory = self.layout.model_dir(model) / "decisions"
        return directory if self.instance is None else directory / "instances" / self.instance

    def _decision_log(self, model: str) -> DecisionLog:
        log = self._decision_logs.get(model)
        if log is None:
            with self._swap_lock:
                log = self._decision_logs.get(model)
                if log is None:
                    log = self._decision_logs[model] = DecisionLog(self.decision_log_dir(model))
        return log

    def set_item_attributes(self, model: str, path: str | Path) -> dict[str, Any]:
        """Load item attributes (CSV or Parquet with an `item` column) for `filter=` in top-k;
        kept in the home as Parquet and reloaded with every version."""
        import pyarrow.parquet as pq

        server = self.server(model)
        table = read_attribute_table(Path(path))
        attributes = ItemAttributes.from_table(table, server.version.catalog)  # validates before keeping it
        replace_atomically(self.layout.items_file(model), lambda fh: pq.write_table(table, fh))
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

    def observe(self, model: str, user: Id, item: Id, score: float, *, decision: str | None = None,
                id: str | None = None) -> Receipt:
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
        users = self.server(model).users
        deadline = time.monotonic() + timeout
        pending = list(originals)
        while pending := [o for o in pending if not users.learned(o.instance, o.user, o.lsn)]:
            if time.monotonic() >= deadline:
                first = pending[0]
                raise StoreUnavailable(f"Observation {first.lsn} of instance {first.instance!r}, which this retry "
                                       f"repeats, was not learned within {timeout} s; retry later.")
            time.sleep(0.02)

    def observation_log(self, model: str) -> ObservationLog:
        self.server(model)
        return self._logs[model]

    def acknowledger(self, model: str) -> ObservationLog | Applier:
        """What an observation waits on before it is acknowledged: the log's group commit, and
        with a shared store also its update in Redis (`durable_lsn`, `wait_durable`, `subscribe`)."""
        self.server(model)
        return self._appliers.get(model) or self._logs[model]

    def _refuse_when_shared(self, what: str) -> None:
        if self.shared:
            raise Conflict(f"{what} is not available while several processes share the state in Redis: stop the "
                           "servers, do it with one `veloxserve serve` (or train a new version offline), and restart "
                           "them (docs/storage.md, 'Several servers over Redis').")

    # ---- versions ------------------------------------------------------------------------
    def train(self, model: str, ratings: Any, config: Any = None, *, items: str | Path | None = None,
              progress: bool = False) -> dict[str, Any]:
        """Train a new version from a ratings file or `Ratings`, make it active and serve it.
        `items`: an item table (CSV/Parquet, `item` column) of filter attributes and, in a `text`
        column, the texts that train content features."""
        from veloxserve.training.trainer import train_version  # training pulls in numba kernels

        check_model_name(model)
        meta = train_version(self.layout, model, ratings, config, items=items, progress=progress)
        self.activate(model, meta["version"])
        return meta

    def retrain(self, model: str, *, reason: str = "manual", promote: str = "if_better",
                overrides: dict[str, Any] | None = None, wait: bool = False) -> RetrainJob:
        """Retrain θ from the base data and the log in a background process; 409 if one runs.

        Serving and online learning go on meanwhile; the new version is promoted when it beats
        the active one on the most recent logged observations neither was fitted on
        (`promote="always"|"never"` overrides that). With `wait`, return once the job has finished."""
        self._refuse_when_shared("Retraining")
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
        new version, never a mix."""
        self._refuse_when_shared("Switching versions")
        catalog = self.catalog(model)
        entry = catalog.entry(version)  # NotFound for an unknown version
        if entry["status"] in (Status.FAILED.value, Status.TRAINING.value) or not catalog.versions.exists(version):
            why = entry.get("error") or "it has not finished training"
            raise Conflict(f"Version {version!r} of {model!r} is {entry['status']} and cannot serve: {why}.", field="version")
        self._swap(model, version)

    def scrub_forgotten(self, model: str, version_id: str, users: Any) -> dict[str, int]:
        """Remove `users` (forgotten while `version_id` was being trained) from its trained
        statistics; under the swap lock, so no forget and no swap runs in between. Returns the
        ratings removed per user."""
        from veloxserve.storage.forget import drop_user_from_version

        with self._swap_lock:
            directory = self.catalog(model).versions.directory / version_id
            return {user: n for user in sorted(users()) if (n := drop_user_from_version(directory, user))}

    def _swap(self, model: str, version_id: str) -> None:
        catalog = self.catalog(model)
        with self._swap_lock:  # one swap at a time; serving goes on until the last step
            # Read under the lock a forget holds while it rewrites version files: a version read
            # before a forget and served after it would bring the forgotten user back.
            version = ModelVersion.from_arrays(catalog.versions.read_arrays(version_id),
                                               catalog.versions.read_meta(version_id))
            obs_log = self._logs.get(model)
            if obs_log is None:
                obs_log = self._logs[model] = ObservationLog(
                    self.layout.instance_log_dir(model, self.instance), fsync=self.config.fsync,
                    commit_delay=self.config.commit_delay,
                )
            if model not in self._windows:
                seconds, instance = self.config.idempotency_seconds, self.instance or MAIN_INSTANCE
                self._windows[model] = RedisWindow(  # a retry may reach another process: keys in Redis
                    self._store, model, seconds=seconds, instance=instance, obs_log=obs_log) if self.shared else \
                    LocalWindow.from_log(obs_log.directory, seconds=seconds, max_keys=self.config.idempotency_keys,
                                         instance=instance).attach(obs_log)
                self._recent_decisions[model] = RecentDecisions(self.config.decision_memory)
            old = self._servers.get(model)
            if old is not None:
                old.retire_checkpoints()  # the new server's state replaces the old one's in the store
            try:
                items_file = self.layout.items_file(model)
                shared = {}
                if self.shared:
                    if model not in self._appliers:
                        settings = self._store.settings
                        self._appliers[model] = Applier(obs_log, self.instance or MAIN_INSTANCE, settings.policy,
                                                        deadline=settings.deadline, where=f"Redis at {settings.where}")
                    shared = {"instance": self.instance or MAIN_INSTANCE, "applier": self._appliers[model],
                              "log_root": self.layout.log_dir(model)}
                new = (SharedModelServer if self.shared else ModelServer)(
                    version, self._store, obs_log, self.config, upto_lsn=obs_log.sync(),
                    on_feedback=None if self.shared else self.retrainer.on_feedback,  # no retraining when shared
                    feature_cache=self.feature_cache, window=self._windows[model],
                    decisions=self._recent_decisions[model],
                    attributes=ItemAttributes.load(items_file, version.catalog) if items_file.is_file() else EMPTY,
                    **shared,
                )
            except BaseException:
                if old is not None:
                    old.resume_checkpoints()
                raise
            if old is None:
                catalog.activate(version_id)
                self._servers[model] = new
                return
            with old.serving_lock():  # observations wait here for the last few milliseconds
                new.catch_up(obs_log.sync())  # what the old server learned while the new one was built
                catalog.activate(version_id)
                self._servers[model] = new
                old.retire()
            self.feature_cache.drop((model, old.version_id))
            new.checkpoint()

    # ---- forgetting ----------------------------------------------------------------------
    def forget_user(self, user: Id, model: str | None = None) -> dict[str, Any]:
        """Remove a user from one model (or every model): weights and statistics in memory and in
        the store, observations in the log (replaced by erased markers), the user's rows in the
        base training data and in every version's trained statistics. Returns a receipt.

        θ of versions already trained stays as it is (it holds no per-user data); the next
        retrain trains θ without the user, because neither the base data nor the log holds them.
        A retrain running at the time of the forget is patched, not waited for or cancelled: its
        version's per-user statistics lose the user before it is marked ready or promoted (see
        Retrainer), so no version trained or served after the receipt holds them."""
        self._refuse_when_shared("Forgetting a user")
        key = canonical_id(user, "user", "forget")
        models = [model] if model is not None else self.model_names()
        receipt: dict[str, Any] = {"user": key, "models": {}}
        for name in models:
            receipt["models"][name] = self._forget_in(name, key)
        return receipt

    def _forget_in(self, model: str, user: str) -> dict[str, Any]:
        from veloxserve.storage.forget import drop_user_from_base_data, drop_user_from_version

        self.server(model)  # ModelNotFound before anything changes
        with self._swap_lock:
            server = self._servers[model]  # under the lock: a swap may have replaced the one looked up
            with server.serving_lock():
                erased = self._logs[model].erase_users({user})  # syncs: nothing of theirs is left to learn
                in_memory = server.remove_user(user)
                stored = self._store.delete(model, user)
                base_rows = drop_user_from_base_data(self.layout.base_data(model), user)
                version_rows = {
                    v: n for v in self.catalog(model).versions.versions()
                    if (n := drop_user_from_version(self.catalog(model).versions.directory / v, user))
                }
            # A retrain running now may have read the user's rows before they were erased: it
            # scrubs them from its version before that version is marked ready or promoted.
            self.retrainer.forgotten(model, user)
        return {
            "weights_removed": bool(in_memory), "state_removed": bool(stored), "log_records_erased": erased,
            "base_rows_removed": base_rows, "trained_statistics_removed": version_rows,
        }
