"""Shared Basis (oracle-MTL) on documents: the seed's Fig. 1 and the 20 Newsgroups update-vs-retrain figure.

On a corpus of topic folders (--data DIR, the 20 Newsgroups "bydate" layout; a generated one
when no folder is given) with synthetic readers who each like a few topics (seeded):

(a) rmse_by_pool: held-out RMSE on documents no one rated in training (new items, scored from
    their text) of the MTL model (oracle-MTL, a Ridge per basis function over hashed n-grams),
    independent per-user ridge models over the same n-grams, and the hashed-text basis of
    training/content.py (ALS item vectors regressed on the n-grams), for pools of 10, 100 and
    1,000 users;
(b) cold_start_rmse: new users after 0, 1, 5, 10, 20 observations, MTL vs independent;
(c) update_ms (median online update of a user's ridge state over the served basis, the learning
    step alone; observe_durable_ms adds the durable log) and retrain_s (median retrain of the
    served oracle-MTL model from its base data and log);
(d) latency_us_by_cache and approximate_cache from bench_approximate_cache.measure (a sibling
    module; null with a note when it is not there).

Prints one JSON document. --quick for a short run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
from sklearn.linear_model import Ridge

from veloxserve.config import ServingConfig
from veloxserve.models.basis import BasisInputs
from veloxserve.models.content import HashedTextFeatures, text_vectorizer
from veloxserve.serving.velox import Velox
from veloxserve.training.als import ALSConfig, solve_users, train_als
from veloxserve.training.basis_trainer import BasisRecipe, train_basis_version
from veloxserve.training.content import fit_text_basis
from veloxserve.training.corpus import generate_corpus, read_corpus, topic_ratings
from veloxserve.training.oracle_mtl import IndexedRatings, OracleConfig, layout, solve_weights, train_oracle
from veloxserve.training.ratings import Ratings

POOLS = (10, 100, 1000)
COLD_OBSERVATIONS = (0, 1, 5, 10, 20)
NOISE = 0.3


def settings(quick: bool) -> dict[str, Any]:
    if quick:
        return {"topics": 10, "docs": 30, "buckets": 1 << 12, "k": 6, "iterations": 8, "per_user": 10, "cold_users": 60}
    return {"topics": 20, "docs": 100, "buckets": 1 << 15, "k": 10, "iterations": 8, "per_user": 10, "cold_users": 300}


class Corpus:
    """Documents split into the ones users rate in training and new ones, with their n-grams."""

    def __init__(self, directory: Path, buckets: int, seed: int) -> None:
        ids, topics, texts = read_corpus(directory)
        self.ids, self.texts = np.array(ids), list(texts)
        names, self.topic_of = np.unique(np.asarray(topics, dtype=str), return_inverse=True)
        self.topics = list(topics)
        self.n_topics = names.size
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(ids))
        n_new = max(1, len(ids) // 5)
        self.new, self.old = np.sort(order[:n_new]), np.sort(order[n_new:])
        self.design = text_vectorizer(buckets, 2).transform(self.texts)  # (n_docs, buckets), rows L2-normalised
        self.buckets = buckets


def readers(corpus: Corpus, n_users: int, per_user: int, seed: int) -> tuple[Ratings, IndexedRatings, np.ndarray]:
    """Training ratings (of old documents) of n_users synthetic readers, and their held-out
    ratings of 10 new documents each, as doc rows."""
    old_ids = corpus.ids[corpus.old]
    topics = [corpus.topics[i] for i in corpus.old]
    ratings, prefs = topic_ratings(old_ids, topics, n_users, per_user, seed=seed, grouped=True)
    rng = np.random.default_rng(seed + 1)
    n_test = min(10, corpus.new.size)
    docs = corpus.new[np.argsort(rng.random((n_users, corpus.new.size)), axis=1)[:, :n_test]].ravel()
    users = np.repeat(np.arange(n_users), n_test)
    scores = 3.0 + prefs[users, corpus.topic_of[docs]] + rng.normal(0.0, NOISE, size=docs.size)
    return ratings, IndexedRatings(users, docs, scores, n_users), prefs


def indexed(corpus: Corpus, ratings: Ratings) -> IndexedRatings:
    rows = np.searchsorted(corpus.ids, ratings.items)  # ids are sorted (read_corpus sorts them)
    users = np.char.lstrip(ratings.users, "u").astype(np.int64)
    return IndexedRatings(users, rows, ratings.scores, int(users.max()) + 1)


def rmse(pred: np.ndarray, truth: np.ndarray) -> float:
    return round(float(np.sqrt(np.mean((pred - truth) ** 2))), 4)


def mtl_fit(corpus: Corpus, train: IndexedRatings, k: int, iterations: int) -> tuple[np.ndarray, Any]:
    """Oracle-MTL over every document's n-grams: f(x) of every document (new ones too), and the fit."""
    config = OracleConfig(k=k, iterations=iterations, prior_precision=1.0)
    fitted = train_oracle(corpus.design, train, Ridge(alpha=1.0), config)
    return layout(fitted.raw, True), fitted


def independent(corpus: Corpus, train: IndexedRatings, test: IndexedRatings, alpha: float = 0.5) -> np.ndarray:
    """Each user's own ridge on the n-grams (dual form, with the user's mean as intercept);
    a user without data predicts the pool's mean."""
    pred = np.full(test.scores.size, float(train.scores.mean()) if train.scores.size else 3.0)
    by_user = np.argsort(train.users, kind="stable")
    bounds = np.searchsorted(train.users[by_user], np.arange(train.n_users + 1))
    test_order = np.argsort(test.users, kind="stable")
    test_bounds = np.searchsorted(test.users[test_order], np.arange(test.n_users + 1))
    for u in range(min(train.n_users, test.n_users)):  # benchmark baseline: one small solve per user
        rows = by_user[bounds[u] : bounds[u + 1]]
        targets = test_order[test_bounds[u] : test_bounds[u + 1]]
        if rows.size == 0 or targets.size == 0:
            continue
        X = corpus.design[train.items[rows]]
        y = train.scores[rows]
        mean = y.mean()
        K = (X @ X.T).toarray()
        coef = np.linalg.solve(K + alpha * np.eye(rows.size), y - mean)
        pred[targets] = mean + (corpus.design[test.items[targets]] @ X.T).toarray() @ coef
    return pred


def text_basis(corpus: Corpus, ratings: Ratings, test: IndexedRatings, k: int) -> np.ndarray:
    """training/content.py's basis: ALS, then ridge from n-grams onto the ALS item vectors; users
    solved against the text-derived features, new documents scored from their text."""
    config = ALSConfig(rank=k, iterations=6, heldout_fraction=0.0)
    factors = train_als(ratings, config)
    texts = {corpus.ids[i]: corpus.texts[i] for i in corpus.old}
    basis, _ = fit_text_basis(factors.arrays, texts, n_buckets=corpus.buckets, ngram_max=2)
    features = HashedTextFeatures(basis, factors.global_mean, ngram_max=2)
    F = features.transform(corpus.texts)
    arrays = factors.arrays
    users = solve_users(ratings, corpus.ids, F, arrays["prior_precision"], arrays["prior_mean"])
    W = users["user_weights"][np.searchsorted(users["user_ids"], np.char.add("u", test.users.astype(str)))]
    return np.einsum("ij,ij->i", W, F[test.items])


def by_pool(corpus: Corpus, s: dict[str, Any], seed: int) -> tuple[dict[str, Any], Any]:
    out: dict[str, Any] = {}
    biggest = None
    for n_users in POOLS:
        ratings, test, _ = readers(corpus, n_users, s["per_user"], seed)
        train = indexed(corpus, ratings)
        F, fitted = mtl_fit(corpus, train, s["k"], s["iterations"])
        mtl = np.einsum("ij,ij->i", fitted.weights[test.users], F[test.items])
        out[str(n_users)] = {
            "mtl": rmse(mtl, test.scores),
            "independent": rmse(independent(corpus, train, test), test.scores),
            "text_basis": rmse(text_basis(corpus, ratings, test, s["k"]), test.scores),
            "train_ratings": len(ratings),
            "heldout_ratings": int(test.scores.size),
        }
        biggest = (F, fitted)
    return out, biggest


def cold_start(corpus: Corpus, s: dict[str, Any], F: np.ndarray, fitted: Any, seed: int) -> dict[str, Any]:
    """New readers (not in the pool the basis was trained on) after n observations each."""
    ratings, test, _ = readers(corpus, s["cold_users"], max(COLD_OBSERVATIONS), seed + 100)
    full = indexed(corpus, ratings)
    out: dict[str, Any] = {}
    for n in COLD_OBSERVATIONS:
        keep = np.flatnonzero(np.tile(np.arange(max(COLD_OBSERVATIONS)), s["cold_users"]) < n)
        train = IndexedRatings(full.users[keep], full.items[keep], full.scores[keep], s["cold_users"])
        if n == 0:
            W = np.repeat(fitted.prior_mean[None, :], s["cold_users"], axis=0)
            pool_mean = 3.0 + float(np.mean(fitted.prior_mean @ F[corpus.old].T) - 3.0)
            indep = np.full(test.scores.size, pool_mean)
        else:
            W, _, _, _ = solve_weights(train, F, fitted.prior_mean, fitted.prior_precision)
            indep = independent(corpus, train, test)
        mtl = np.einsum("ij,ij->i", W[test.users], F[test.items])
        out[str(n)] = {"mtl": rmse(mtl, test.scores), "independent": rmse(indep, test.scores)}
    return out


def update_and_retrain(corpus: Corpus, s: dict[str, Any], quick: bool, seed: int) -> dict[str, Any]:
    """A served oracle-MTL model: the online update's median (state update alone, and durable
    observe), and the median retrain from base data + log."""
    home = Path(tempfile.mkdtemp(prefix="bench-mtl-"))
    try:
        ratings, _, _ = readers(corpus, 100, s["per_user"], seed)
        pacsv.write_csv(pa.table({"item": corpus.ids, "text": corpus.texts}), home / "docs.csv")
        recipe = BasisRecipe("oracle-mtl", BasisInputs(text="text", n_buckets=corpus.buckets), solver=Ridge(alpha=1.0))
        config = OracleConfig(k=s["k"], iterations=s["iterations"])
        with Velox(home / "home", config=ServingConfig(checkpoint_every=10**9, checkpoint_seconds=1e9)) as velox:
            meta = train_basis_version(
                velox.layout, "docs", ratings, items=home / "docs.csv", recipe=recipe, config=config
            )
            velox.activate("docs", meta["version"])
            server = velox.server("docs")
            table: Any = server.users  # the in-process UserTable (embedded backend)
            F = server.version.features.matrix
            rng = np.random.default_rng(seed)
            users = [f"u{u}" for u in range(100)]
            rows = [table.rows[u] for u in users]
            items = rng.integers(0, len(corpus.ids), size=1000)
            n = 300 if quick else 5000
            state = np.empty(n)
            for i in range(n):
                t0 = time.perf_counter_ns()
                table.observe(rows[i % 100], F, int(items[i % 1000]), 3.5)
                state[i] = time.perf_counter_ns() - t0
            durable = np.empty(n // 10)
            for i in range(durable.size):
                t0 = time.perf_counter_ns()
                velox.observe("docs", users[i % 100], str(corpus.ids[items[i]]), 3.5)
                durable[i] = time.perf_counter_ns() - t0
            retrains: list[float] = []
            for _ in range(1 if quick else 3):
                job = velox.retrain("docs", promote="always", wait=True)
                retrains.append(float(job.seconds or 0.0))
        update_ms = float(np.median(state)) / 1e6
        retrain_s = float(np.median(retrains))
        return {
            "update_ms": round(update_ms, 4),
            "observe_durable_ms": round(float(np.median(durable)) / 1e6, 3),
            "retrain_s": round(retrain_s, 3),
            "train_s": meta["train_seconds"],
            "retrain_over_update": round(retrain_s * 1e3 / update_ms) if update_ms > 0 else None,
            "served_k": meta["k"],
        }
    finally:
        shutil.rmtree(home, ignore_errors=True)


def approximate(corpus_dir: Path, quick: bool) -> dict[str, Any]:
    """bench_approximate_cache.measure, a sibling module (built on another branch; merged by the lead)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        from bench_approximate_cache import measure
    except ImportError as exc:
        return {
            "latency_us_by_cache": None,
            "approximate_cache": None,
            "approximate_note": f"bench/bench_approximate_cache.py not importable here: {exc}",
        }
    return measure(corpus_dir, quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="a folder of topic folders (20 Newsgroups bydate layout)")
    parser.add_argument("--quick", action="store_true", help="a small generated corpus and few repeats")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    s = settings(args.quick)
    scratch = Path(tempfile.mkdtemp(prefix="bench-mtl-corpus-"))
    try:
        if args.data is None:
            corpus_dir = generate_corpus(
                scratch / "corpus", topics=s["topics"], docs_per_topic=s["docs"], seed=args.seed
            )
        else:
            corpus_dir = args.data
        corpus = Corpus(corpus_dir, s["buckets"], args.seed)
        started = time.perf_counter()
        pools, (F, fitted) = by_pool(corpus, s, args.seed)
        result: dict[str, Any] = {
            "corpus": {
                "source": str(args.data) if args.data else "generated",
                "documents": len(corpus.ids),
                "topics": corpus.n_topics,
                "new_documents_heldout": int(corpus.new.size),
                "n_buckets": corpus.buckets,
            },
            "settings": {**s, "noise": NOISE, "quick": args.quick, "seed": args.seed},
            "rmse_by_pool": pools,
            "cold_start_rmse": cold_start(corpus, s, F, fitted, args.seed),
        }
        result.update(update_and_retrain(corpus, s, args.quick, args.seed))
        result.update(approximate(corpus_dir, args.quick))
        result["seconds"] = round(time.perf_counter() - started, 1)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
