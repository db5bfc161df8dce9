"""Monitoring one served version: deviations from its training data, drift detectors on its
prequential error, and the alerts that say what to fix (docs/monitoring.md).

The request path only fills bounded sketches (serving/deviations.py) and feeds the compiled
detectors a batch of squared errors (serving/drift.py); everything else — the statistics, the
conditions, the alert book (serving/alerts.py) — runs when the report is read. The thresholds
and windows are `MonitoringConfig` (config.py), part of the server's ServingConfig.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from veloxserve.config import MonitoringConfig
from veloxserve.models.version import Link, ModelVersion
from veloxserve.serving.alerts import AlertBook, Condition
from veloxserve.serving.deviations import ServingSketch, deviations, merge
from veloxserve.serving.drift import DETECTORS, ON_SQUARED_ERRORS, DriftDetector, make_detector

_WHAT = {
    "page_hinkley": "a rise in the mean squared error",
    "adwin": "a change in the mean squared error",
    "ddm": "a rise in the share of large errors",
    "kswin": "a change in the distribution of the errors",
}


def check_detectors(names: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise ValueError(
            f"monitoring drift_detectors: no detector {unknown[0]!r}; expected some of {sorted(DETECTORS)}"
        )
    return names


class Monitor:
    """Sketches, detectors and alerts of one served version."""

    def __init__(self, version: ModelVersion, config: MonitoringConfig, clock: Callable[[], float] = time.time) -> None:
        self.version = version
        self.config = config
        self.sketch = ServingSketch(config.window, config.sample)
        self._trained = frozenset(np.asarray(version.users.ids).astype(str).tolist())
        miss = 0.5 if version.link is Link.LOGISTIC else config.drift_miss  # |error| beyond it: a miss
        settings = {**ON_SQUARED_ERRORS, "ddm": {**ON_SQUARED_ERRORS["ddm"], "miss": miss**2}}
        self.detectors: list[DriftDetector] = [
            make_detector(name, **settings[name]) for name in check_detectors(config.drift_detectors)
        ]
        self.book = AlertBook(config.suppress_seconds, clock)
        self._errors_seen = 0
        self._last_detection: dict[str, int] = {}  # detector -> observation number of its last detection
        self._lock = threading.Lock()

    # ---- the request path ----------------------------------------------------------------
    def _new(self, users: list[str]) -> np.ndarray:
        if self._trained.issuperset(users):  # the common case, answered in C
            return np.zeros(len(users), dtype=np.bool_)
        known = np.fromiter(map(self._trained.__contains__, users), dtype=np.bool_, count=len(users))
        return ~known

    def new_users(self, users: list[str]) -> None:
        """Users asking (top-k): which were not in the training data."""
        self.sketch.users(self._new(users))

    def served(self, rows: np.ndarray, users: list[str], scores: np.ndarray) -> None:
        """A predict answered: its users, the catalogue rows and the scores served."""
        self.sketch.predicted(rows, self._new(users), scores)

    def served_one(self, row: int, user: str, score: float) -> None:
        self.sketch.predicted_one(row, user not in self._trained, score)

    def named_items(self, unknown: np.ndarray) -> None:
        """Items a request named (observe, or a predict refused for an unknown item)."""
        self.sketch.items(unknown)

    def errors(self, errors: np.ndarray) -> None:
        """Prequential errors of a batch (observed − predicted before learning)."""
        squared = np.square(np.asarray(errors, dtype=np.float64))
        with self._lock:
            start = self._errors_seen
            self._errors_seen += squared.size
            for detector in self.detectors:
                hits = detector.update(squared)
                if hits.size:
                    self._last_detection[detector.name] = start + int(hits[-1]) + 1

    # ---- reading -------------------------------------------------------------------------
    def report(self, prequential: dict[str, Any] | None = None, peers: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """Deviations, detectors and alerts now (evaluates the alert book). `peers`: snapshots of
        the same version's sketches in other processes (the readers of `serve --workers N`,
        storage/sketch_files.py), whose requests count with this one's."""
        snapshot = self.sketch.snapshot()
        if peers:
            snapshot = merge([snapshot, *peers], self.config.window, self.config.sample)
        found = deviations(snapshot, self.version.reference, self.version.features.matrix)
        with self._lock:
            seen, last = self._errors_seen, dict(self._last_detection)
        detectors = {
            d.name: {"detections": d.detections, "last_detection_at_observation": last.get(d.name)}
            for d in self.detectors
        }
        conditions = self._conditions(found, seen, last, prequential or {})
        return {
            "model": self.version.name,
            "model_version": self.version.version,
            "reference": self.version.reference is not None,
            "deviations": found,
            "detectors": detectors,
            "observations": seen,
            "alerts": self.book.evaluate(conditions),
        }

    def _conditions(
        self, found: dict[str, Any], seen: int, last: dict[str, int], prequential: dict[str, Any]
    ) -> list[Condition]:
        c, name, v = self.config, self.version.name, self.version.version
        out: list[Condition] = []
        share = found["unknown_items_share"]
        if share is not None and found["items_requested"] >= c.min_requests:
            out.append(
                Condition(
                    "unknown_items_share",
                    share > c.unknown_items_share,
                    share,
                    c.unknown_items_share,
                    f"{share:.0%} of the last {min(found['items_requested'], c.window)} requested items are unknown "
                    f"to {name} {v} (threshold {c.unknown_items_share:.0%})",
                    f"retrain: {share:.0%} of requested items are unknown to version {v}; they arrived after its "
                    f"training data. Log their feedback (observe needs them in the catalogue: train with their "
                    f"ratings, or with item texts for content features) and retrain "
                    f"(POST /models/{name}/retrain), or check the item ids clients send",
                )
            )
        share = found["new_users_share"]
        if share is not None and found["user_requests"] >= c.min_requests:
            out.append(
                Condition(
                    "new_users_share",
                    share > c.new_users_share,
                    share,
                    c.new_users_share,
                    f"{share:.0%} of the last {min(found['user_requests'], c.window)} requests come from users "
                    f"{v} was not trained on (threshold {c.new_users_share:.0%})",
                    f"retrain: {share:.0%} of requests come from users version {v} was not trained on; they are "
                    f"served from the prior and what they did since. Retrain (POST /models/{name}/retrain) so "
                    f"θ is fitted on them; expected for a while after a launch or a campaign",
                )
            )
        if found["served_sample"] >= c.min_requests and found["scores"] is not None:
            s = found["scores"]
            out.append(
                Condition(
                    "score_psi",
                    s["psi"] > c.score_psi,
                    s["psi"],
                    c.score_psi,
                    f"served scores moved from {v}'s scores of its training rows: PSI {s['psi']:.2f} "
                    f"(threshold {c.score_psi}), KS {s['ks']:.2f} (p {s['ks_p']:.1e}), mean "
                    f"{s['served_mean']:.3f} against {s['reference_mean']:.3f}",
                    f"investigate, then retrain: the users or items requested differ from {v}'s training data, "
                    f"or users' weights moved online. Look at the feature and new-user alerts for which; "
                    f"if the prequential error rose too (GET /models/{name}/metrics), retrain "
                    f"(POST /models/{name}/retrain)",
                )
            )
        for shift in (found["features"] or []) if found["served_sample"] >= c.min_requests else []:
            d = shift["dimension"]
            out.append(
                Condition(
                    f"feature_ks:d{d}",
                    shift["p"] < c.feature_ks_p,
                    shift["p"],
                    c.feature_ks_p,
                    f"requested items differ from {v}'s training rows on feature dimension {d} of f(x): KS "
                    f"{shift['ks']:.2f}, p {shift['p']:.1e} adjusted over {len(found['features'])} dimensions "
                    f"(threshold {c.feature_ks_p})",
                    f"check the traffic, then retrain: clients ask for other items than {v} was fitted on "
                    f"(a new section, a promotion, a changed candidate list). If intended, retrain "
                    f"(POST /models/{name}/retrain) so θ is fitted on what is requested now",
                )
            )
        windows = prequential.get("windows", {})
        recent = ", ".join(f"last {w}: {f['rmse']:.3f}" for w, f in windows.items() if f.get("rmse") is not None)
        for detector in self.detectors:
            at = last.get(detector.name)
            quiet = None if at is None else seen - at
            out.append(
                Condition(
                    f"drift:{detector.name}",
                    at is not None and quiet is not None and quiet < c.drift_quiet,
                    None if quiet is None else float(quiet),
                    float(c.drift_quiet),
                    f"{detector.name} detected {_WHAT[detector.name]} of {name} {v} at observation {at} "
                    f"({detector.detections} detections; {quiet} observations since"
                    f"{'; prequential RMSE ' + recent if recent else ''})"
                    if at is not None
                    else f"{detector.name}: no change detected in {seen} observations",
                    f"retrain: the prequential error of {name} {v} changed ({detector.name}); θ no longer fits "
                    f"the feedback. Retrain (POST /models/{name}/retrain), or let it retrain itself on drift "
                    f"(PUT /models/{name}/policy with drift: true)",
                )
            )
        return out
