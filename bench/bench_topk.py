"""Top-k over a large catalogue: exact scoring vs MIPS indexes, latency and recall@k.

    .venv/bin/python bench/bench_topk.py [--items 1000000] [--rank 64] [--k 100] [--queries 200]
    .venv/bin/python bench/bench_topk.py --quick   # 5,000 items: checks the script runs

Synthetic items with realistic low-rank structure (a decaying spectrum, popularity in the norms,
a bias column like f(x) = [v_x, μ + b_x, 1]); queries are user-like weight vectors. Compared on
the same vectors and queries: exact (one matrix-vector product and a partial sort, what
ModelServer does below the index threshold), FAISS HNSW over the MIPS-to-L2 reduction (what the
server uses), hnswlib HNSW over the same reduction, and hnswlib on raw inner product. Every
index's candidates are re-scored exactly, as the server does. Prints JSON. hnswlib comes with the
bench extra (`.venv/bin/pip install -e '.[bench]'`); without it its figures are reported as skipped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from veloxserve.serving.item_index import ItemIndex


def synthetic(
    n_items: int, rank: int, n_queries: int, seed: int = 0, clusters: int = 1000
) -> tuple[np.ndarray, np.ndarray]:
    """Item vectors like trained MF factors: a decaying spectrum (singular values ∝ 1/(1+i)),
    items grouped around `clusters` genre-like centres, popularity in the norms, then the
    baseline columns [μ + b_x, 1]. Queries are user weights from the same spectrum."""
    rng = np.random.default_rng(seed)
    spectrum = 1.0 / (1.0 + np.arange(rank - 2))
    centres = rng.normal(size=(clusters, rank - 2))
    members = rng.integers(0, clusters, size=n_items)
    popularity = rng.lognormal(0.0, 0.3, size=(n_items, 1))
    V = (centres[members] + 0.5 * rng.normal(size=(n_items, rank - 2))) * spectrum * popularity
    F = np.column_stack([V, 3.5 + rng.normal(scale=0.4, size=n_items), np.ones(n_items)])
    W = np.column_stack(
        [
            rng.normal(size=(n_queries, rank - 2)) * spectrum * 3,
            np.ones(n_queries),
            rng.normal(scale=0.2, size=n_queries),
        ]
    )
    return F, W


def exact_top(F: np.ndarray, w: np.ndarray, k: int) -> np.ndarray:
    scores = F @ w
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top])]


def rescored(F: np.ndarray, w: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    scores = F[rows] @ w
    order = np.argsort(-scores)[:k]
    return rows[order]


def timed(fn: Callable[[int], np.ndarray], n: int) -> tuple[dict[str, float], list[np.ndarray]]:
    fn(0)
    samples, results = np.empty(n), []
    for i in range(n):
        t0 = time.perf_counter_ns()
        results.append(fn(i))
        samples[i] = time.perf_counter_ns() - t0
    return {
        "median_ms": round(float(np.median(samples)) / 1e6, 3),
        "p99_ms": round(float(np.percentile(samples, 99)) / 1e6, 3),
    }, results


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return round(float(np.mean([len(np.intersect1d(a, b)) / len(b) for a, b in zip(found, truth)])), 4)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--rank", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--skip-hnswlib", action="store_true")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.items, args.rank, args.k, args.queries, args.ef = 5000, 16, 10, 20, [50]
    F, W = synthetic(args.items, args.rank, args.queries)
    k = args.k
    report: dict[str, Any] = {"items": args.items, "rank": args.rank, "k": k, "queries": args.queries}
    exact_latency, truth = timed(lambda i: exact_top(F, W[i], k), args.queries)
    report["exact"] = exact_latency

    index = ItemIndex(F)
    report["faiss_hnsw_mips_l2"] = {"build_seconds": round(index.build_seconds, 1), "by_ef": {}}
    for ef in args.ef:
        latency, found = timed(lambda i: rescored(F, W[i], index.candidates(W[i], k, ef), k), args.queries)
        report["faiss_hnsw_mips_l2"]["by_ef"][str(ef)] = {**latency, "recall_at_k": recall(found, truth)}
    print(json.dumps(report), file=sys.stderr)  # keep what we have if hnswlib fails

    if not args.skip_hnswlib and importlib.util.find_spec("hnswlib") is None:
        report["hnswlib"] = "skipped: not installed (.venv/bin/pip install -e '.[bench]')"
    elif not args.skip_hnswlib:
        import hnswlib

        norms2 = np.einsum("ij,ij->i", F, F)
        augmented = np.column_stack([F, np.sqrt(norms2.max() - norms2)]).astype(np.float32)
        for name, space, data in (("hnswlib_mips_l2", "l2", augmented), ("hnswlib_raw_ip", "ip", F.astype(np.float32))):
            started = time.perf_counter()
            graph = hnswlib.Index(space=space, dim=data.shape[1])
            graph.init_index(max_elements=len(data), M=32, ef_construction=200)
            graph.add_items(data)
            entry: dict[str, Any] = {"build_seconds": round(time.perf_counter() - started, 1), "by_ef": {}}
            pad = 1 if space == "l2" else 0
            for ef in args.ef:
                graph.set_ef(max(ef, k))

                def query(i: int, graph=graph, pad=pad) -> np.ndarray:
                    q = np.concatenate([W[i], np.zeros(pad)]).astype(np.float32)
                    rows, _ = graph.knn_query(q, k=k)
                    return rescored(F, W[i], rows[0].astype(np.int64), k)

                latency, found = timed(query, args.queries)
                entry["by_ef"][str(ef)] = {**latency, "recall_at_k": recall(found, truth)}
            report[name] = entry
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
