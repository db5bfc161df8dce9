"""Retraining while serving: one background trainer per model, started by hand, on a schedule or
on drift, and promoted only if it beats the active version.

A retrain snapshots the log position, trains θ in a separate process (veloxserve.training.worker)
from the base data plus the log up to that position, then — if it wins the comparison on the
most recent logged observations neither version was fitted on, or if asked to always promote —
the swap (serving/model_set.py) rebuilds every user against the new θ, replays what arrived after
the snapshot and switches atomically. The retrainer reaches the served models through the narrow
`RetrainModels` protocol (catalogue, active version, log position, activate) and the forgetting
module through one callable (`scrub`), never through Velox.

Forgetting a user while a retrain runs patches the retrain's output rather than waiting for it
(a forget would block for minutes, and hold the swap lock meanwhile) or cancelling it (a steady
trickle of erasure requests would starve retraining): the trainer may have read the user's rows
before the forget erased them, so every user forgotten since the job started is removed from the
new version's per-user statistics (ids, weights, Gram, seen items) under the swap lock, after the
trainer wrote the version and before it is marked ready or promoted. A forget after that point
finds the version on disk and patches it itself. θ keeps what it learned, as for every version
already trained when a user is forgotten (θ holds no per-user data; the next retrain drops them).
"""

from __future__ import annotations

import json
import logging
import math
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from veloxserve.children import die_with_parent
from veloxserve.config import HomeLayout
from veloxserve.errors import Conflict, StoreUnavailable, invalid_parameter
from veloxserve.serving.coordination import HeldLease
from veloxserve.serving.drift import (
    DETECTORS,
    ON_SQUARED_ERRORS,
    DriftDetector,
    PageHinkley,
    PageHinkleyConfig,
    make_detector,
)
from veloxserve.storage.pointer import read_pointer, write_pointer
from veloxserve.storage.redis_lifecycle import FencedOut, Lease
from veloxserve.storage.version_catalog import Status, VersionCatalog, now
from veloxserve.training.engines import check_engine
from veloxserve.training.spark_session import DEFAULT_START_TIMEOUT

log = logging.getLogger(__name__)

PROMOTE = ("if_better", "always", "never")
REASONS = ("manual", "schedule", "drift")
ENGINES = ("local", "spark")
# Spark master URLs a retrain may use: local mode, or a standalone cluster (one or more masters).
SPARK_MASTER = re.compile(
    r"local(\[([1-9][0-9]*|\*)\])?|spark://[A-Za-z0-9.-]+:[0-9]{1,5}(,[A-Za-z0-9.-]+:[0-9]{1,5})*"
)
DRIFT_DETECTORS = tuple(sorted(DETECTORS))
_STDERR_TAIL = 4000


@dataclass(frozen=True)
class RetrainPolicy:
    """When a model retrains by itself. Time is checked as observations arrive: with no new
    feedback there is nothing new to train on."""

    every_observations: int | None = None
    every_seconds: float | None = None
    drift: bool = False
    # Squared errors are heavy-tailed, so river's defaults (λ 50, δ 0.005) alarm on noise. On
    # stationary N(0, 0.92²) errors (ml-100k's) λ 100, δ 0.2 raise about one false alarm per
    # 30k-60k observations and catch a rise of the error s.d. to 1.3 within ~120 observations;
    # a false alarm costs one retrain that is then not promoted. Scale both with your score range.
    drift_threshold: float = 100.0
    drift_delta: float = 0.2
    drift_min_instances: int = PageHinkleyConfig.min_instances
    promote: str = "if_better"
    # Which detector (serving/drift.py) triggers the retrain; the three drift_* settings above are
    # Page–Hinkley's, the others run at their ON_SQUARED_ERRORS settings (docs/monitoring.md).
    drift_detector: str = "page_hinkley"
    # Who fits θ (docs/operations/spark.md): the local ALS, or Spark MLlib on `spark_master`; the
    # held-out rows, item catalogue and user solves are the same either way (training/trainer.py).
    engine: str = "local"
    spark_master: str = "local[2]"
    # How long a spark:// master may take to answer, accept the retrain and give it an executor
    # before the retrain fails naming it (training/spark_session.py); Spark alone would retry an
    # absent master for ~65 s and wait for ever on one without free workers.
    spark_start_timeout: float = DEFAULT_START_TIMEOUT

    @classmethod
    def from_dict(cls, data: Any, where: str = "policy") -> RetrainPolicy:
        if not isinstance(data, dict):
            raise invalid_parameter("policy", where, "a JSON object", data)
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise invalid_parameter(unknown[0], where, f"one of {', '.join(sorted(known))}", data[unknown[0]])
        for name, value in data.items():
            ok, expected = _POLICY_CHECKS[name]
            if not ok(value):
                raise invalid_parameter(name, where, expected, value)
        return cls(**data)

    def detector(self) -> DriftDetector | None:
        if not self.drift:
            return None
        if self.drift_detector != "page_hinkley":
            return make_detector(self.drift_detector, **ON_SQUARED_ERRORS[self.drift_detector])
        return PageHinkley(
            PageHinkleyConfig(
                delta=self.drift_delta,
                threshold=self.drift_threshold,
                min_instances=self.drift_min_instances,
            )
        )


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_POLICY_CHECKS: dict[str, tuple[Any, str]] = {  # field: (accepts, what is expected)
    "every_observations": (lambda v: v is None or (_int(v) and v >= 1), "an integer >= 1 or null"),
    "every_seconds": (lambda v: v is None or (_number(v) and v > 0), "a number > 0 or null"),
    "drift": (lambda v: isinstance(v, bool), "true or false"),
    "drift_threshold": (lambda v: _number(v) and v > 0, "a number > 0"),
    "drift_delta": (lambda v: _number(v) and v >= 0, "a number >= 0"),
    "drift_min_instances": (lambda v: _int(v) and v >= 1, "an integer >= 1"),
    "promote": (lambda v: v in PROMOTE, " or ".join(PROMOTE)),
    "drift_detector": (lambda v: v in DRIFT_DETECTORS, " or ".join(DRIFT_DETECTORS)),
    "engine": (lambda v: v in ENGINES, " or ".join(ENGINES)),
    "spark_master": (
        lambda v: isinstance(v, str) and SPARK_MASTER.fullmatch(v) is not None,
        "a Spark master URL: local, local[N], local[*] or spark://host:port[,host:port]",
    ),
    "spark_start_timeout": (lambda v: _number(v) and 0 < v and math.isfinite(v), "a number of seconds > 0"),
}


@dataclass
class RetrainJob:
    model: str
    version: str
    parent: str
    reason: str
    promote: str
    upto_lsn: int
    started_at: str = field(default_factory=now)
    engine: str = "local"  # who fits θ (the policy's), and on which Spark master
    spark_master: str | None = None
    state: str = "running"  # running, promoted, ready, failed
    finished_at: str | None = None
    detail: str | None = None
    seconds: float | None = None

    def describe(self) -> dict[str, Any]:
        return asdict(self)


class RetrainModels(Protocol):
    """What a retrain needs of the served models (serving.model_set.ModelSet)."""

    def catalog(self, model: str) -> VersionCatalog: ...

    def active_version(self, model: str) -> str:
        """The version `model` serves; ModelNotFound (404) for an unknown model."""
        ...

    def sync_log(self, model: str) -> int:
        """The model's durable log position, once everything appended so far is durable."""
        ...

    def activate(self, model: str, version: str) -> None:
        """Serve `version` from now on (the swap)."""
        ...


# Removes the users that `users()` names from a version's trained statistics (serving/forgetting.py);
# ratings removed per user.
Scrub = Callable[[str, str, Callable[[], Iterable[str]]], dict[str, int]]


@dataclass
class _Trigger:
    policy: RetrainPolicy
    detector: DriftDetector | None
    observations: int = 0
    since: float = field(default_factory=time.monotonic)


class Retrainer:
    """Runs at most one trainer per model and applies each model's retraining policy."""

    def __init__(
        self,
        models: RetrainModels,
        layout: HomeLayout,
        scrub: Scrub,
        *,
        take_lease: Callable[[str], HeldLease | None] = lambda model: None,
        promote: Callable[[str, str, Lease | None], None] | None = None,
    ) -> None:
        """`take_lease(model)`: the right to retrain it among several processes (Conflict if another
        holds it; None with one process). `promote(model, version, lease)`: serve the new version
        (default: the models' own swap), refused with FencedOut once the lease was lost."""
        self._models = models
        self._layout = layout
        self._scrub = scrub
        self._take_lease = take_lease
        self._promote = promote or (lambda model, version, lease: models.activate(model, version))
        self._leases: dict[str, HeldLease] = {}
        self._lock = threading.Lock()
        self._running: dict[str, RetrainJob] = {}
        self._last: dict[str, RetrainJob] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._triggers: dict[str, _Trigger] = {}
        self._processes: dict[str, subprocess.Popen[str]] = {}
        self._forgotten: dict[str, set[str]] = {}  # model: users forgotten while its retrain runs
        self._closing = False
        # The trainer process; the spec is appended as its last argument (tests wrap it to pause it).
        self.worker_command: list[str] = [sys.executable, "-m", "veloxserve.training.worker"]

    def close(self) -> None:
        """Stop every running trainer (their versions end `failed`, reason: shutdown) and wait."""
        with self._lock:
            self._closing = True
            processes = list(self._processes.values())
        for proc in processes:
            proc.kill()
        for thread in list(self._threads.values()):
            thread.join()

    def recover(self, model: str) -> None:
        """At start: a version still `training` was cut off by a crash (its trainer died with its
        server, veloxserve/children.py): mark it failed and remove its half-written files. With
        several processes over Redis, only while no other process holds the training lease: a
        live one's trainer is writing that version now, and the next lease holder cleans up after
        a dead one (`start`)."""
        try:
            held = self._take_lease(model)
        except (Conflict, StoreUnavailable) as exc:  # another process trains it, or Redis is away: the next retrain
            log.info("%s: not clearing interrupted retrains now: %s", model, exc.message)
            return
        try:
            self._clear_interrupted(model)
        finally:
            if held is not None:
                held.release()

    def _clear_interrupted(self, model: str) -> None:
        """Called holding the right to train `model` (the lease, or the only process) with no retrain
        of it running here: any version still `training` belongs to a trainer that is gone."""
        catalog = self._models.catalog(model)
        for entry in catalog.list():
            if entry["status"] == Status.TRAINING.value:
                catalog.mark(
                    entry["version"],
                    Status.FAILED,
                    error="interrupted: the process that trained it stopped before it finished",
                )
                log.warning(
                    "%s: retrain %s was interrupted (its process stopped): marked failed", model, entry["version"]
                )
        catalog.versions.clean_incoming()

    # ---- policy --------------------------------------------------------------------------
    def policy(self, model: str) -> RetrainPolicy:
        text = read_pointer(self._layout.policy_file(model))
        return RetrainPolicy(**json.loads(text)) if text else RetrainPolicy()

    def set_policy(self, model: str, policy: RetrainPolicy) -> RetrainPolicy:
        """Store the policy; InvalidInput (and nothing changes) if the active version's kind cannot
        retrain on its engine (training/engines.py)."""
        active = self._models.active_version(model)
        check_engine(policy.engine, self._models.catalog(model).versions.read_meta(active), model)
        write_pointer(self._layout.policy_file(model), json.dumps(asdict(policy)))
        with self._lock:
            self._triggers[model] = _Trigger(policy, policy.detector())
        return policy

    def _trigger(self, model: str) -> _Trigger:
        trigger = self._triggers.get(model)
        if trigger is None:
            policy = self.policy(model)
            trigger = self._triggers[model] = _Trigger(policy, policy.detector())
        return trigger

    def drift_alarms(self, model: str) -> int | None:
        """How often the drift detector fired for `model` in this process since its policy was last set
        (None: drift detection is off)."""
        with self._lock:
            detector = self._trigger(model).detector
            return None if detector is None else detector.detections

    def on_feedback(self, model: str, squared_errors: np.ndarray) -> None:
        """Called after every observed batch: count it, feed the drift detector, maybe retrain."""
        with self._lock:
            trigger = self._trigger(model)
            policy = trigger.policy
            trigger.observations += squared_errors.size
            reason = None
            if trigger.detector is not None and trigger.detector.update(squared_errors).size:
                reason = "drift"
            elif policy.every_observations is not None and trigger.observations >= policy.every_observations:
                reason = "schedule"
            elif policy.every_seconds is not None and time.monotonic() - trigger.since >= policy.every_seconds:
                reason = "schedule"
            if reason is None or model in self._running:
                return
            trigger.observations, trigger.since = 0, time.monotonic()
        try:
            self.start(model, reason=reason, promote=policy.promote)
        except Conflict as exc:  # another process holds the lease (its own triggers tripped too)
            log.info("%s: %s retrain not started here: %s", model, reason, exc.message)
        except Exception:  # a trigger must never fail the observe that tripped it
            log.exception("%s: %s retrain could not start", model, reason)

    # ---- jobs ----------------------------------------------------------------------------
    def start(
        self, model: str, *, reason: str = "manual", promote: str = "if_better", overrides: dict[str, Any] | None = None
    ) -> RetrainJob:
        """Start a background retrain; Conflict (409) if one is already running for the model."""
        if promote not in PROMOTE:
            raise invalid_parameter("promote", "retrain", " or ".join(PROMOTE), promote)
        if reason not in REASONS:
            raise invalid_parameter("reason", "retrain", " or ".join(REASONS), reason)
        parent = self._models.active_version(model)
        with self._lock:
            if self._closing:
                raise Conflict(f"The server is shutting down; retrain {model!r} after it restarts.")
            running = self._running.get(model)
            if running is not None:
                raise Conflict(
                    f"A retrain of {model!r} is already running (version {running.version}, started "
                    f"{running.started_at}, reason {running.reason}). Wait for it: GET /models/{model}/retrain."
                )
            policy = self._trigger(model).policy  # every retrain fits θ with the policy's engine
            # A policy set before a black-box version was activated: refused before anything is reserved.
            check_engine(policy.engine, self._models.catalog(model).versions.read_meta(parent), model)
            spark_master = policy.spark_master if policy.engine == "spark" else None
            held = self._take_lease(model)  # Conflict naming the process retraining it
            try:
                self._clear_interrupted(model)  # a process killed while it trained left its version `training`
                upto = self._models.sync_log(model)
                catalog = self._models.catalog(model)
                version = catalog.reserve(reason=reason, parent=parent, log_position=upto)
            except BaseException:
                if held is not None:
                    held.release()
                raise
            if held is not None:
                self._leases[model] = held
            job = self._running[model] = RetrainJob(
                model, version, parent, reason, promote, upto, engine=policy.engine, spark_master=spark_master
            )
            self._forgotten[model] = set()
            if model in self._triggers:
                self._triggers[model].observations, self._triggers[model].since = 0, time.monotonic()
        timeout = policy.spark_start_timeout
        thread = threading.Thread(
            target=self._run, args=(job, overrides or {}, timeout), name=f"retrain-{model}", daemon=True
        )
        self._threads[model] = thread
        thread.start()
        return job

    def forgotten(self, model: str, user: str) -> None:
        """A user was just forgotten (under the swap lock): a retrain of `model` running now
        scrubs them from its version before the version can be marked ready or served."""
        with self._lock:
            if model in self._forgotten:
                self._forgotten[model].add(user)

    def _forgotten_now(self, model: str) -> set[str]:
        with self._lock:
            return set(self._forgotten.get(model, ()))

    def job(self, model: str) -> RetrainJob | None:
        """The running retrain of a model, else its last finished one (this process only)."""
        with self._lock:
            return self._running.get(model) or self._last.get(model)

    def wait(self, model: str, timeout: float | None = None) -> RetrainJob | None:
        thread = self._threads.get(model)
        if thread is not None:
            thread.join(timeout)
        return self.job(model)

    def _run(self, job: RetrainJob, overrides: dict[str, Any], spark_start_timeout: float) -> None:
        catalog = self._models.catalog(job.model)
        started = time.perf_counter()
        try:
            meta = self._train(job, overrides, spark_start_timeout)
            scrubbed = self._scrub(job.model, job.version, lambda: self._forgotten_now(job.model))
            if scrubbed:
                log.info("%s: removed %d user(s) forgotten during retrain %s", job.model, len(scrubbed), job.version)
            comparison = meta.get("comparison", {})
            candidate, parent = comparison.get("candidate_rmse"), comparison.get("parent_rmse")
            better = candidate is not None and (parent is None or candidate < parent)
            if comparison.get("rows"):
                verdict = (
                    f"held-out RMSE on the {comparison['rows']} most recent logged rows neither version was "
                    f"fitted on: {_fmt(candidate)} (candidate) vs {_fmt(parent)} ({job.parent})"
                )
            else:
                verdict = (
                    f"nothing to compare on: {comparison.get('rows_unfitted_by_parent', 0)} logged rows "
                    f"{job.parent} was not fitted on, {comparison.get('rows_needed')} needed"
                )
                if job.promote == "if_better":
                    verdict += "; promote='always' promotes it anyway"
            if self._closing:
                raise RuntimeError("the server shut down before the new version could be promoted")
            if job.promote == "always" or (job.promote == "if_better" and better):
                catalog.mark(job.version, Status.READY, decision=f"promoted: {verdict}")
                held = self._leases.get(job.model)
                try:
                    self._promote(job.model, job.version, None if held is None else held.lease)
                except FencedOut as exc:  # another process retrains now: this version stays ready
                    log.error("%s: retrain %s not promoted: %s", job.model, job.version, exc.message)
                    catalog.mark(job.version, Status.READY, decision=f"not promoted: {exc.message}")
                    job.state, job.detail = "ready", f"not promoted: {exc.message}"
                    return
                job.state, job.detail = "promoted", verdict
            else:
                why = "promotion not requested" if job.promote == "never" else "not better than the active version"
                catalog.mark(job.version, Status.READY, decision=f"not promoted, {why}: {verdict}")
                job.state, job.detail = "ready", f"{why}: {verdict}"
        except Exception as exc:  # the trainer or the swap failed: the active version keeps serving
            log.exception("%s: retrain %s failed", job.model, job.version)
            catalog.versions.clean_incoming()
            catalog.mark(job.version, Status.FAILED, error=str(exc)[-_STDERR_TAIL:])
            job.state, job.detail = "failed", str(exc)[-_STDERR_TAIL:]
        finally:
            job.finished_at, job.seconds = now(), round(time.perf_counter() - started, 3)
            with self._lock:
                self._running.pop(job.model, None)
                self._forgotten.pop(job.model, None)
                self._last[job.model] = job
                held = self._leases.pop(job.model, None)
            if held is not None:
                held.release()

    def _train(self, job: RetrainJob, overrides: dict[str, Any], spark_start_timeout: float) -> dict[str, Any]:
        spec = {
            "home": str(Path(self._layout.root).resolve()),
            "model": job.model,
            "version": job.version,
            "parent": job.parent,
            "upto_lsn": job.upto_lsn,
            "reason": job.reason,
            "engine": job.engine,
            "spark_master": job.spark_master,
            "spark_start_timeout": spark_start_timeout,
            "overrides": overrides,
        }
        with self._lock:
            if self._closing:
                raise RuntimeError("the server shut down before training started")
            proc = self._processes[job.model] = subprocess.Popen(
                [*self.worker_command, json.dumps(spec)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                preexec_fn=partial(die_with_parent, signal.SIGKILL),  # this thread waits on it: see children.py
            )
        try:
            stdout, stderr = proc.communicate()
        finally:
            with self._lock:
                self._processes.pop(job.model, None)
        if proc.returncode != 0:
            if self._closing:
                raise RuntimeError("interrupted: the server shut down during training")
            raise RuntimeError(_failure(proc.returncode, stdout, stderr))
        return json.loads(stdout.strip().splitlines()[-1])


def _failure(status: int, stdout: str, stderr: str) -> str:
    """A failed trainer's error, at most _STDERR_TAIL characters: its own message (the worker's last
    stdout line, {"error": ...}) else stderr's last line, then as much of stderr's tail as fits (a
    JVM's log can run long: the headline is never the part cut off)."""
    headline = None
    lines = stdout.strip().splitlines()
    try:
        reported = json.loads(lines[-1]) if lines else None
        if isinstance(reported, dict) and isinstance(reported.get("error"), str):
            headline = reported["error"]
    except ValueError:
        pass
    if headline is None:
        last = stderr.strip().splitlines()[-1:] or [f"exit status {status}"]
        headline = f"trainer exited with status {status}: {last[0]}"
    headline = headline[:_STDERR_TAIL]
    room = _STDERR_TAIL - len(headline) - 1
    return f"{headline}\n{stderr[-room:]}" if room > 0 and stderr else headline


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
