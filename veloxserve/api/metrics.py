"""Prometheus metrics: request latency per route, outcomes, observations, and the models' state.

Each app has its own registry (several apps in one process, as in tests, never collide). Model
state — active version, users, prequential error per window — is read at scrape time by a
collector, so the hot path only pays for one histogram observation per request.

Under `serve --workers N` each worker answers requests, but /metrics is answered by worker 0: the
supervisor gives every worker PROMETHEUS_MULTIPROC_DIR, prometheus_client's multiprocess mode
(each process's counts in its own memory-mapped file), and the request counters and latencies
are rendered summed over every worker that ever ran (a restarted worker's counts are kept).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, Metric, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from veloxserve.serving.velox import Velox

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class _ModelState(Collector):
    def __init__(self, velox: Velox) -> None:
        self._velox = velox

    def collect(self) -> Iterator:
        version = InfoMetricFamily("veloxserve_active_version", "The version each model serves", labels=["model"])
        users = GaugeMetricFamily("veloxserve_users", "Users with online state", labels=["model"])
        rmse = GaugeMetricFamily(
            "veloxserve_prequential_rmse",
            "RMSE of predictions made before learning",
            labels=["model", "version", "window"],
        )
        seen = GaugeMetricFamily(
            "veloxserve_prequential_observations", "Observations evaluated", labels=["model", "version"]
        )
        late = CounterMetricFamily(
            "veloxserve_feature_substitutions",
            "Content feature computations past feature_deadline_ms, answered with E[f(x)] (anytime features)",
            labels=["model", "version"],
        )
        for name in self._velox.model_names():
            server = self._velox.server(name)
            version.add_metric([name], {"version": server.version_id})
            users.add_metric([name], len(server.users))
            if server.anytime is not None:
                late.add_metric([name, server.version_id], int(server.anytime.late.sum()))
            report = server.prequential.report()
            seen.add_metric([name, server.version_id], report["observations"])
            if report["rmse"] is not None:
                rmse.add_metric([name, server.version_id, "all"], report["rmse"])
            for window, figures in report["windows"].items():
                if figures["rmse"] is not None:
                    rmse.add_metric([name, server.version_id, window], figures["rmse"])
        damaged = CounterMetricFamily(
            "veloxserve_log_damaged_records", "Damaged log records skipped on open", labels=["model"]
        )
        refused = CounterMetricFamily("veloxserve_log_write_failures", "Log writes the disk refused", labels=["model"])
        degraded = GaugeMetricFamily("veloxserve_degraded", "1 while /healthz says degraded", labels=["model"])
        health = self._velox.health()
        for name in self._velox.model_names():
            obs_log = self._velox.observation_log(name)
            damaged.add_metric([name], len(obs_log.damage))
            refused.add_metric([name], obs_log.write_failures)
            degraded.add_metric([name], 1.0 if name in health else 0.0)
        rebuilt = CounterMetricFamily(
            "veloxserve_redis_state_rebuilds",
            "Times Redis lost the users' state and it was rebuilt from the logs",
            labels=["model"],
        )
        watch = self._velox.redis_watch
        for name, times in ({} if watch is None else watch.rebuilds).items():
            rebuilt.add_metric([name], times)
        yield from (version, users, rmse, seen, late, damaged, refused, degraded, rebuilt)
        yield from self._redis_cache()
        yield from self._monitoring()
        cache = self._velox.feature_cache.stats()
        lookups = CounterMetricFamily(
            "veloxserve_feature_cache_lookups", "Content feature lookups by outcome", labels=["outcome"]
        )
        lookups.add_metric(["hit"], cache.hits)
        lookups.add_metric(["miss"], cache.misses)
        lookups.add_metric(["approximate_hit"], cache.approximate_hits)  # f(z) of the input's class
        yield lookups
        yield GaugeMetricFamily(
            "veloxserve_feature_cache_hit_rate", "Share of feature lookups served from the cache", value=cache.hit_rate
        )
        yield GaugeMetricFamily("veloxserve_feature_cache_bytes", "Bytes held by the feature cache", value=cache.bytes)
        yield CounterMetricFamily("veloxserve_feature_cache_evictions", "Feature rows evicted", value=cache.evictions)

    def _redis_cache(self) -> Iterator:
        """The process's client-side cache of users' state in Redis (storage/redis_cache.py)."""
        cache = self._velox.redis_cache
        if cache is None:
            return
        stats = cache.stats
        reads = CounterMetricFamily(
            "veloxserve_redis_cache_reads", "Users' state rows predictions read, by where from", labels=["outcome"]
        )
        reads.add_metric(["hit"], stats.hits)
        reads.add_metric(["miss"], stats.misses)
        yield reads
        yield CounterMetricFamily(
            "veloxserve_redis_cache_invalidations", "Keys Redis said changed", value=stats.invalidations
        )
        yield CounterMetricFamily(
            "veloxserve_redis_cache_flushes", "Times the whole cache was dropped", value=stats.flushes
        )
        yield CounterMetricFamily(
            "veloxserve_redis_cache_failed_fences",
            "Fences with no PONG in time (those predictions read Redis)",
            value=stats.failed_fences,
        )
        yield GaugeMetricFamily("veloxserve_redis_cache_bytes", "Bytes the cache holds", value=cache.held_bytes)
        yield GaugeMetricFamily(
            "veloxserve_redis_cache_connected",
            "1 while the invalidation connection is up",
            value=float(cache.connected),
        )

    def _monitoring(self) -> Iterator:
        """Deviations, drift detections and alerts (serving/monitoring.py), evaluated at the scrape."""
        shares = GaugeMetricFamily(
            "veloxserve_deviation", "Training-vs-serving deviations of recent requests", labels=["model", "check"]
        )
        detections = CounterMetricFamily(
            "veloxserve_drift_detections", "Changes the drift detectors found", labels=["model", "detector"]
        )
        holds = GaugeMetricFamily(
            "veloxserve_alert", "1 while an alert's condition holds (firing or suppressed)", labels=["model", "alert"]
        )
        raised = CounterMetricFamily(
            "veloxserve_alerts_raised",
            "Times an alert was raised (suppressed recurrences not counted)",
            labels=["model", "alert"],
        )
        for name in self._velox.model_names():
            report = self._velox.alerts(name)
            found = report["deviations"]
            figures = {"unknown_items_share": found["unknown_items_share"], "new_users_share": found["new_users_share"]}
            if found["scores"] is not None:
                figures |= {"score_psi": found["scores"]["psi"], "score_ks_p": found["scores"]["ks_p"]}
            if found["features"]:
                figures["feature_ks_p_min"] = min(f["p"] for f in found["features"])
            for check, value in figures.items():
                if value is not None:
                    shares.add_metric([name, check], value)
            for detector, about in report["detectors"].items():
                detections.add_metric([name, detector], about["detections"])
            for alert in report["alerts"]:
                holds.add_metric([name, alert["alert"]], 0.0 if alert["status"] == "resolved" else 1.0)
                raised.add_metric([name, alert["alert"]], alert["raised"])
        yield from (shares, detections, holds, raised)


class Metrics:
    def __init__(self, velox: Velox) -> None:
        self.registry = CollectorRegistry()
        shared_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        # Shared: the series live in the workers' files and are collected from there, not twice.
        own = None if shared_dir else self.registry
        self.latency = Histogram(
            "veloxserve_request_seconds", "Request latency", ["route"], buckets=_BUCKETS, registry=own
        )
        self.requests = Counter(
            "veloxserve_requests", "Requests by route and status", ["route", "status"], registry=own
        )
        self.observations = Counter("veloxserve_observations", "Acknowledged observations", ["model"], registry=own)
        self._workers = None if not shared_dir else MultiProcessCollector(self.registry, path=shared_dir)
        self.registry.register(_ModelState(velox))
        self._children: dict[tuple[str, int], tuple] = {}  # bounded: routes and statuses are few

    def record(self, route: str, status: int, seconds: float) -> None:
        # prometheus_client's labels() costs ~3 µs a call, more than a prediction: look the
        # labelled series up once per (route, status) and keep them (bench/bench_http.py).
        children = self._children.get((route, status))
        if children is None:
            children = self._children[(route, status)] = (
                self.latency.labels(route),
                self.requests.labels(route, str(status)),
            )
        children[0].observe(seconds)
        children[1].inc()

    def request_families(self) -> Iterator[Metric]:
        """The request counters and latencies: this process's, or every worker's under --workers."""
        if self._workers is None:
            yield from self.requests.collect()
            yield from self.latency.collect()
            return
        names = {"veloxserve_requests", "veloxserve_request_seconds"}
        yield from (family for family in self._workers.collect() if family.name in names)

    def render(self) -> bytes:
        return generate_latest(self.registry)
