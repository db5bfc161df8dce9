"""Approximate caching on documents: predict latency by cache level, and what coarsening costs in accuracy.

    .venv/bin/python bench/bench_approximate_cache.py [--data DIR] [--queries 10000]
    .venv/bin/python bench/bench_approximate_cache.py --quick   # a small generated corpus: checks it runs

The document model is the hashed-text content model (f(text) = hashed word 1-3-grams projected onto
a learned basis, models/content.py), trained in-process by Velox from synthetic readers who each
like a few topics (training/corpus.py's topic_ratings) over a folder of topic folders (--data, the
20 Newsgroups "bydate" layout; a generated corpus of that layout without it). The query stream is
a feed: documents drawn Zipf(1.1), users uniform, and half the queries a near-duplicate of the
document — the same text with 1-3 words replaced (a repost, an edited quote), never seen before
verbatim. Levels (the seed's Fig. 2, plus Clipper's approximate caching):

- none: f computed for every query (feature cache off);
- feature: the exact feature cache (64 MB);
- feature_and_prediction: plus a (user, text) -> score prediction cache in front;
- approximate: plus feature coarsening (ServingConfig.approximate_features): a near-duplicate's
  class (the LSH bucket of its word signature) answers f of the class's first text.

Accuracy: every query's target is the reader's noise-free expected rating (3 + preference for the
document's topic); rmse_increase is the RMSE of the approximate level's scores minus the exact
scores' RMSE against it. A sweep over LSH settings gives the accuracy–hit-rate trade-off.
`measure(corpus_dir, quick)` returns the figures (bench/bench_mtl.py imports it); main() prints JSON.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_core import latency  # noqa: E402

from veloxserve.config import ApproximateSettings, ServingConfig  # noqa: E402
from veloxserve.serving.velox import Velox  # noqa: E402
from veloxserve.training.als import ALSConfig  # noqa: E402
from veloxserve.training.corpus import generate_corpus, read_corpus, topic_ratings  # noqa: E402

MODEL = "docs"
CHOSEN = ApproximateSettings(tables=4, bits=16, radius=0.6, seed=0)  # the "approximate" level's setting
SWEEP = [
    ApproximateSettings(tables=1, bits=8, seed=0),
    ApproximateSettings(tables=1, bits=16, seed=0),
    ApproximateSettings(tables=4, bits=16, seed=0),
    CHOSEN,
    ApproximateSettings(tables=4, bits=24, seed=0),
    ApproximateSettings(tables=8, bits=8, radius=0.6, seed=0),
]
NEAR_SHARE = 0.5


def _stream(
    texts: list[str], topic_of: np.ndarray, prefs: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[list[str], list[str], np.ndarray, dict[str, float]]:
    """(users, query texts, targets, description): Zipf documents, half of them lightly edited."""
    weights = 1.0 / np.arange(1, len(texts) + 1) ** 1.1
    order = rng.permutation(len(texts))  # which documents are hot: not the first folder's
    docs = order[rng.choice(len(texts), n, p=weights / weights.sum())]
    users = rng.integers(0, prefs.shape[0], n)
    vocabulary = sorted({w for t in texts[:500] for w in t.split()})
    queries, edits = [], 0
    for d in docs:
        words = texts[d].split()
        if rng.random() < NEAR_SHARE and len(words) > 3:
            k = int(rng.integers(1, 4))
            for position in rng.choice(len(words), k, replace=False):
                words[position] = vocabulary[int(rng.integers(0, len(vocabulary)))]
            edits += 1
            queries.append(" ".join(words))
        else:
            queries.append(texts[d])
    targets = 3.0 + prefs[users, topic_of[docs]]
    described = {"queries": n, "near_duplicates": edits, "distinct_documents": int(np.unique(docs).size)}
    return [f"u{u}" for u in users], queries, targets, described


def _run(
    home: Path, config: ServingConfig, users: list[str], queries: list[str], prediction_cache: bool
) -> tuple[dict[str, float], np.ndarray, dict[str, Any]]:
    """Latency of every query through one cache level, the scores, and the feature cache's figures."""
    scores = np.empty(len(queries))
    with Velox(home, config=config) as velox:
        server = velox.server(MODEL)
        cached: dict[tuple[str, str], float] = {}

        def predict(i: int) -> None:
            key = (users[i], queries[i])
            if prediction_cache and key in cached:
                scores[i] = cached[key]
                return
            scores[i] = server.predict_text([key])[0]
            if prediction_cache:
                cached[key] = scores[i]

        timing = latency(predict, len(queries), warmup=0)
        stats = velox.feature_cache.stats().as_dict()
    return timing, scores, stats


def _rmse(scores: np.ndarray, targets: np.ndarray) -> float:
    return float(np.sqrt(np.mean((scores - targets) ** 2)))


def measure(corpus_dir: Path, quick: bool) -> dict[str, Any]:
    """Median and p99 predict latency (µs) by cache level, and the approximate cache's hit rate and
    RMSE increase, over the documents in `corpus_dir` (topic folders)."""
    rng = np.random.default_rng(0)
    doc_ids, topics, texts = read_corpus(corpus_dir)
    n_users, per_user, n_queries = (60, 60, 800) if quick else (400, 200, 6_000)  # ~40 ratings a document
    ratings, prefs = topic_ratings(doc_ids, topics, n_users, per_user, seed=0)
    _, topic_of = np.unique(np.asarray(topics, dtype=str), return_inverse=True)
    home = Path(tempfile.mkdtemp(prefix="bench-approximate-"))
    try:
        pq.write_table(pa.table({"item": doc_ids, "text": texts}), home / "docs.parquet")  # texts span lines
        started = time.perf_counter()
        with Velox(home) as velox:
            meta = velox.train(MODEL, ratings, ALSConfig(rank=8, iterations=6), items=home / "docs.parquet")
        train_s = time.perf_counter() - started
        users, queries, targets, described = _stream(texts, topic_of, prefs, n_queries, rng)
        exact_config, off = ServingConfig(), ServingConfig(feature_cache_bytes=0)
        levels: dict[str, tuple[ServingConfig, bool]] = {
            "none": (off, False),
            "feature": (exact_config, False),
            "feature_and_prediction": (exact_config, True),
            "approximate": (ServingConfig(approximate_features=CHOSEN), True),
        }
        timings, scores, stats = {}, {}, {}
        for name, (config, with_predictions) in levels.items():
            timings[name], scores[name], stats[name] = _run(home, config, users, queries, with_predictions)
        exact_rmse = _rmse(scores["none"], targets)
        sweep = []
        for settings in (SWEEP[:2] + SWEEP[3:4]) if quick else SWEEP:
            timing, approx, figures = _run(home, ServingConfig(approximate_features=settings), users, queries, False)
            sweep.append(_tradeoff(settings, timing, approx, figures, scores["none"], targets, exact_rmse))
        chosen = stats["approximate"]
        return {
            "approximate_setup": {
                "documents": len(texts),
                "topics": int(topic_of.max()) + 1,
                "users": n_users,
                "ratings": len(ratings),
                "words_per_document": round(float(np.mean([len(t.split()) for t in texts])), 1),
                "train_s": round(train_s, 2),
                "content": meta.get("content"),
                **described,
            },
            "latency_us_by_cache": {name: timing["median_us"] for name, timing in timings.items()},
            "latency_p99_us_by_cache": {name: timing["p99_us"] for name, timing in timings.items()},
            "approximate_cache": {
                "settings": CHOSEN.to_json(),
                "hit_rate": round(chosen["hit_rate"], 4),
                "approximate_hit_rate": round(chosen["approximate_hits"] / max(_lookups(chosen), 1), 4),
                "exact_feature_hit_rate": round(stats["feature"]["hit_rate"], 4),
                "rmse_exact": round(exact_rmse, 4),
                "rmse_increase": round(_rmse(scores["approximate"], targets) - exact_rmse, 4),
                "score_rmse_vs_exact": round(_rmse(scores["approximate"], scores["none"]), 4),
            },
            "approximate_tradeoff": sweep,
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _lookups(stats: dict[str, Any]) -> int:
    return int(stats["hits"] + stats["approximate_hits"] + stats["misses"])


def _tradeoff(
    settings: ApproximateSettings,
    timing: dict[str, float],
    approx: np.ndarray,
    figures: dict[str, Any],
    exact: np.ndarray,
    targets: np.ndarray,
    exact_rmse: float,
) -> dict[str, Any]:
    return {
        **{k: v for k, v in settings.to_json().items() if k in ("tables", "bits", "radius")},
        "hit_rate": round(figures["hit_rate"], 4),
        "approximate_hit_rate": round(figures["approximate_hits"] / max(_lookups(figures), 1), 4),
        "rmse_increase": round(_rmse(approx, targets) - exact_rmse, 4),
        "score_rmse_vs_exact": round(_rmse(approx, exact), 4),
        "median_us": timing["median_us"],
        "p99_us": timing["p99_us"],
    }


def _with_corpus(data: Path | None, quick: bool, run: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    if data is not None:
        return run(data)
    scratch = Path(tempfile.mkdtemp(prefix="bench-corpus-"))
    try:
        topics, per_topic = (5, 40) if quick else (20, 100)
        return {
            "corpus": f"generated: {topics} topics x {per_topic} documents",
            **run(generate_corpus(scratch, topics, per_topic, seed=0)),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a folder of topic folders of documents (20 Newsgroups bydate)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small generated corpus and stream, for tests/test_bench_scripts.py: its figures mean little",
    )
    args = parser.parse_args()
    print(json.dumps(_with_corpus(args.data, args.quick, lambda d: measure(d, args.quick)), indent=2))


if __name__ == "__main__":
    main()
