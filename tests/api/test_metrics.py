"""Prometheus metrics: what the hot path records is what a scrape reads."""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from veloxserve.api.metrics import Metrics
from veloxserve.serving.velox import Velox

_REQUESTS = st.lists(
    st.tuples(st.sampled_from(["predict", "top_k", "observe"]), st.sampled_from([200, 400, 404]), st.floats(0.0, 2.0)),
    max_size=40,
)


def _samples(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@settings(max_examples=30, deadline=None)
@given(requests=_REQUESTS)
def test_recorded_requests_are_counted_per_route_and_status_and_timed_per_route(requests) -> None:
    with tempfile.TemporaryDirectory() as tmp, Velox(Path(tmp)) as velox:
        metrics = Metrics(velox)
        for route, status, seconds in requests:
            metrics.record(route, status, seconds)
        samples = _samples(metrics)
    for (route, status), n in Counter((r, s) for r, s, _ in requests).items():
        assert samples[("veloxserve_requests_total", (("route", route), ("status", str(status))))] == n
    for route in {r for r, _, _ in requests}:
        times = [t for r, _, t in requests if r == route]
        assert samples[("veloxserve_request_seconds_count", (("route", route),))] == len(times)
        assert abs(samples[("veloxserve_request_seconds_sum", (("route", route),))] - sum(times)) < 1e-9
        slow = sum(t > 1.0 for t in times)  # the top finite bucket is 1 s
        assert samples[("veloxserve_request_seconds_bucket", (("le", "1.0"), ("route", route)))] == len(times) - slow
