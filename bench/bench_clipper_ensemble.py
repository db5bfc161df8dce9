"""Ensemble accuracy vs the best single model, with feedback arriving online.

    .venv/bin/python -m bench.bench_clipper_ensemble [--dataset digits|breast_cancer]

Four scikit-learn classifiers (logistic regression, Gaussian naive Bayes, a depth-limited tree,
3-nearest neighbours), each trained on its own small slice of the training half so that they are
imperfect and differ, run in containers and answer class probabilities (predict_proba). The other
half arrives as a stream: every query is predicted by each single model and by the Exp3, Exp4 and
personalised applications, then its label is observed (prequential accuracy: predicted before
learned). Prints one JSON document (also bench/results/clipper_ensemble_<dataset>.json).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/x.py` as well as `-m bench.x`

from bench.clipper_load import run, write_report  # noqa: E402
from veloxserve.clipper import ClipperRuntime  # noqa: E402

POLICIES = ("exp3", "exp4", "personalised")


async def stream(args: argparse.Namespace) -> dict:
    X, y = (load_digits if args.dataset == "digits" else load_breast_cancer)(return_X_y=True)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    train, stream = order[: len(y) // 2], order[len(y) // 2 :]
    slices = np.array_split(rng.permutation(train)[: 4 * args.slice], 4)
    models = {
        "logistic": make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)),
        "naive_bayes": GaussianNB(),
        "tree": DecisionTreeClassifier(max_depth=6, random_state=0),
        "knn": KNeighborsClassifier(n_neighbors=3),
    }
    tmp = Path(tempfile.mkdtemp(prefix="clipper-ensemble-"))
    runtime = ClipperRuntime(tmp / "home", model_dirs=[tmp])
    await runtime.start()
    try:
        for (name, model), rows in zip(models.items(), slices):
            model.fit(X[rows], y[rows])
            joblib.dump(model, tmp / f"{name}.joblib")
            await runtime.deploy(name, "sklearn", tmp / f"{name}.joblib", method="predict_proba")
        for name in models:
            await runtime.create_app(f"only-{name}", [name], objective_ms=10_000)
        for policy in POLICIES:
            await runtime.create_app(policy, list(models), policy=policy, objective_ms=10_000, loss="zero_one")
        correct = {name: 0 for name in [*models, *POLICIES]}
        curve = []
        for step, row in enumerate(stream[: args.stream]):
            x, label = X[row], int(y[row])
            for name in models:
                output = (await runtime.predict(f"only-{name}", "user", x))["output"]
                correct[name] += int(np.argmax(output)) == label
            for policy in POLICIES:
                output = (await runtime.predict(policy, "user", x))["output"]
                correct[policy] += int(np.argmax(output)) == label
                await runtime.observe(policy, "user", x, label)
            if (step + 1) % 100 == 0:
                curve.append({"seen": step + 1, **{k: round(v / (step + 1), 4) for k, v in correct.items()}})
        n = len(stream[: args.stream])
        accuracy = {k: round(v / n, 4) for k, v in correct.items()}
        best = max(models, key=lambda m: accuracy[m])
        return {
            "dataset": args.dataset,
            "stream": n,
            "train_rows_per_model": args.slice,
            "accuracy": accuracy,
            "best_single_model": best,
            "gain_over_best_single": {p: round(accuracy[p] - accuracy[best], 4) for p in POLICIES},
            "final_state": {p: runtime.app(p).policy.describe() for p in ("exp3", "exp4")},
            "personalised_weights": runtime.app("personalised").policy.user_weights("user").round(3).tolist(),
            "curve": curve,
        }
    finally:
        await runtime.close()
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", choices=["digits", "breast_cancer"], default="digits")
    parser.add_argument("--slice", type=int, default=60, help="training rows per model (default 60)")
    parser.add_argument("--stream", type=int, default=None, help="stream only this many rows (default: the other half)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the smallest setting, for tests/test_bench_scripts.py: its figures mean nothing",
    )
    args = parser.parse_args()
    if args.quick:
        args.stream = 30
    report = run(stream(args))
    write_report(f"clipper_ensemble_{args.dataset}", report, keep=not args.quick)


if __name__ == "__main__":
    main()
