"""The Clipper tour's model files: two logistic regressions and a random forest on scikit-learn's digits.

    .venv/bin/python examples/clipper_models.py [--home veloxserve-home] [--out .]

Writes `lr.joblib`, `lr2.joblib` (a retrained lr, for the tour's v2) and `rf.joblib` into
`<home>/models-in/`, the directory a server deploys from, and two request bodies into `--out`:
`digit-predict.json` (user "ann", one 8×8 digit none of the models was fitted on, as 64 numbers) and
`digit-observe.json` (the same digit with its label). The digits ship with scikit-learn: nothing is
downloaded. The models are small on purpose (a few seconds to fit on one core).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import joblib
import numpy as np
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression

QUERY_ROW = 1500  # the models are fitted on rows before 600: this digit is new to all of them


def write_models(models_in: Path) -> dict[str, Path]:
    """Fit the three models and dump them with joblib into `models_in`; their paths by name."""
    x, y = load_digits(return_X_y=True)
    models = {
        "lr": LogisticRegression(max_iter=300).fit(x[:300], y[:300]),
        "lr2": LogisticRegression(max_iter=300, C=0.1).fit(x[:600], y[:600]),
        "rf": RandomForestClassifier(n_estimators=50, random_state=0).fit(x[:300], y[:300]),
    }
    models_in.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, model in models.items():
        paths[name] = models_in / f"{name}.joblib"
        joblib.dump(model, paths[name])
    return paths


def write_requests(out: Path) -> dict[str, Path]:
    """The tour's predict and observe bodies for one held-out digit."""
    x, y = load_digits(return_X_y=True)
    pixels = np.asarray(x[QUERY_ROW], dtype=float).tolist()
    bodies = {
        "digit-predict.json": {"user": "ann", "input": pixels},
        "digit-observe.json": {"user": "ann", "input": pixels, "label": int(y[QUERY_ROW])},
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, body in bodies.items():
        (out / name).write_text(json.dumps(body) + "\n")
    return {name: out / name for name in bodies}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default="veloxserve-home", help="the server's home (default veloxserve-home)")
    parser.add_argument("--out", default=".", help="where the two request bodies go (default: here)")
    args = parser.parse_args(argv)
    for path in [*write_models(Path(args.home) / "models-in").values(), *write_requests(Path(args.out)).values()]:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
