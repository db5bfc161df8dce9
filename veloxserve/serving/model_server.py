"""One served model version: predict, top-k and observe.

Observations are validated, their idempotency keys claimed and the batch appended to the durable
log in LSN order under the serving lock; what happens after the append — learning once durable,
recovery, checkpoints — belongs to the version's user state (serving/user_state.py: in this
process's memory, or shared in Redis). The caller gets the batch's LSN and waits on the model's
acknowledgement path (serving/durability.py) before acknowledging the observations.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from veloxserve.config import ServingConfig
from veloxserve.errors import InvalidInput, ItemNotFound, invalid_parameter
from veloxserve.ids import Id, canonical_id
from veloxserve.learning.states import UserStates
from veloxserve.models.attributes import EMPTY, ItemAttributes
from veloxserve.models.basis import BlackBoxBasis
from veloxserve.models.content import text_signature
from veloxserve.models.version import Link, ModelVersion, sigmoid
from veloxserve.serving.anytime import AnytimeFeatures, AnytimeRows
from veloxserve.serving.decisions import RecentDecisions
from veloxserve.serving.evaluation import PrequentialError
from veloxserve.serving.exploration import GREEDY, Candidates, ExplorationPolicy
from veloxserve.serving.feature_cache import Coarsening, FeatureCache
from veloxserve.serving.idempotency import IdempotencyWindow, LocalWindow, Original, check_key
from veloxserve.serving.item_index import ItemIndex
from veloxserve.serving.local_state import LocalUserState
from veloxserve.serving.monitoring import Monitor
from veloxserve.serving.user_state import UserState, UserStateFactory
from veloxserve.serving.validation import batch_size, finite_outputs, int_in_range, item_text, score_in_range
from veloxserve.storage.observation_log import ObservationLog
from veloxserve.storage.user_store import UserStore

log = logging.getLogger(__name__)

Observation = tuple  # (user, item, score[, decision id[, idempotency key]]) as the client sent them
MAX_DECISION_ID = 64
FeedbackListener = Callable[[str, np.ndarray], None]  # (model, squared prequential errors of a batch)


@dataclass
class Recommendation:
    """A served list: items best first, their scores, and the probability with which the policy
    put each item in its slot (None when it has no closed form, e.g. Thompson sampling)."""

    items: list[Id]
    scores: list[float]
    propensities: list[float] | None
    policy: ExplorationPolicy
    user: str
    decision: str | None = None
    model_version: str | None = None


def _rejecting(
    sample: Callable[[int, np.random.Generator], np.ndarray], excluded: np.ndarray
) -> Callable[[int, np.random.Generator], np.ndarray]:
    def draw(n: int, rng: np.random.Generator) -> np.ndarray:
        while True:
            rows = sample(n, rng)
            if not np.isin(rows, excluded).any():
                return rows

    return draw


class Receipt(int):
    """What observe_many answers: the LSN to wait for before acknowledging the batch (an int, as it
    always was), and how many of its rows repeat observations already logged (serving/idempotency.py):
    those were not learned again. `foreign` lists originals logged by other processes (shared state)."""

    duplicates: int
    foreign: tuple[Original, ...]

    def __new__(cls, lsn: int, duplicates: int = 0, foreign: tuple[Original, ...] = ()) -> Receipt:
        receipt = super().__new__(cls, lsn)
        receipt.duplicates, receipt.foreign = duplicates, foreign
        return receipt


class ServerRetired(Exception):
    """This server was replaced by a newer version's; the caller retries on the current one."""


class ModelServer:
    """Serves one version of one model and learns its users online."""

    def __init__(
        self,
        version: ModelVersion,
        store: UserStore,
        obs_log: ObservationLog,
        config: ServingConfig,
        *,
        upto_lsn: int | None = None,
        on_feedback: FeedbackListener | None = None,
        attributes: ItemAttributes = EMPTY,
        feature_cache: FeatureCache | None = None,
        window: IdempotencyWindow | None = None,
        decisions: RecentDecisions | None = None,
        user_state: UserStateFactory = LocalUserState,
    ) -> None:
        """Rebuild every user's state for `version` from the log up to `upto_lsn` (default: all of it),
        as `user_state` keeps it (default: in this process, checkpointed to `store`).

        A swap builds the new server while the old one still serves, then calls `catch_up` under
        the old server's lock for what arrived meanwhile."""
        self.version = version
        self.config = config
        self._log = obs_log
        self._features = version.features.matrix
        self._catalog = version.catalog
        self._logistic = version.link is Link.LOGISTIC
        self._lock = threading.Lock()  # the serving lock: appends (in LSN order), swaps and forgets
        self.retired = False
        self.on_feedback = on_feedback
        self.attributes = attributes
        self.window: IdempotencyWindow = (
            window
            if window is not None
            else LocalWindow.from_log(  # kept across swaps
                obs_log.directory, seconds=config.idempotency_seconds, max_keys=config.idempotency_keys
            ).attach(obs_log)
        )
        self.decisions = decisions if decisions is not None else RecentDecisions(config.decision_memory)
        self.feature_cache = feature_cache if feature_cache is not None else FeatureCache(0)
        approximate = config.approximate_features  # texts of one class share f (docs/approximate-caching.md)
        self._coarsening = None if approximate is None else Coarsening(approximate, text_signature)
        self.anytime = self._anytime_content(config)
        self.index: ItemIndex | None = None  # set by a background build over large catalogues
        if len(self._catalog) >= config.index_min_items:
            threading.Thread(target=self._build_index, name=f"index-{version.name}", daemon=True).start()
        self.prequential = PrequentialError()
        self.monitor = Monitor(version, config.monitoring)  # before the state: replayed errors feed it
        self.state: UserState = user_state(
            version,
            store,
            obs_log,
            config,
            upto_lsn=obs_log.last_lsn if upto_lsn is None else upto_lsn,
            on_errors=self.record_feedback,
        )
        self.replayed = self.state.replayed

    @property
    def users(self) -> UserStates:
        """The users' state predictions read (learning/states.py)."""
        return self.state.table

    @property
    def name(self) -> str:
        return self.version.name

    @property
    def version_id(self) -> str:
        return self.version.version

    # ---- queries -------------------------------------------------------------------------
    def predict(self, user: Any, item: Any) -> float:
        """σ(w_u · f(x)) for one user and item."""
        try:
            row = self._catalog.row(item, "item", "predict")
        except ItemNotFound:
            self.monitor.named_items(np.ones(1, dtype=np.bool_))
            raise
        key = canonical_id(user, "user", "predict")
        score = finite_outputs(self._link(float(self._features[row] @ self.users.weights(key))), f"user {key!r}")
        self.monitor.served_one(row, key, score)
        return score

    def predict_many(self, queries: Sequence[tuple[Any, Any]]) -> np.ndarray:
        """Scores of a batch of (user, item) queries; every query is checked before any is scored."""
        batch_size(len(queries), self.config.max_batch, "queries", "predict")
        users = [canonical_id(u, f"queries[{i}].user", "predict") for i, (u, _) in enumerate(queries)]
        try:
            rows = np.fromiter(
                (self._catalog.row(x, f"queries[{i}].item", "predict") for i, (_, x) in enumerate(queries)),
                dtype=np.int64,
                count=len(queries),
            )
        except ItemNotFound:
            self.monitor.named_items(self._unknown([x for _, x in queries]))
            raise
        scores = finite_outputs(self._link_array(self._inner(self._features[rows], users)), "a user of this batch")
        self.monitor.served(rows, users, scores)
        return scores

    def _unknown(self, items: Sequence[Any]) -> np.ndarray:
        """Which items the catalogue lacks (a refused request's; ids that are not ids count as unknown)."""
        unknown = np.ones(len(items), dtype=np.bool_)
        for i, item in enumerate(items):
            try:
                unknown[i] = self._catalog.lookup(canonical_id(item, "item", "predict")) is None
            except InvalidInput:  # not an id at all: unknown
                pass
        return unknown

    def predict_text(self, queries: Sequence[tuple[Any, Any]]) -> np.ndarray:
        """Scores of (user, text) queries: items known by their text instead of a catalogue id.

        f(text) comes from the version's content features through the feature cache, so a text
        scored for one user is not recomputed for the next. Every query is checked first."""
        content = self.version.content
        if content is None:
            raise invalid_parameter(
                "text",
                "predict",
                f"an item id instead: {self.name} {self.version_id} has no content features "
                "(train it with --items FILE holding a 'text' column)",
                "a text",
            )
        batch_size(len(queries), self.config.max_batch, "queries", "predict")
        users = [canonical_id(u, f"queries[{i}].user", "predict") for i, (u, _) in enumerate(queries)]
        texts = [item_text(x, f"queries[{i}].text", "predict") for i, (_, x) in enumerate(queries)]
        compute = content.transform if self.anytime is None else self._anytime_compute
        features = self.feature_cache.features(
            (self.name, self.version_id), texts, compute, coarsening=self._coarsening
        )
        self.monitor.new_users(users)
        return finite_outputs(self._link_array(self._inner(features, users)), "a user of this batch")

    def _anytime_content(self, config: ServingConfig) -> AnytimeFeatures | None:
        """Content features under `feature_deadline_ms`: a late f(text) is replaced by E[f(x)].
        A black-box basis of several models runs each f_i as its own straggler (seeded with the
        catalogue's mean output when each model has one column); hashed-text content is one basis,
        seeded with the catalogue's mean item features (the same space: [v, μ + b, 1])."""
        content = self.version.content
        if config.feature_deadline_ms is None or content is None:
            return None
        deadline_s = config.feature_deadline_ms / 1e3
        catalogue_mean = self._features.mean(axis=0) if len(self._features) else None
        if isinstance(content, BlackBoxBasis) and len(content.models) > 1:
            k = len(content.models)
            seeds: list[np.ndarray | None] = [None] * k
            if content.outputs == k and catalogue_mean is not None:  # one column per model: seed each
                seeds = [catalogue_mean[i : i + 1] for i in range(k)]
            names = [f"{content.name}[{i}]" for i in range(k)]
            return AnytimeFeatures(content.per_model(), deadline_s=deadline_s, names=names, initial_means=seeds)
        return AnytimeFeatures(
            [lambda texts: content.transform(texts)],  # late-bound: the version's transform as it is at call time
            deadline_s=deadline_s,
            names=["content"],
            initial_means=[catalogue_mean],
        )

    def _anytime_compute(self, inputs: Sequence[Any]) -> AnytimeRows:
        """f(x) of content inputs through the anytime bases: the whole f for hashed text, the
        models' raw outputs laid out as the served basis for a black-box one."""
        assert self.anytime is not None
        content = self.version.content
        if isinstance(content, BlackBoxBasis) and len(content.models) > 1:
            rows = self.anytime.transform(content.design(inputs))
            return AnytimeRows(content.layout(rows.features, inputs), rows.approximated, rows.columns)
        return self.anytime.transform(inputs)

    def _inner(self, features: np.ndarray, users: list[str]) -> np.ndarray:
        """w_u · f row by row: row i's features with user i's weights (one query skips the gather)."""
        if len(users) == 1:
            return features @ self.users.weights(users[0])
        return np.einsum("ij,ij->i", features, self.users.weights_many(users))

    def top_k(
        self,
        user: Any,
        k: Any,
        *,
        candidates: Sequence[Any] | None = None,
        exclude_seen: bool = False,
        filter: str | None = None,
    ) -> list[tuple[Id, float]]:
        """The k best items for a user, best first (greedy; see `recommend` for exploration)."""
        rec = self.recommend(user, k, candidates=candidates, exclude_seen=exclude_seen, filter=filter)
        return list(zip(rec.items, rec.scores))

    def recommend(
        self,
        user: Any,
        k: Any,
        *,
        candidates: Sequence[Any] | None = None,
        exclude_seen: bool = False,
        filter: str | None = None,
        policy: ExplorationPolicy = GREEDY,
        rng: np.random.Generator | None = None,
    ) -> Recommendation:
        """A list of up to k items for a user under an exploration policy, with propensities.

        The eligible items are the catalogue, or `candidates`, narrowed by the attribute `filter`
        (k beyond what those admit is an error; nothing admitted is an empty list), then by
        `exclude_seen` (which the client cannot count, so fewer than k come back when fewer are
        left). Over a large catalogue
        (an index built, no candidate list or filter) the MIPS index proposes candidates and they
        are re-scored exactly; otherwise every eligible item is scored. Scores are the model's
        (σ(w·f)) whatever the policy; the policy decides order and membership.
        """
        key = canonical_id(user, "user", "top_k")
        k = int_in_range(k, "k", "top_k", 1, len(self._catalog))
        self.monitor.new_users([key])
        w = self.users.weights(key)
        eligible = self._eligible_rows(candidates, filter)  # None: the whole catalogue
        if eligible is not None and k > eligible.size > 0:  # none admitted: an empty list, not k in [1, 0]
            raise invalid_parameter(
                "k",
                "top_k",
                f"an int in [1, {eligible.size}], the number of items the candidates "
                "and filter admit (ask for fewer, or widen them)",
                k,
            )
        seen = self.users.seen_rows(key) if exclude_seen else np.empty(0, dtype=np.int64)
        if eligible is not None and seen.size:
            eligible = eligible[~np.isin(eligible, seen)]
        n_eligible = (len(self._catalog) - seen.size) if eligible is None else eligible.size
        k = min(k, n_eligible)
        if k == 0:
            return Recommendation([], [], [], policy, key)
        n_items = len(self._catalog)
        sample: Callable[[int, np.random.Generator], np.ndarray] = (
            (lambda n, rng: rng.integers(0, n_items, n))
            if eligible is None
            else (lambda n, rng: eligible[rng.integers(0, eligible.size, n)])
        )
        if eligible is None and seen.size:
            sample = _rejecting(sample, seen)
        offer = Candidates(
            w,
            lambda: self.users.covariance(key),
            lambda rows: self._features[rows],
            lambda query, n: self._ranked_pool(query, n, eligible, seen),
            sample,
            n_eligible,
        )
        rows, propensities = policy.slate(offer, k, rng or np.random.default_rng())
        scores = finite_outputs(self._link_array(self._features[rows] @ w), f"user {key!r}")
        return Recommendation(
            self._catalog.externals(rows),
            scores.tolist(),
            None if propensities is None else propensities.tolist(),
            policy,
            key,
        )

    def _eligible_rows(self, candidates: Sequence[Any] | None, filter: str | None) -> np.ndarray | None:
        rows = None
        if candidates is not None:
            batch_size(len(candidates), self.config.max_batch, "candidates", "top_k")
            rows = np.unique(self._catalog.rows(candidates, "candidates", "top_k"))
        if filter is not None:
            if not isinstance(filter, str):
                raise invalid_parameter("filter", "top_k", "a string name:value[|value][,name:value]", filter)
            admitted = np.flatnonzero(self.attributes.mask(filter))
            rows = admitted if rows is None else rows[np.isin(rows, admitted)]
        return rows

    def _ranked_pool(
        self, query: np.ndarray, n: int, eligible: np.ndarray | None, seen: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Up to n eligible rows with the largest query·f, best first, and those inner products."""
        index = self.index
        if eligible is None and index is not None:
            rows = index.candidates(query, n + seen.size)
            if seen.size:
                rows = rows[~np.isin(rows, seen)]
            if rows.size >= min(n, len(self._catalog) - seen.size):
                scores = self._features[rows] @ query
                order = np.argsort(-scores, kind="stable")[:n]
                return rows[order], scores[order]
        if eligible is None:  # exact: every item
            scores = self._features @ query
            if seen.size:
                scores[seen] = -np.inf
            rows = np.arange(scores.size)
            n = min(n, scores.size - seen.size)
        else:
            rows, scores = eligible, self._features[eligible] @ query
            n = min(n, scores.size)
        top = np.argpartition(-scores, n - 1)[:n] if n < scores.size else np.arange(scores.size)
        top = top[np.argsort(-scores[top], kind="stable")][:n]
        return rows[top], scores[top]

    def _build_index(self) -> None:
        try:
            index = ItemIndex(self._features, ef_search=self.config.index_ef_search)
        except Exception:  # exact scoring keeps serving; the index is an optimisation
            log.exception("%s %s: building the MIPS index failed; top-k stays exact", self.name, self.version_id)
            return
        self.index = index
        log.info(
            "%s %s: MIPS index over %d items built in %.1f s",
            self.name,
            self.version_id,
            index.size,
            index.build_seconds,
        )

    def _link(self, z: float) -> float:
        if not self._logistic:
            return z
        return float(sigmoid(z))

    def _link_array(self, z: np.ndarray) -> np.ndarray:
        if not self._logistic:
            return z
        return sigmoid(z)

    # ---- feedback ------------------------------------------------------------------------
    def observe_many(self, observations: Sequence[Observation]) -> Receipt:
        """Log and learn a batch; returns its last LSN (durable once the log's durable_lsn reaches it).

        The whole batch is validated first, so a bad row rejects the batch and changes nothing.
        Rows whose idempotency key the window knows (or that repeat a key earlier in the batch) are
        neither logged nor learned again: the receipt counts them and waits for their original.
        """
        batch_size(len(observations), self.config.max_batch, "observations", "observe")
        try:
            users, rows, scores, decisions, keys = self._validate_observations(observations)
        except ItemNotFound:
            self.monitor.named_items(
                self._unknown([o[1] if isinstance(o, tuple | list) and len(o) > 1 else None for o in observations])
            )
            raise
        self.monitor.named_items(np.zeros(rows.size, dtype=np.bool_))
        items = [self._catalog_key(r) for r in rows.tolist()]
        self.decisions.check(decisions, users, items)
        keyed = any(key is not None for key in keys)
        with self._lock:
            if self.retired:
                raise ServerRetired(self.version_id)
            originals = self.window.claim(keys, users, self._log.last_lsn + 1) if keyed else None
            if originals is not None:
                repeated = [o for o in originals if o is not None]
                if repeated:
                    keep = [i for i, o in enumerate(originals) if o is None]
                    users, items = [users[i] for i in keep], [items[i] for i in keep]
                    decisions, keys = [decisions[i] for i in keep], [keys[i] for i in keep]
                    rows, scores = rows[keep], scores[keep]
                    if not keep:
                        return self._receipt(0, repeated)
            try:
                errors = self.state.before_append(users, rows, scores)  # shared state: refuses while Redis fails
                entries = [
                    (u, x, y, self.version_id, d, *((k,) if k is not None else ()))
                    for u, x, y, d, k in zip(users, items, scores.tolist(), decisions, keys)
                ]
                lsn = self.state.append(lambda: self._log.append(entries), users, rows, scores)
            except BaseException:
                if keyed:  # nothing was appended: a retry must be learned
                    self.window.release([k for k in keys if k is not None])
                raise
        self.state.after_observe(len(users))
        if errors is not None:
            self.record_feedback(errors)
        return self._receipt(lsn, repeated) if originals is not None and repeated else Receipt(lsn)

    def _receipt(self, lsn: int, repeated: list[Original]) -> Receipt:
        """A receipt waiting for this batch (LSN `lsn`, 0 if nothing new) and the originals it repeats."""
        own = [o.lsn for o in repeated if o.instance == self.window.instance]
        foreign = tuple(o for o in repeated if o.instance != self.window.instance)
        return Receipt(max([lsn, *own]), len(repeated), foreign)

    def record_feedback(self, errors: np.ndarray) -> None:
        """Count prequential errors in the windows and tell the listener (retraining triggers)."""
        self.prequential.update(errors)
        self.monitor.errors(errors)
        if self.on_feedback is not None:
            self.on_feedback(self.name, errors * errors)

    def _validate_observations(
        self, observations: Sequence[Observation]
    ) -> tuple[list[str], np.ndarray, np.ndarray, list[str | None], list[str | None]]:
        catalog = self._catalog
        low, high = self.version.score_range
        users: list[str] = []
        decisions: list[str | None] = []
        keys: list[str | None] = []
        rows = np.empty(len(observations), dtype=np.int64)
        scores = np.empty(len(observations), dtype=np.float64)
        for i, obs in enumerate(observations):
            user, item, score, *rest = obs
            decision = rest[0] if rest else None
            keys.append(check_key(rest[1] if len(rest) > 1 else None, f"observations[{i}].id"))
            if decision is not None and (not isinstance(decision, str) or not 0 < len(decision) <= MAX_DECISION_ID):
                raise invalid_parameter(
                    f"observations[{i}].decision",
                    "observe",
                    f"the decision id a top_k answer gave (a string of 1-{MAX_DECISION_ID} characters)",
                    decision,
                )
            decisions.append(decision)
            users.append(canonical_id(user, f"observations[{i}].user", "observe"))
            rows[i] = catalog.row(item, f"observations[{i}].item", "observe")
            scores[i] = score_in_range(score, f"observations[{i}].score", "observe", low, high)
        return users, rows, scores, decisions, keys

    def _catalog_key(self, row: int) -> str:
        return str(self._catalog.external(row))

    def activated(self) -> None:
        """This server is the one its model serves from now on (ModelSet.swap, under its locks)."""
        self.state.activated()

    def retire(self) -> None:
        """A newer version's server took over (under this one's serving lock, after a log sync, so
        nothing is left unlearned): refuse observations and stop learning from the log."""
        self.retired = True
        self.state.retire()
        if self.anytime is not None:
            self.anytime.close()

    def remove_user(self, user: str) -> bool:
        """Forget a user's weights in memory. Call it after the log has erased the user's records
        (which syncs the log, so nothing of theirs is still waiting to be learned)."""
        return self.state.remove_user(user)

    # ---- swaps and persistence -----------------------------------------------------------
    def catch_up(self, upto_lsn: int) -> int:
        """Learn the logged observations not learned yet up to `upto_lsn` (must be durable).
        Called under the serving server's lock during a swap, so nothing arrives meanwhile."""
        with self._lock:
            return self.state.catch_up(upto_lsn)

    def serving_lock(self) -> threading.Lock:
        """The lock observations take: hold it to stop learning for a moment (swap, forget)."""
        return self._lock

    def retire_checkpoints(self) -> None:
        """Stop writing checkpoints (waiting for one in progress): a newer version's server is
        about to own the users' state in the store. Learning goes on until `retired` is set."""
        self.state.freeze_checkpoints()

    def resume_checkpoints(self) -> None:
        self.state.resume_checkpoints()

    def checkpoint(self) -> int:
        """Write every user changed since the last checkpoint, with the LSN they reflect."""
        return self.state.checkpoint()
