"""What monitoring costs: the request path with and without the sketches, the drift detectors per
value (ours compiled, river's from Python), and reading the alerts.

    .venv/bin/python bench/bench_monitoring.py [--users 2000] [--items 2000] [--calls 20000]
    .venv/bin/python bench/bench_monitoring.py --quick   # small sizes: checks the script runs

The model is trained on Catify (rank 8, 20 ratings per user), so its version holds a training
reference; queries are in-process
`ModelServer.predict` (one pair) and `predict_many` (batches of 100), as the HTTP handlers make
them. "off" swaps the server's monitor for one whose methods do nothing, in the same process, so
the difference is the monitoring's own cost; on and off alternate over 5 rounds and the least
disturbed round of each is reported (the median of its calls). Detectors are fed squared N(0, 1) errors: ours in
batches of 100, river's one value per call. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import latency  # noqa: E402

from veloxserve.config import ServingConfig  # noqa: E402
from veloxserve.serving.drift import make_detector  # noqa: E402
from veloxserve.serving.velox import Velox  # noqa: E402
from veloxserve.training.als import ALSConfig  # noqa: E402
from veloxserve.training.catify import generate_catify  # noqa: E402

ROUNDS = 5


class _Off:
    """A monitor that records nothing."""

    def served(self, *args: Any) -> None: ...

    def served_one(self, *args: Any) -> None: ...

    def new_users(self, *args: Any) -> None: ...

    def named_items(self, *args: Any) -> None: ...

    def errors(self, *args: Any) -> None: ...


def _request_path(users: int, items: int, calls: int) -> dict[str, Any]:
    ratings = generate_catify(users, items, rank=8, n_ratings=users * 20, seed=0).ratings
    train_users, train_items = ratings.users, ratings.items
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        with Velox(Path(tmp), config=ServingConfig(fsync=False)) as velox:
            velox.train("songs", ratings, ALSConfig(rank=8, iterations=3, heldout_fraction=0.0))
            server = velox.server("songs")
            rng = np.random.default_rng(0)
            picks = rng.integers(0, train_users.size, (calls, 100))
            pairs = [(str(train_users[i]), str(train_items[i])) for i in picks[:, 0]]
            batches = [list(zip(train_users[p].tolist(), train_items[p].tolist())) for p in picks[: calls // 20]]
            monitor = server.monitor
            rounds: dict[str, list[dict[str, float]]] = {}
            for _ in range(ROUNDS):  # on and off interleaved, so a busy machine slows both alike
                for state, mon in (("on", monitor), ("off", _Off())):
                    server.monitor = mon  # type: ignore[assignment]
                    rounds.setdefault(f"predict_{state}", []).append(
                        latency(lambda i: server.predict(*pairs[i]), calls // ROUNDS)
                    )
                    rounds.setdefault(f"predict_many_100_{state}", []).append(
                        latency(lambda i: server.predict_many(batches[i]), len(batches))
                    )
            server.monitor = monitor
            for key, runs in rounds.items():  # the least disturbed round of each
                out[key] = min(runs, key=lambda r: r["median_us"])
            for key in ("predict", "predict_many_100"):
                on, off = out[f"{key}_on"]["median_us"], out[f"{key}_off"]["median_us"]
                out[f"{key}_overhead_us"] = round(on - off, 2)
                out[f"{key}_overhead_percent"] = round(100 * (on - off) / off, 1)
            started = time.perf_counter()
            report = velox.alerts("songs")
            out["alerts_read_ms"] = round((time.perf_counter() - started) * 1e3, 2)
            out["alerts_on_a_clean_stream"] = [a["alert"] for a in report["alerts"]]
    return out


def _detectors(values: int) -> dict[str, Any]:
    from river import drift

    errors = np.random.default_rng(1).normal(size=values) ** 2
    rivers = {
        "page_hinkley": lambda: drift.PageHinkley(threshold=100.0, delta=0.2, mode="up"),
        "adwin": drift.ADWIN,
        "ddm": drift.binary.DDM,
        "kswin": lambda: drift.KSWIN(alpha=1e-4, window_size=500, stat_size=100, seed=1),
    }
    settings = {"page_hinkley": {"threshold": 100.0, "delta": 0.2}, "adwin": {}, "ddm": {"miss": 1.0}}
    settings["kswin"] = {"alpha": 1e-4, "window_size": 500, "stat_size": 100, "every": 50}
    out: dict[str, Any] = {}
    for name, make_river in rivers.items():
        ours = make_detector(name, **settings[name])
        ours.update(errors[:200])  # compiled on first use
        started = time.perf_counter()
        for start in range(0, values, 100):
            ours.update(errors[start : start + 100])
        ours_ns = (time.perf_counter() - started) / values * 1e9
        theirs = make_river()
        feed = (errors > 1.0).astype(float).tolist() if name == "ddm" else errors.tolist()
        n_river = min(values, 2_000) if name == "kswin" else values  # river's KSWIN: scipy per value
        started = time.perf_counter()
        for x in feed[:n_river]:
            theirs.update(x)
        out[name] = {
            "ours_ns_per_value": round(ours_ns, 1),
            "river_ns_per_value": round((time.perf_counter() - started) / n_river * 1e9, 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--values", type=int, default=200_000, help="errors fed to each detector")
    parser.add_argument("--quick", action="store_true", help="small sizes: checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.users, args.items, args.calls, args.values = 100, 100, 400, 2_000
    result = {
        "settings": {k: getattr(args, k) for k in ("users", "items", "calls", "values", "quick")},
        "request_path": _request_path(args.users, args.items, args.calls),
        "detectors": _detectors(args.values),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
