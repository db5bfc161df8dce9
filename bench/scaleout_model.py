"""A model of a deployment (server processes x Redis shards on a number of cores) that predicts
throughput from the CPU each request costs, as bench/bench_scaleout.py measures it.

A request costs `server_us` of some server process's CPU and `redis_us` of some Redis shard's
(one thread each). On `cores` cores the throughput is bounded three ways:

    servers: min(processes, cores) * 1e6 / server_us   (a process is at most one core busy)
    redis:   min(shards, cores)    * 1e6 / redis_us    (a shard is one thread)
    cores:   cores * 1e6 / (server_us + redis_us)      (everything shares the machine)

and the prediction is the least of them. The load generator's own CPU is not in the costs: on
the benchmark machine it shares the cores, so measured/predicted < 1 says how much it took.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Costs:
    """CPU-µs per request: in the server processes, and in Redis (0 when state is in process)."""

    server_us: float
    redis_us: float = 0.0


@dataclass(frozen=True)
class Deployment:
    processes: int
    shards: int  # Redis shards (0: embedded, no Redis)
    cores: int


def bounds(costs: Costs, deployment: Deployment) -> dict[str, float]:
    """Requests/s each resource allows (math.inf when a resource costs nothing)."""

    def limit(units: int, us: float) -> float:
        return units * 1e6 / us if us > 0 else math.inf

    cores = deployment.cores
    return {
        "servers": limit(min(deployment.processes, cores), costs.server_us),
        "redis": limit(min(deployment.shards, cores), costs.redis_us),
        "cores": limit(cores, costs.server_us + costs.redis_us),
    }


def predict(costs: Costs, deployment: Deployment) -> tuple[float, str]:
    """Predicted requests/s and the resource that bounds them."""
    found = bounds(costs, deployment)
    bound = min(found, key=found.__getitem__)
    return found[bound], bound


def check(
    configurations: Mapping[str, Any], deployments: Mapping[str, Deployment], routes: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Per measured configuration and route: the rps predicted from its own measured costs, the
    measured rps, and measured / predicted."""
    out: dict[str, dict[str, Any]] = {}
    for name, measured in configurations.items():
        if "unavailable" in measured or name not in deployments:
            continue
        for route in routes:
            m = measured[route]
            rps, bound = predict(
                Costs(m["server_cpu_us_per_request"], m["redis_cpu_us_per_request"]), deployments[name]
            )
            out.setdefault(name, {})[route] = {
                "predicted_rps": round(rps),
                "bound": bound,
                "measured_rps": m["rps"],
                "measured_over_predicted": round(m["rps"] / rps, 2),
            }
    return out


def project(costs: Costs, cores: Iterable[int], shards: int) -> dict[int, dict[str, Any]]:
    """Requests/s with one server process per core over `shards` Redis shards."""
    out = {}
    for n in cores:
        rps, bound = predict(costs, Deployment(processes=n, shards=shards, cores=n))
        out[n] = {"rps": round(rps), "bound": bound}
    return out
