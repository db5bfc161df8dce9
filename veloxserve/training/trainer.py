"""Offline training: ratings in, a new model version on disk out.

`train_version` trains from a ratings file (the model's base data); `retrain_version` trains
from the base data plus the observation log up to a position, holding out the most recent slice
of the log to compare the new θ with its parent's on the same users and rows.
"""

from __future__ import annotations

import dataclasses
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from veloxserve.config import HomeLayout
from veloxserve.errors import InvalidInput
from veloxserve.models.version import Link, score_range_of
from veloxserve.storage.atomic import replace_atomically
from veloxserve.storage.observation_log import MAIN_INSTANCE, read_merged
from veloxserve.storage.versions import VersionStore
from veloxserve.training.als import ALSConfig, TrainedFactors, theta_rmse, train_als
from veloxserve.training.content import fit_text_basis, read_item_texts
from veloxserve.training.ratings import Ratings, load_ratings, split_holdout, write_ratings_parquet

# For the logistic link, θ is fitted to the labels' log-odds, clipped so 0/1 labels stay finite;
# the server then learns each user on the true log-loss (SGD).
_LABEL_CLIP = 0.05
# The hyper-parameters a retrain inherits from its parent version unless told otherwise.
_INHERITED = ("rank", "reg", "prior_precision", "baseline_precision", "iterations", "weighted_reg", "seed")
# Fewer logged observations than this and the "recent" comparison slice would be noise:
# a retrain then holds out a random slice of everything instead.
MIN_RECENT_HOLDOUT = 50
# The served score range is the training scores' [min, max] widened by this fraction of its span
# on each side: observations outside it are rejected (one 1e308 would poison a user for good).
SCORE_RANGE_MARGIN = 0.1


def accepted_score_range(scores: np.ndarray, link: Link, override: tuple[float, float] | None = None) -> list[float]:
    """[lo, hi] of the scores a version accepts: `override`, else [0, 1] for a logistic link, else
    the training scores' range widened by SCORE_RANGE_MARGIN (at least 1.0 when they are all equal)."""
    if override is not None:
        lo, hi = (float(x) for x in override)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise InvalidInput(f"The score range must be two finite numbers LO < HI. Got {lo} {hi} instead.",
                               field="score_range")
        return [lo, hi]
    if link is Link.LOGISTIC:
        return [0.0, 1.0]
    finite = scores[np.isfinite(scores)]
    if finite.size == 0:
        raise InvalidInput("The ratings have no finite score to set the model's score range from.", field="score_range")
    lo, hi = float(finite.min()), float(finite.max())
    margin = SCORE_RANGE_MARGIN * (hi - lo) if hi > lo else max(1.0, SCORE_RANGE_MARGIN * abs(hi))
    return [lo - margin, hi + margin]


def config_from(overrides: dict[str, Any]) -> ALSConfig:
    """ALSConfig with the given fields replaced; None values keep the default."""
    try:
        return dataclasses.replace(ALSConfig(), **{k: v for k, v in overrides.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"Bad training parameter: {exc}.") from None


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def train_version(
    layout: HomeLayout,
    model: str,
    ratings: str | Path | Ratings,
    config: ALSConfig | None = None,
    *,
    link: str = Link.IDENTITY.value,
    heldout: str | Path | Ratings | None = None,
    items: str | Path | None = None,
    progress: bool = False,
    score_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """Train f(x; θ) and every user's statistics from a ratings file, write the model's next version.

    Without `heldout`, `config.heldout_fraction` of the ratings is held out at random to report
    held-out RMSE; the version is trained on the rest. The ratings become the model's base data,
    which later retrains extend with the observation log. The version's log position is 0: a
    server replays the whole log on top of it, so no feedback already logged is lost.

    `items` (CSV or Parquet with an `item` column) becomes the model's item table: attribute
    columns serve top-k filters, and a `text` column trains content features (models/content.py),
    which let the model score items it has never seen from their text.

    `score_range` (lo, hi) overrides the range of scores the version accepts (meta.json
    `score_range`; default: the ratings' range widened, see `accepted_score_range`).
    """
    config = config or ALSConfig()
    if items is not None:
        save_item_table(layout, model, items)
    link = Link(link)
    source = str(ratings) if not isinstance(ratings, Ratings) else "in-memory ratings"
    data = ratings if isinstance(ratings, Ratings) else load_ratings(ratings)
    if heldout is None:
        train, test = split_holdout(data, config.heldout_fraction, config.seed)
    else:
        train, test = data, heldout if isinstance(heldout, Ratings) else load_ratings(heldout)
    started = time.perf_counter()
    factors = _fit(train, test, config, link, progress=progress)
    meta = version_meta(model, config, link, factors, train, test, started, score_range=score_range)
    meta.update(source=source, log_position=0, reason="manual", heldout_fraction=config.heldout_fraction if heldout is None else None)
    add_content_features(layout, model, factors.arrays, meta, config.seed)
    version = VersionStore(layout.versions_dir(model)).write(factors.arrays, meta)
    save_base_data(layout, model, data)
    return {**meta, "version": version}


def retrain_version(
    layout: HomeLayout, model: str, version: str, *, parent: str, upto_lsn: int, reason: str,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train the reserved `version` from the base data plus the log up to `upto_lsn`.

    The newest `heldout_fraction` of the logged rows is held out of θ's training; both the new θ
    and the parent's are scored on it with users re-solved on the rest (the parent's decision
    figure and the candidate's). The served user statistics then use every row, held-out ones
    included, so the swap loses no observation. Items the parent serves stay in the catalogue.
    """
    versions = VersionStore(layout.versions_dir(model))
    parent_meta = versions.read_meta(parent)
    parent_arrays = versions.read_arrays(parent)
    config = config_from({**{k: parent_meta[k] for k in _INHERITED if k in parent_meta}, **(overrides or {})})
    link = Link(parent_meta.get("link", Link.IDENTITY.value))
    data, window = training_data(layout, model, upto_lsn)
    low, high = score_range_of(parent_meta)  # rows logged before scores were bounded (1e308) train nothing
    if not ((data.scores >= low) & (data.scores <= high)).all():
        data = data.take(np.flatnonzero((data.scores >= low) & (data.scores <= high)))
    n_log = window["log_rows"]
    if n_log >= MIN_RECENT_HOLDOUT and config.heldout_fraction > 0:
        n_hold = max(1, int(round(config.heldout_fraction * n_log)))
        train, test = data.take(np.arange(len(data) - n_hold)), data.take(np.arange(len(data) - n_hold, len(data)))
        holdout_kind = "recent"
    else:
        train, test = split_holdout(data, config.heldout_fraction, config.seed)
        holdout_kind = "random"
    started = time.perf_counter()
    factors = _fit(train, test, config, link, items=parent_arrays["item_ids"], final_users=data)
    # Both θs on the same rows: held-out rows whose item the parent knows (the candidate knows them all).
    scoring_link = _sigmoid if link is Link.LOGISTIC else None
    fit_train = _as_log_odds(train) if link is Link.LOGISTIC else train
    parent_rmse, known = theta_rmse(parent_arrays, parent_meta["global_mean"], fit_train, test, scoring_link)
    candidate_rmse, _ = theta_rmse(factors.arrays, factors.global_mean, fit_train, test.take(known), scoring_link)
    inherited = parent_meta.get("score_range") if parent_meta.get("score_range_source") == "override" else None
    meta = version_meta(model, config, link, factors, data, test, started, score_range=inherited)
    meta.update(
        source="base data + observation log", reason=reason, parent=parent, log_position=upto_lsn,
        log_positions=window["log_positions"],  # instance logs' positions (serving/shared_server.py)
        data=window, holdout=holdout_kind, comparison={
            "rows": int(known.sum()), "candidate_rmse": candidate_rmse, "parent_rmse": parent_rmse,
        },
    )
    add_content_features(layout, model, factors.arrays, meta, config.seed, like=parent_meta.get("content"))
    versions.write(factors.arrays, meta, version=version)
    return {**meta, "version": version}


def _fit(train: Ratings, test: Ratings, config: ALSConfig, link: Link, *, progress: bool = False,
         items: np.ndarray | None = None, final_users: Ratings | None = None) -> TrainedFactors:
    logistic = link is Link.LOGISTIC
    prepare = _as_log_odds if logistic else (lambda r: r)
    return train_als(
        prepare(train), config, test, progress=progress, link=_sigmoid if logistic else None, items=items,
        final_users=None if final_users is None else prepare(final_users),
    )


def version_meta(model: str, config: ALSConfig, link: Link, factors: TrainedFactors, train: Ratings,
                 test: Ratings, started: float, *, score_range: tuple[float, float] | None = None) -> dict[str, Any]:
    """The meta.json fields every trained version carries, whatever trained it. `score_range`
    overrides the accepted scores' range (kept by retrains as `score_range_source: override`)."""
    return {
        "score_range": accepted_score_range(train.scores, link, score_range),
        "score_range_source": "data" if score_range is None else "override",
        "model": model,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kind": "matrix_factorization",
        "engine": "local",
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
        "seed": config.seed,
        "train_seconds": round(time.perf_counter() - started, 4),
    }


def save_item_table(layout: HomeLayout, model: str, items: str | Path) -> Path:
    """Keep an item table (attributes, texts) as the model's Parquet item file, checked first."""
    import pyarrow.parquet as pq

    from veloxserve.models.attributes import read_attribute_table

    table = read_attribute_table(Path(items))
    path = layout.items_file(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda fh: pq.write_table(table, fh))
    return path


def add_content_features(layout: HomeLayout, model: str, arrays: dict[str, np.ndarray], meta: dict[str, Any],
                         seed: int, like: dict[str, Any] | None = None) -> None:
    """Fit the text basis when the model's item table has texts (same settings as `like`, a
    parent's content report); the version then carries `content_basis` and meta["content"]."""
    texts = read_item_texts(layout.items_file(model))
    if not texts:
        return
    settings = {key: like[key] for key in ("n_buckets", "ngram_max", "alpha") if like and key in like}
    arrays["content_basis"], meta["content"] = fit_text_basis(arrays, texts, seed=seed, **settings)


def save_base_data(layout: HomeLayout, model: str, ratings: Ratings) -> Path:
    """Keep a model's training ratings as Parquet (temp file + rename) for later retrains."""
    path = layout.base_data(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda fh: write_ratings_parquet(ratings, fh))
    return path


def training_data(layout: HomeLayout, model: str, upto_lsn: int) -> tuple[Ratings, dict[str, Any]]:
    """Base data, then the logged observations, newest last: the main log up to `upto_lsn` and
    the logs of server instances that shared the home over Redis (each up to its end now, recorded
    in `log_positions`), merged by time."""
    base_path = layout.base_data(model)
    base = load_ratings(base_path) if base_path.is_file() else None
    merged = list(read_merged(layout.log_dir(model), {MAIN_INSTANCE: upto_lsn}))
    records = [record for _, record in merged]
    positions = {instance: record.lsn for instance, record in merged if instance != MAIN_INSTANCE}
    log_part = Ratings(
        np.array([r.user for r in records], dtype=str), np.array([r.item for r in records], dtype=str),
        np.array([r.score for r in records], dtype=np.float64),
    )
    window = {
        "base_rows": 0 if base is None else len(base), "log_rows": len(records),
        "first_lsn": records[0].lsn if records else None, "last_lsn": upto_lsn, "log_positions": positions,
        "first_observed_at": _iso(records[0].timestamp) if records else None,
        "last_observed_at": _iso(records[-1].timestamp) if records else None,
    }
    if base is None:
        data = log_part
    else:
        data = Ratings(
            np.concatenate([base.users, log_part.users]), np.concatenate([base.items, log_part.items]),
            np.concatenate([base.scores, log_part.scores]),
        )
    if len(data) == 0:
        raise InvalidInput(f"Model {model!r} has no training data: no base ratings and no logged observations.")
    return data, window


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _as_log_odds(ratings: Ratings) -> Ratings:
    if ((ratings.scores < 0) | (ratings.scores > 1)).any():
        raise InvalidInput("A logistic model trains on labels in [0, 1]; the ratings file has scores outside it.")
    p = np.clip(ratings.scores, _LABEL_CLIP, 1 - _LABEL_CLIP)
    return dataclasses.replace(ratings, scores=np.log(p / (1 - p)))
