"""bench/scaleout_model.py: the deployment model's arithmetic against hand computations, and the
properties any such model must have (more of a resource never predicts less; costlier requests
never predict more)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from scaleout_model import Costs, Deployment, bounds, check, predict, project  # noqa: E402


def test_each_bound_is_the_hand_computed_one_and_the_least_is_predicted() -> None:
    # 2 processes on 4 cores over 1 shard, 200 µs in a server, 50 µs in Redis per request:
    # servers 2 x 1e6 / 200 = 10,000; redis 1 x 1e6 / 50 = 20,000; cores 4 x 1e6 / 250 = 16,000.
    found = bounds(Costs(200, 50), Deployment(processes=2, shards=1, cores=4))
    assert found == {"servers": 10_000, "redis": 20_000, "cores": 16_000}
    assert predict(Costs(200, 50), Deployment(2, 1, 4)) == (10_000, "servers")
    # 8 processes on 8 cores: servers 40,000, redis 20,000, cores 32,000: Redis bounds.
    assert predict(Costs(200, 50), Deployment(8, 1, 8)) == (20_000, "redis")
    # 4 processes on 2 cores: at most 2 busy at once; servers 10,000 = cores 2e6/200 (no Redis).
    assert bounds(Costs(200), Deployment(4, 0, 2)) == {"servers": 10_000, "redis": math.inf, "cores": 10_000}


def test_check_divides_measured_by_what_the_measured_costs_predict() -> None:
    measured = {
        "redis_1": {
            route: {"rps": 4000, "server_cpu_us_per_request": 400, "redis_cpu_us_per_request": 100}
            for route in ("predict", "observe")
        },
        "redis_cluster": {"unavailable": "not in this checkout"},
    }
    out = check(measured, {"redis_1": Deployment(1, 1, 2)}, ["predict", "observe"])
    # servers 1e6 / 400 = 2,500; redis 10,000; cores 2e6 / 500 = 4,000: 2,500, and 4000/2500 = 1.6.
    assert out == {
        "redis_1": {
            route: {"predicted_rps": 2500, "bound": "servers", "measured_rps": 4000, "measured_over_predicted": 1.6}
            for route in ("predict", "observe")
        }
    }


def test_projection_puts_one_process_on_each_core() -> None:
    assert project(Costs(100, 25), [1, 2, 16], shards=1) == {
        1: {"rps": 8000, "bound": "cores"},  # 1e6 / 125
        2: {"rps": 16000, "bound": "cores"},
        16: {"rps": 40000, "bound": "redis"},  # 1e6 / 25
    }


costs = st.builds(Costs, st.floats(1, 1e5), st.floats(0, 1e5))
deployments = st.builds(Deployment, st.integers(1, 64), st.integers(0, 16), st.integers(1, 64))


@given(costs, deployments, st.sampled_from(["processes", "shards", "cores"]), st.integers(1, 8))
def test_more_of_any_resource_never_predicts_less(c: Costs, d: Deployment, field: str, more: int) -> None:
    bigger = Deployment(**{**d.__dict__, field: getattr(d, field) + more})
    assert predict(c, bigger)[0] >= predict(c, d)[0]


@given(costs, deployments, st.floats(0, 1e4), st.floats(0, 1e4))
def test_costlier_requests_never_predict_more(c: Costs, d: Deployment, extra_server: float, extra_redis: float) -> None:
    costlier = Costs(c.server_us + extra_server, c.redis_us + extra_redis)
    assert predict(c, d)[0] >= predict(costlier, d)[0]
    assert predict(c, d)[0] <= d.cores * 1e6 / (c.server_us + c.redis_us)  # never more than the cores allow
