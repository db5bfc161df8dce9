"""Feature cache and prediction cache: do they pay, and by how much?

    .venv/bin/python bench/bench_features.py [--users 2000] [--songs 3000] [--queries 20000]
    .venv/bin/python bench/bench_features.py --quick   # 100 users, 200 songs: checks the script runs

Catify with song descriptions; the model is trained with content features (hashed word 1-3-grams
projected onto a learned basis), so a song can be scored from its text alone. Queries are
in-process `predict_text` calls, as the HTTP layer makes them: users uniform, documents drawn
Zipf(1.1) from 1,000 texts (a feed: a few documents are hot). Compared in the same run:

- feature cache on (64 MB) vs off: per-query latency, and the batch case "one new document
  scored for 100 users";
- the prediction cache the issue asks to evaluate, a (user, item) -> score map invalidated when
  the user's weights change (a per-user generation bumped by every observation, so an answer is
  never stale), on top of the catalogue path and on top of the feature-cached text path, with 10%
  of the stream being observations.

Prints one JSON document: medians and p99 in microseconds, hit rates, ratios.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import latency  # noqa: E402

from veloxserve.config import ServingConfig  # noqa: E402
from veloxserve.serving.velox import Velox  # noqa: E402
from veloxserve.training.als import ALSConfig  # noqa: E402
from veloxserve.training.catify import catify_items, generate_catify  # noqa: E402


class PredictionCache:
    """The candidate measured here: scores keyed by (user, item, user generation)."""

    def __init__(self) -> None:
        self.scores: dict[tuple[str, str, int], float] = {}
        self.generation: dict[str, int] = {}
        self.hits = self.lookups = 0

    def get(self, user: str, item: str, compute) -> float:
        key = (user, item, self.generation.get(user, 0))
        self.lookups += 1
        score = self.scores.get(key)
        if score is None:
            score = self.scores[key] = compute()
        else:
            self.hits += 1
        return score

    def invalidate(self, user: str) -> None:
        self.generation[user] = self.generation.get(user, 0) + 1


def zipf_draws(n: int, size: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1) ** exponent
    return rng.choice(size, n, p=weights / weights.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--songs", type=int, default=3000)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.users, args.songs, args.queries = 100, 200, 300
    rng = np.random.default_rng(args.seed)
    data = generate_catify(n_users=args.users, n_items=args.songs, rank=8, n_ratings=40 * args.users, seed=args.seed)
    items = catify_items(data, seed=args.seed)
    home = Path(tempfile.mkdtemp(prefix="bench-features-"))
    pacsv.write_csv(pa.table(items), home / "songs.csv")
    with Velox(home) as velox:
        meta = velox.train(
            "songs",
            data.ratings,
            ALSConfig(rank=8, reg=1.0, prior_precision=1.0, iterations=8),
            items=home / "songs.csv",
        )
        velox_catalogue = velox.server("songs").version.catalog.externals(np.arange(meta["n_items"]))
    documents = items["text"][:1000]
    users = rng.integers(0, args.users, args.queries).astype(str).tolist()
    doc_stream = [documents[d] for d in zipf_draws(args.queries, len(documents), 1.1, rng)]
    catalogue = np.array(velox_catalogue, dtype=str)
    item_stream = catalogue[zipf_draws(args.queries, catalogue.size, 1.1, rng)].tolist()
    result = {
        "data": {
            "users": args.users,
            "songs": args.songs,
            "ratings": len(data.ratings),
            "rank": 8,
            "content": meta["content"],
            "queries": args.queries,
            "words_per_text": float(np.mean([len(t.split()) for t in documents])),
        }
    }

    for label, cache_bytes in (("feature_cache_off", 0), ("feature_cache_on", 64 << 20)):
        with Velox(home, config=ServingConfig(feature_cache_bytes=cache_bytes)) as velox:
            server = velox.server("songs")
            one = latency(lambda i: server.predict_text([(users[i], doc_stream[i])]), args.queries, warmup=0)
            hit_rate = velox.feature_cache.stats().hit_rate
            batch = latency(
                lambda i: server.predict_text([(str(u), documents[i % len(documents)]) for u in range(100)]),
                min(300, args.queries),
                warmup=0,
            )
            result[label] = {"predict_text": one, "one_document_100_users": batch, "hit_rate": round(hit_rate, 4)}
    off, on = result["feature_cache_off"], result["feature_cache_on"]
    result["feature_cache_speedup_median"] = round(
        off["predict_text"]["median_us"] / on["predict_text"]["median_us"], 1
    )
    result["feature_cache_speedup_p99"] = round(off["predict_text"]["p99_us"] / on["predict_text"]["p99_us"], 1)

    with Velox(home) as velox:
        server = velox.server("songs")
        observe_at = set(rng.choice(args.queries, args.queries // 10, replace=False).tolist())

        def stream(predict):
            def step(i: int) -> None:
                if i in observe_at:
                    server.observe_many([(users[i], item_stream[i], 4.0)])
                    cache.invalidate(users[i])
                else:
                    predict(i)

            return step

        cache = PredictionCache()
        catalogue_plain = latency(stream(lambda i: server.predict(users[i], item_stream[i])), args.queries, 0)
        catalogue_cached = latency(
            stream(lambda i: cache.get(users[i], item_stream[i], lambda: server.predict(users[i], item_stream[i]))),
            args.queries,
            0,
        )
        catalogue_hits = cache.hits / max(cache.lookups, 1)
        cache = PredictionCache()
        text_plain = latency(stream(lambda i: server.predict_text([(users[i], doc_stream[i])])), args.queries, 0)
        text_cached = latency(
            stream(
                lambda i: cache.get(users[i], doc_stream[i], lambda: server.predict_text([(users[i], doc_stream[i])]))
            ),
            args.queries,
            0,
        )
        result["prediction_cache"] = {
            "note": "medians over a stream of which 10% are observations (those also timed)",
            "catalogue_item": {
                "without": catalogue_plain,
                "with": catalogue_cached,
                "hit_rate": round(catalogue_hits, 4),
            },
            "text_with_feature_cache": {
                "without": text_plain,
                "with": text_cached,
                "hit_rate": round(cache.hits / max(cache.lookups, 1), 4),
            },
        }
    shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
