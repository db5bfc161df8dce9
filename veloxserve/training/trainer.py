"""Offline training: a ratings file in, a new model version on disk out."""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from veloxserve.config import HomeLayout
from veloxserve.errors import InvalidInput
from veloxserve.models.version import Link
from veloxserve.storage.versions import VersionStore
from veloxserve.training.als import ALSConfig, train_als
from veloxserve.training.ratings import Ratings, load_ratings, split_holdout

# For the logistic link, θ is fitted to the labels' log-odds, clipped so 0/1 labels stay finite;
# the server then learns each user on the true log-loss (SGD).
_LABEL_CLIP = 0.05


def config_from(overrides: dict[str, Any]) -> ALSConfig:
    """ALSConfig with the given fields replaced; None values keep the default."""
    try:
        return dataclasses.replace(ALSConfig(), **{k: v for k, v in overrides.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"Bad training parameter: {exc}.") from None


def train_version(
    layout: HomeLayout,
    model: str,
    ratings: str | Path | Ratings,
    config: ALSConfig | None = None,
    *,
    link: str = Link.IDENTITY.value,
    heldout: str | Path | Ratings | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Train f(x; θ) and every user's statistics, write them as the model's next version.

    Without `heldout`, `config.heldout_fraction` of the ratings is held out at random to report
    held-out RMSE; the version is trained on the rest.
    """
    config = config or ALSConfig()
    link = Link(link)
    source = str(ratings) if not isinstance(ratings, Ratings) else "in-memory ratings"
    data = ratings if isinstance(ratings, Ratings) else load_ratings(ratings)
    if heldout is None:
        train, test = split_holdout(data, config.heldout_fraction, config.seed)
    else:
        train, test = data, heldout if isinstance(heldout, Ratings) else load_ratings(heldout)
    logistic = link is Link.LOGISTIC
    started = time.perf_counter()
    factors = train_als(
        _as_log_odds(train) if logistic else train, config, test, progress=progress,
        link=(lambda z: 0.5 * (1.0 + np.tanh(0.5 * z))) if logistic else None,
    )
    meta = {
        "model": model,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kind": "matrix_factorization",
        "link": link.value,
        "rank": config.rank,
        "k": config.rank + 2,
        "reg": config.reg,
        "weighted_reg": config.weighted_reg,
        "prior_precision": config.prior_precision,
        "baseline_precision": config.baseline_precision,
        "global_mean": factors.global_mean,
        "iterations": config.iterations,
        "losses": factors.losses,
        "rows_trained": len(train),
        "n_users": len(factors.arrays["user_ids"]),
        "n_items": len(factors.arrays["item_ids"]),
        "train_rmse": factors.train_rmse,
        "heldout_rmse": factors.heldout_rmse,  # of σ(w·f) against 0/1 labels for logistic models
        "heldout_rows": len(test),
        "heldout_fraction": config.heldout_fraction if heldout is None else None,
        "source": source,
        "log_position": 0,
        "seed": config.seed,
        "train_seconds": round(time.perf_counter() - started, 4),
    }
    version = VersionStore(layout.versions_dir(model)).write(factors.arrays, meta)
    return {**meta, "version": version}


def _as_log_odds(ratings: Ratings) -> Ratings:
    if ((ratings.scores < 0) | (ratings.scores > 1)).any():
        raise InvalidInput("A logistic model trains on labels in [0, 1]; the ratings file has scores outside it.")
    p = np.clip(ratings.scores, _LABEL_CLIP, 1 - _LABEL_CLIP)
    return dataclasses.replace(ratings, scores=np.log(p / (1 - p)))
