"""Exploration on a simulated Catify stream: cumulative regret per policy, and an IPS check.

    .venv/bin/python bench/bench_exploration.py [--rounds 5000] [--out bench/results/regret.png]
    .venv/bin/python bench/bench_exploration.py --quick   # 200 rounds: checks the script runs

A model is trained on a thin slice of a Catify world (so it starts biased by what it has seen);
then users arrive at random, each policy recommends one song through `Velox.recommend` (the
served path: index or exact scoring, decision logged with propensities), the simulated user rates
it (true preference + noise) and the rating goes back through `observe` with the decision id.
Regret = the user's best true rating − the true rating of the song served. Each policy runs on
its own copy of the same model and the same arrival sequence. Then the epsilon-greedy run's logs
estimate (IPS, SNIPS) the value of the uniform-random policy, compared with its true value.
Writes a PNG of the regret curves (with matplotlib, from the bench extra) and prints JSON.
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

from veloxserve.config import ServingConfig
from veloxserve.serving.velox import Velox
from veloxserve.storage.decision_log import read_decisions
from veloxserve.storage.observation_log import read_log
from veloxserve.training.als import ALSConfig
from veloxserve.training.catify import generate_catify
from veloxserve.training.offpolicy import ips_estimate

POLICIES = {
    "greedy": {"policy": "greedy"},
    "epsilon_greedy(0.1)": {"policy": "epsilon_greedy", "epsilon": 0.1},
    "linucb(0.5)": {"policy": "linucb", "alpha": 0.5},
    "thompson(0.5)": {"policy": "thompson", "alpha": 0.5},
}


def run(policy: dict[str, Any], world, train, arrivals: np.ndarray, noise_draws: np.ndarray) -> dict[str, Any]:
    expected = world.expected  # true mean rating of (users, items)
    items = np.arange(world.item_factors.shape[0]).astype(str)
    with tempfile.TemporaryDirectory() as home, Velox(home, config=ServingConfig(fsync=False)) as velox:
        velox.train("catify", train, ALSConfig(rank=8, reg=1.0, prior_precision=1.0, iterations=10))
        regret = np.empty(len(arrivals))
        started = time.perf_counter()
        for t, user in enumerate(arrivals):
            rec = velox.recommend("catify", str(user), 1, **policy)
            item = int(rec.items[0])
            truth = expected(np.full(len(items), user), np.arange(len(items)))
            regret[t] = truth.max() - truth[item]
            velox.observe("catify", str(user), item, float(truth[item] + noise_draws[t]), decision=rec.decision)
        seconds = time.perf_counter() - started
        velox.close()
        out = {"cumulative_regret": regret.cumsum(), "seconds_per_round": seconds / len(arrivals)}
        if policy.get("policy") == "epsilon_greedy":
            decisions = list(read_decisions(Path(home) / "models" / "catify" / "decisions"))
            observations = list(read_log(Path(home) / "models" / "catify" / "log"))
            n_items = len(items)
            estimate = ips_estimate(decisions, observations, lambda d, slot, item: 1.0 / n_items)
            true_uniform = float(np.mean([expected(np.full(n_items, u), np.arange(n_items)).mean() for u in arrivals]))
            out["ips_of_uniform_policy"] = {**estimate, "true_value": round(true_uniform, 4)}
        return out


def plot(results: dict[str, dict[str, Any]], rounds: int, out: Path) -> str:
    """The regret curves as a PNG; where it is, or why there is none."""
    try:
        import matplotlib
    except ImportError:
        return "skipped: matplotlib not installed (.venv/bin/pip install -e '.[bench]')"
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, result in results.items():
        ax.plot(result["cumulative_regret"], label=name)
    ax.set_xlabel("round (one recommendation, one rating)")
    ax.set_ylabel("cumulative regret (true rating points)")
    ax.set_title(f"Catify, 300 users × 400 songs, {rounds} rounds")
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    return str(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=None, help="the PNG (default bench/results/regret.png)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.rounds = 200
    if args.out is None:  # a quick run does not replace the figure docs/benchmarks.md shows
        results_dir = Path(tempfile.mkdtemp()) if args.quick else Path(__file__).resolve().parent / "results"
        args.out = results_dir / "regret.png"
    world = generate_catify(300, 400, n_ratings=3000, seed=3)  # thin history: the model starts biased
    rng = np.random.default_rng(0)
    arrivals = rng.integers(0, 300, size=args.rounds)
    noise = rng.normal(scale=world.noise, size=args.rounds)
    results = {name: run(policy, world, world.ratings, arrivals, noise) for name, policy in POLICIES.items()}

    report = {
        "rounds": args.rounds,
        "plot": plot(results, args.rounds, args.out),
        "policies": {
            name: {
                "cumulative_regret": round(float(r["cumulative_regret"][-1]), 1),
                "regret_last_1000_rounds": round(float(r["cumulative_regret"][-1] - r["cumulative_regret"][-1001]), 1)
                if args.rounds > 1000
                else None,
                "ms_per_round": round(1e3 * r["seconds_per_round"], 3),
                **({"ips_of_uniform_policy": r["ips_of_uniform_policy"]} if "ips_of_uniform_policy" in r else {}),
            }
            for name, r in results.items()
        },
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
