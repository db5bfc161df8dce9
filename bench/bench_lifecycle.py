"""Lifecycle benchmark: local ALS vs Spark MLlib ALS, and time from drift to a new active version.

    .venv/bin/python bench/bench_lifecycle.py [--data ../shared/data/ml-100k] [--catify-ratings 1000000]
                                              [--master local[2]] [--skip-spark]
    .venv/bin/python bench/bench_lifecycle.py --quick   # small Catify worlds: checks the script runs

Prints one JSON document.
- Training: the same train/test split for both engines (ml-100k u1.base/u1.test when --data has
  it; a 90/10 split of Catify), train seconds and held-out RMSE of the served model (users
  re-solved with the prior, the way the server serves), and the local/Spark time ratio. Spark
  time includes its session start-up, reported separately.
- Drift: a model trained on one Catify world is served; observations then come from a world with
  other item factors (tastes the per-user weights cannot absorb). With a drift policy (Page-
  Hinkley), measured: observations and seconds from the first drifted observation to detection
  and to the new version being active, and the prequential RMSE (last 1,000) before the drift,
  just before the new version, and after it has served 2,000 drifted observations.
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

from veloxserve.serving.velox import Velox
from veloxserve.training.als import ALSConfig, train_als
from veloxserve.training.catify import generate_catify
from veloxserve.training.ratings import Ratings, load_ratings, split_holdout, write_ratings_parquet

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "ml-100k"


def local_vs_spark(name: str, train: Ratings, test: Ratings, config: ALSConfig, master: str | None) -> dict[str, Any]:
    train_als(train.take(np.arange(min(len(train), 1000))), config)  # compile the kernels first
    started = time.perf_counter()
    local = train_als(train, config, test)
    local_seconds = time.perf_counter() - started
    out: dict[str, Any] = {
        "data": name,
        "rows": len(train),
        "heldout_rows": len(test),
        "rank": config.rank,
        "local": {"train_seconds": round(local_seconds, 3), "heldout_rmse": round(local.heldout_rmse, 4)},
    }
    if master is None:
        return out
    from veloxserve.training.spark_als import fit_spark, spark_session

    with tempfile.TemporaryDirectory() as scratch:
        write_ratings_parquet(train, f"{scratch}/train.parquet")
        write_ratings_parquet(test, f"{scratch}/test.parquet")
        started = time.perf_counter()
        spark = spark_session(master)
        session_seconds = time.perf_counter() - started
        factors, _, _, info = fit_spark(spark, f"{scratch}/train.parquet", config, 0.1, f"{scratch}/test.parquet")
        spark_seconds = time.perf_counter() - started
    out["spark"] = {
        "master": master,
        "train_seconds": round(spark_seconds, 3),
        "session_start_seconds": round(session_seconds, 3),
        "heldout_rmse": round(factors.heldout_rmse, 4),
        "native_heldout_rmse": round(info["spark_native_heldout_rmse"], 4),
    }
    out["spark_over_local_time"] = round(spark_seconds / local_seconds, 2)
    return out


def drift_to_active(
    seed: int = 0,
    batch: int = 100,
    rate: float = 5_000.0,
    follow: int = 60_000,
    world: tuple[int, int, int] = (1000, 800, 100_000),
    give_up: int = 500_000,
) -> dict[str, Any]:
    """`world`: users, songs, ratings before the drift (0.6 of them after). `give_up`: drifted
    observations after which the measurement stops even if no retrain has ended."""
    users, songs, ratings = world
    before = generate_catify(users, songs, n_ratings=ratings, seed=seed)
    after = generate_catify(users, songs, n_ratings=int(0.6 * ratings), seed=seed + 1)  # other θ, same ids
    # The same rating scale after the drift: a version accepts only scores near its training range.
    scale = (float(before.ratings.scores.min()), float(before.ratings.scores.max()))
    drifted = Ratings(
        after.ratings.users, after.ratings.items, np.clip(after.ratings.scores, *scale), after.ratings.timestamps
    )
    config = ALSConfig(rank=8, reg=1.0, prior_precision=1.0, iterations=10)
    cut = int(0.8 * len(before.ratings))  # Catify drops duplicate (user, song) pairs: use fractions
    stream_before = before.ratings.take(np.arange(cut, len(before.ratings)))
    with tempfile.TemporaryDirectory() as home, Velox(home) as velox:
        velox.train("catify", before.ratings.take(np.arange(cut)), config)
        velox.set_policy("catify", {"drift": True, "promote": "if_better"})

        def feed(ratings: Ratings) -> None:
            for start in range(0, len(ratings), batch):
                velox.observe_many(
                    "catify",
                    list(
                        zip(
                            ratings.users[start : start + batch],
                            ratings.items[start : start + batch],
                            ratings.scores[start : start + batch].tolist(),
                        )
                    ),
                )

        def live_rmse() -> float | None:
            rmse = velox.server("catify").prequential.report()["windows"]["1000"]["rmse"]
            return None if rmse is None else round(rmse, 4)

        feed(stream_before.take(np.arange(min(10_000, len(stream_before)))))
        rmse_before = live_rmse()
        first_version = velox.server("catify").version_id
        jobs_before = velox.retrainer.job("catify")
        drift_started = time.perf_counter()
        detected_at = detected_seconds = rmse_at_swap = None
        sent, n_after = 0, len(drifted)
        while True:  # the drifted stream, paced at `rate` observations/s, until the retrain ends
            rows = np.arange(sent, sent + batch) % n_after
            feed(drifted.take(rows))
            sent += batch
            job = velox.retrainer.job("catify")
            if detected_at is None and job is not jobs_before:
                detected_at, detected_seconds = sent, time.perf_counter() - drift_started
            if velox.server("catify").version_id != first_version or (
                job is not jobs_before and job.state != "running"
            ):
                break
            if sent >= give_up:
                print(f"no retrain ended after {sent} drifted observations: stopping", file=sys.stderr)
                break
            rmse_at_swap = live_rmse()
            time.sleep(max(0.0, drift_started + sent / rate - time.perf_counter()))
        active_seconds, active_at = time.perf_counter() - drift_started, sent
        job = velox.retrainer.wait("catify")
        promoted = velox.server("catify").version_id != first_version
        feed(drifted.take(np.arange(sent, sent + 2000) % n_after))
        sent += 2000
        rmse_after_first = live_rmse()
        # Keep streaming: the detector watches the new version too, so drift retrains continue
        # until θ has caught up with the new world. Record every version change.
        timeline = [
            {
                "version": velox.server("catify").version_id,
                "seconds": round(time.perf_counter() - drift_started, 2),
                "observations": sent,
                "prequential_rmse_last_1000": rmse_after_first,
            }
        ]
        stop = sent + follow
        while sent < stop:
            feed(drifted.take(np.arange(sent, sent + batch) % n_after))
            sent += batch
            if velox.server("catify").version_id != timeline[-1]["version"]:
                timeline.append(
                    {
                        "version": velox.server("catify").version_id,
                        "observations": sent,
                        "seconds": round(time.perf_counter() - drift_started, 2),
                    }
                )
            time.sleep(max(0.0, drift_started + sent / rate - time.perf_counter()))
        velox.retrainer.wait("catify")
        feed(drifted.take(np.arange(sent, sent + 1000) % n_after))  # a full window on the last version
        sent += 1000
        timeline.append(
            {
                "end": True,
                "observations": sent,
                "prequential_rmse_last_1000": live_rmse(),
                "version": velox.server("catify").version_id,
            }
        )
        return {
            "stream_batch": batch,
            "stream_rate_per_s": rate,
            "drifted_observations_sent": sent,
            "prequential_rmse_last_1000": {
                "before_drift": rmse_before,
                "drifted_before_swap": rmse_at_swap,
                "after_swap_2000_more": rmse_after_first,
            },
            "timeline_after_first_swap": timeline,
            "drift_detected_after_observations": detected_at,
            "drift_detected_after_seconds": None if detected_seconds is None else round(detected_seconds, 3),
            "new_version_active_after_seconds": round(active_seconds, 3) if promoted else None,
            "new_version_active_after_observations": active_at if promoted else None,
            "first_retrain": None
            if job is None
            else {k: job.describe()[k] for k in ("version", "reason", "state", "detail", "seconds")},
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="MovieLens 100K directory (u1.base, u1.test)")
    parser.add_argument("--catify-ratings", type=int, default=1_000_000)
    parser.add_argument("--rank", type=int, default=10)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--skip-spark", action="store_true")
    parser.add_argument("--skip-training", action="store_true", help="only the drift measurement")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    if args.quick:  # no Spark (its session alone takes 20-90 s here; tests/training/test_spark_als.py runs it)
        args.catify_ratings, args.data, args.skip_spark = 20_000, Path("/nonexistent"), True
    master = None if args.skip_spark else args.master
    report: dict[str, Any] = {"training": []}
    if args.skip_training:
        pass
    elif (args.data / "u1.base").is_file():
        config = ALSConfig(rank=args.rank, iterations=8)
        report["training"].append(
            local_vs_spark(
                "ml-100k u1", load_ratings(args.data / "u1.base"), load_ratings(args.data / "u1.test"), config, master
            )
        )
    else:
        print(f"no MovieLens data at {args.data}; skipping it", file=sys.stderr)
    if not args.skip_training:
        users, songs = (500, 300) if args.quick else (20_000, 10_000)
        catify = generate_catify(users, songs, n_ratings=args.catify_ratings, seed=0)
        train, test = split_holdout(catify.ratings, 0.1, 0)
        report["training"].append(
            local_vs_spark(
                f"catify {len(catify.ratings)} ratings",
                train,
                test,
                ALSConfig(rank=8, reg=1.0, prior_precision=1.0),
                master,
            )
        )
        print(json.dumps(report["training"]), file=sys.stderr)  # keep the figures if the drift part fails
    report["drift"] = (
        drift_to_active(rate=50_000.0, follow=2_000, world=(300, 200, 20_000), give_up=20_000)
        if args.quick
        else drift_to_active()
    )
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
