"""Offline training: ratings in, a new model version on disk out.

`train_version` trains from a ratings file (the model's base data): it holds a random slice out
of a first fit only to report held-out RMSE, then fits the served version on every row.
`retrain_version` trains from the base data plus the observation log up to a position, holding
out the most recent logged rows that neither the parent's θ nor the new one is fitted on, to
compare the two on the same users and rows.

Each version records, in `theta_unfitted_from` ({log instance: LSN}), from which log record on
its θ was fitted on nothing: that is how a later retrain finds rows its parent never saw.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from veloxserve.config import HomeLayout
from veloxserve.errors import InvalidInput
from veloxserve.models.reference import sample_reference
from veloxserve.models.version import Link, score_range_of, sigmoid
from veloxserve.storage.atomic import replace_atomically
from veloxserve.storage.observation_log import MAIN_INSTANCE, read_merged
from veloxserve.storage.versions import VersionStore
from veloxserve.training.als import ALSConfig, TrainedFactors, theta_rmse, train_als
from veloxserve.training.content import fit_text_basis, read_item_texts
from veloxserve.training.engines import check_engine
from veloxserve.training.ratings import Ratings, load_ratings, split_holdout, write_ratings_parquet

# For the logistic link, θ is fitted to the labels' log-odds, clipped so 0/1 labels stay finite;
# the server then learns each user on the true log-loss (SGD).
_LABEL_CLIP = 0.05
# The hyper-parameters a retrain inherits from its parent version unless told otherwise.
_INHERITED = ("rank", "reg", "prior_precision", "baseline_precision", "iterations", "weighted_reg", "seed")
# Fewer logged observations the parent's θ was not fitted on than this and a comparison would be
# noise: a retrain then compares nothing (and fits θ on every row).
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
            raise InvalidInput(
                f"The score range must be two finite numbers LO < HI. Got {lo} {hi} instead.", field="score_range"
            )
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
    columns: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Train f(x; θ) and every user's statistics from a ratings file, write the model's next version.

    Without `heldout`, `config.heldout_fraction` of the ratings is held out at random of a first
    fit, only to report its held-out RMSE; the served version (θ and users) is then fitted on
    every row, so every user and item in the file is served (meta["evaluation"] says so). With
    `heldout`, the version is fitted on all the ratings and scored on it. The ratings become the model's base data,
    which later retrains extend with the observation log. The version's log position is 0: a
    server replays the whole log on top of it, so no feedback already logged is lost.

    `items` (CSV or Parquet with an `item` column) becomes the model's item table: attribute
    columns serve top-k filters, and a `text` column trains content features (models/content.py),
    which let the model score items it has never seen from their text.

    `columns` maps the file's column names (load_ratings: {"user": "uid", "score": "rating"}).

    `score_range` (lo, hi) overrides the range of scores the version accepts (meta.json
    `score_range`; default: the ratings' range widened, see `accepted_score_range`).
    """
    config = config or ALSConfig()
    if items is not None:
        save_item_table(layout, model, items)
    link = Link(link)
    source = str(ratings) if not isinstance(ratings, Ratings) else "in-memory ratings"
    data = ratings if isinstance(ratings, Ratings) else load_ratings(ratings, columns)
    if heldout is None:
        train, test = split_holdout(data, config.heldout_fraction, config.seed)
    else:
        train, test = data, heldout if isinstance(heldout, Ratings) else load_ratings(heldout)
    started = time.perf_counter()
    factors = _fit(train, test, config, link, progress=progress)
    if len(train) < len(data):  # the figure came from a fit without the held-out rows: refit on all of them
        figure = factors
        factors = _fit(data, None, config, link, progress=progress)
        factors.heldout_rmse, factors.heldout_rows, factors.heldout_skipped = (
            figure.heldout_rmse,
            figure.heldout_rows,
            figure.heldout_skipped,
        )
        evaluation = (
            f"heldout_rmse computed on a {config.heldout_fraction:.0%} split ({len(test)} rows) fitted "
            f"separately; the served version is fitted on all {len(data)} rows"
        )
    elif heldout is not None:
        evaluation = f"heldout_rmse computed on {len(test)} rows of {heldout}; the served version is fitted on all {len(data)} rows"
    else:
        evaluation = f"no rows held out (heldout_fraction 0); the served version is fitted on all {len(data)} rows"
    meta = version_meta(model, config, link, factors, data, test, started, score_range=score_range)
    meta.update(
        source=source,
        log_position=0,
        reason="manual",
        evaluation=evaluation,
        heldout_fraction=config.heldout_fraction if heldout is None else None,
        theta_unfitted_from={MAIN_INSTANCE: 0},
    )  # θ is fitted on no logged observation
    add_content_features(layout, model, factors.arrays, meta, config.seed)
    add_reference(factors, meta, data, link, config.seed)
    version = VersionStore(layout.versions_dir(model)).write(factors.arrays, meta)
    save_base_data(layout, model, data)
    return {**meta, "version": version}


def retrain_version(
    layout: HomeLayout,
    model: str,
    version: str,
    *,
    parent: str,
    upto_lsn: int,
    reason: str,
    overrides: dict[str, Any] | None = None,
    engine: str = "local",
    spark_master: str | None = None,
    spark_start_timeout: float | None = None,
) -> dict[str, Any]:
    """Train the reserved `version` from the base data plus the log up to `upto_lsn`.

    The comparison rows are the newest `heldout_fraction` of the logged rows, taken only among
    rows the parent's θ was not fitted on (after its `theta_unfitted_from`; never base rows,
    which a `train` version is fitted on in full): they are held out of the new θ's training, and
    both θs are scored on them with users re-solved on the rest. With fewer than
    MIN_RECENT_HOLDOUT such rows there is nothing fair to compare on: θ is fitted on every row
    and the comparison is empty (an `if_better` retrain is then not promoted). The served user
    statistics use every row, held-out ones included, so the swap loses no observation. Items
    the parent serves stay in the catalogue.

    `engine` "spark" fits θ alone with Spark MLlib on `spark_master` (training/spark_als.py
    `fit_theta_spark`) from these same rows; the split, the catalogue and the user solves do not
    change, so the two engines' versions compare on the same held-out rows. A `spark://` master
    not ready within `spark_start_timeout` s (None: the default) fails the retrain (TrainingFailed).
    A black-box basis parent has no Spark engine: InvalidInput (the retrainer refuses it earlier).
    """
    versions = VersionStore(layout.versions_dir(model))
    parent_meta = versions.read_meta(parent)
    if parent_meta.get("kind") == "black_box":  # a Shared Basis of black-box models: its own refit
        check_engine(engine, parent_meta, model)
        from veloxserve.training.basis_trainer import retrain_basis_version

        return retrain_basis_version(
            layout, model, version, parent=parent, upto_lsn=upto_lsn, reason=reason, overrides=overrides
        )
    parent_arrays = versions.read_arrays(parent)
    config = config_from({**{k: parent_meta[k] for k in _INHERITED if k in parent_meta}, **(overrides or {})})
    link = Link(parent_meta.get("link", Link.IDENTITY.value))
    data, window, origin = training_data(layout, model, upto_lsn, origin=True)
    low, high = score_range_of(parent_meta)  # rows logged before scores were bounded (1e308) train nothing
    in_range = (data.scores >= low) & (data.scores <= high)
    if not in_range.all():
        data = data.take(np.flatnonzero(in_range))
        origin = {name: column[in_range] for name, column in origin.items()}
    unfitted = unfitted_by(parent_meta, origin)
    n_log, n_unfitted = window["log_rows"], int(unfitted.sum())
    held = np.zeros(len(data), dtype=bool)
    if n_unfitted >= MIN_RECENT_HOLDOUT and config.heldout_fraction > 0:
        n_hold = min(n_unfitted, max(1, int(round(config.heldout_fraction * n_log))))
        held[np.flatnonzero(unfitted)[-n_hold:]] = True
        holdout_kind = "recent"
    else:
        holdout_kind = "none"
    train, test = data.take(np.flatnonzero(~held)), data.take(np.flatnonzero(held))
    started = time.perf_counter()
    # A parent's `reg` is MLlib's regParam when Spark fitted it, else the local λ_i: it carries
    # over only to a fit by the same engine (or when the retrain sets it).
    same_reg = (parent_meta.get("engine") == "spark") == (engine == "spark") or "reg" in (overrides or {})
    if not same_reg and engine == "local":
        config = dataclasses.replace(config, reg=ALSConfig.reg)
    if engine == "spark":
        from veloxserve.training.spark_als import fit_theta_spark  # pyspark loads slowly, and only here
        from veloxserve.training.spark_session import DEFAULT_START_TIMEOUT

        reg_param = config.reg if same_reg else None
        factors, engine_meta = fit_theta_spark(
            train,
            test,
            config,
            link,
            master=spark_master or "local[2]",
            reg_param=reg_param,
            items=parent_arrays["item_ids"],
            final_users=data,
            start_timeout=DEFAULT_START_TIMEOUT if spark_start_timeout is None else spark_start_timeout,
        )
    else:
        factors, engine_meta = _fit(train, test, config, link, items=parent_arrays["item_ids"], final_users=data), {}
    # Both θs on the same rows: held-out rows whose item the parent knows (the candidate knows them all).
    scoring_link = sigmoid if link is Link.LOGISTIC else None
    fit_train = fit_input(train, link)
    if len(test):
        parent_rmse, known = theta_rmse(parent_arrays, parent_meta["global_mean"], fit_train, test, scoring_link)
        candidate_rmse, _ = theta_rmse(factors.arrays, factors.global_mean, fit_train, test.take(known), scoring_link)
    else:
        parent_rmse, candidate_rmse, known = None, None, np.zeros(0, dtype=bool)
    inherited = parent_meta.get("score_range") if parent_meta.get("score_range_source") == "override" else None
    meta = version_meta(model, config, link, factors, data, test, started, score_range=inherited)
    meta.update(
        source="base data + observation log",
        reason=reason,
        parent=parent,
        log_position=upto_lsn,
        log_positions=window["log_positions"],  # instance logs' positions (serving/shared_state.py)
        data=window,
        holdout=holdout_kind,
        theta_unfitted_from=_unfitted_from(origin, held, upto_lsn),
        **engine_meta,
        comparison={
            "rows": int(known.sum()),
            "candidate_rmse": candidate_rmse,
            "parent_rmse": parent_rmse,
            "rows_unfitted_by_parent": n_unfitted,
            "rows_needed": MIN_RECENT_HOLDOUT,
            "first_lsn": int(origin["lsns"][held].min()) if held.any() else None,
        },
    )
    add_content_features(layout, model, factors.arrays, meta, config.seed, like=parent_meta.get("content"))
    add_reference(factors, meta, data, link, config.seed)
    versions.write(factors.arrays, meta, version=version)
    return {**meta, "version": version}


def fit_input(ratings: Ratings, link: Link) -> Ratings:
    """What θ is fitted to: the scores, or for a logistic link the labels' clipped log-odds."""
    return _as_log_odds(ratings) if link is Link.LOGISTIC else ratings


def _fit(
    train: Ratings,
    test: Ratings | None,
    config: ALSConfig,
    link: Link,
    *,
    progress: bool = False,
    items: np.ndarray | None = None,
    final_users: Ratings | None = None,
) -> TrainedFactors:
    return train_als(
        fit_input(train, link),
        config,
        test,
        progress=progress,
        link=sigmoid if link is Link.LOGISTIC else None,
        items=items,
        final_users=None if final_users is None else fit_input(final_users, link),
    )


def version_meta(
    model: str,
    config: ALSConfig,
    link: Link,
    factors: TrainedFactors,
    train: Ratings,
    test: Ratings,
    started: float,
    *,
    score_range: tuple[float, float] | None = None,
) -> dict[str, Any]:
    """The meta.json fields every trained version carries, whatever trained it. `score_range`
    overrides the accepted scores' range (kept by retrains as `score_range_source: override`)."""
    return {
        "score_range": accepted_score_range(train.scores, link, score_range),
        "score_range_source": "data" if score_range is None else "override",
        "model": model,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
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
    from veloxserve.storage.item_tables import read_item_table, write_item_table

    table = read_item_table(Path(items))
    path = layout.items_file(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_item_table(path, table)
    return path


def add_content_features(
    layout: HomeLayout,
    model: str,
    arrays: dict[str, np.ndarray],
    meta: dict[str, Any],
    seed: int,
    like: dict[str, Any] | None = None,
) -> None:
    """Fit the text basis when the model's item table has texts (same settings as `like`, a
    parent's content report); the version then carries `content_basis` and meta["content"]."""
    texts = read_item_texts(layout.items_file(model))
    if not texts:
        return
    settings = {key: like[key] for key in ("n_buckets", "ngram_max", "alpha") if like and key in like}
    arrays["content_basis"], meta["content"] = fit_text_basis(arrays, texts, seed=seed, **settings)


def add_reference(factors: TrainedFactors, meta: dict[str, Any], data: Ratings, link: Link, seed: int) -> None:
    """Store a sample of the training rows for serving's deviation checks (models/reference.py):
    the arrays `reference_item_rows`, `reference_scores` and meta["reference"]."""
    arrays, about = sample_reference(
        factors.arrays, factors.global_mean, data.users, data.items, logistic=link is Link.LOGISTIC, seed=seed
    )
    factors.arrays.update(arrays)
    if about:
        meta["reference"] = about


def save_base_data(layout: HomeLayout, model: str, ratings: Ratings) -> Path:
    """Keep a model's training ratings as Parquet (temp file + rename) for later retrains."""
    path = layout.base_data(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_atomically(path, lambda fh: write_ratings_parquet(ratings, fh))
    return path


def training_data(layout: HomeLayout, model: str, upto_lsn: int, *, origin: bool = False) -> Any:
    """Base data, then the logged observations, newest last: the main log up to `upto_lsn` and
    the logs of server instances that shared the home over Redis (each up to its end now, recorded
    in `log_positions`), merged by time. Returns (ratings, window); with `origin`, also where each
    row came from ({"instances": log instance or "" for base rows, "lsns": LSN or -1})."""
    base_path = layout.base_data(model)
    base = load_ratings(base_path) if base_path.is_file() else None
    merged = list(read_merged(layout.log_dir(model), {MAIN_INSTANCE: upto_lsn}))
    records = [record for _, record in merged]
    positions = {instance: record.lsn for instance, record in merged if instance != MAIN_INSTANCE}
    log_part = Ratings(
        np.array([r.user for r in records], dtype=str),
        np.array([r.item for r in records], dtype=str),
        np.array([r.score for r in records], dtype=np.float64),
    )
    window: dict[str, Any] = {
        "base_rows": 0 if base is None else len(base),
        "log_rows": len(records),
        "first_lsn": records[0].lsn if records else None,
        "last_lsn": upto_lsn,
        "log_positions": positions,
        "first_observed_at": _iso(records[0].timestamp) if records else None,
        "last_observed_at": _iso(records[-1].timestamp) if records else None,
    }
    if base is None:
        data = log_part
    else:
        data = Ratings(
            np.concatenate([base.users, log_part.users]),
            np.concatenate([base.items, log_part.items]),
            np.concatenate([base.scores, log_part.scores]),
        )
    if len(data) == 0:
        raise InvalidInput(f"Model {model!r} has no training data: no base ratings and no logged observations.")
    if not origin:
        return data, window
    n_base = window["base_rows"]
    rows = {
        "instances": np.concatenate([np.full(n_base, ""), np.array([i for i, _ in merged], dtype=str)]).astype(str),
        "lsns": np.concatenate(
            [np.full(n_base, -1, dtype=np.int64), np.array([r.lsn for r in records], dtype=np.int64)]
        ),
    }
    return data, window, rows


def unfitted_by(meta: dict[str, Any], origin: dict[str, np.ndarray]) -> np.ndarray:
    """Which rows of `training_data(..., origin=True)` a version's θ was never fitted on: log
    records at or after its `theta_unfitted_from` LSN of their instance. Base rows never count
    (a `train` version is fitted on all of them). A version from before that field counts as
    fitted on every record up to the log positions it was trained to."""
    spec = meta.get("theta_unfitted_from")
    if spec is None:
        spec = {
            MAIN_INSTANCE: int(meta.get("log_position", 0)) + 1,
            **{name: int(lsn) + 1 for name, lsn in (meta.get("log_positions") or {}).items()},
        }
    instances, lsns = origin["instances"], origin["lsns"]
    threshold = np.zeros(len(lsns), dtype=np.int64)  # an instance it never read: all of it unfitted
    for name, lsn in spec.items():
        threshold[instances == name] = int(lsn)
    return (instances != "") & (lsns >= threshold)


def _unfitted_from(origin: dict[str, np.ndarray], held: np.ndarray, upto_lsn: int) -> dict[str, int]:
    """Per log instance, the first LSN from which a θ fitted on the rows not `held` saw nothing:
    the first held-out LSN when every later record of the instance is held out too, else one past
    the last record read."""
    instances, lsns = origin["instances"], origin["lsns"]
    out = {MAIN_INSTANCE: upto_lsn + 1}
    for name in np.unique(instances[instances != ""]):
        mine = instances == name
        last = int(lsns[mine].max()) + 1 if name != MAIN_INSTANCE else upto_lsn + 1
        if (mine & held).any():
            first = int(lsns[mine & held].min())
            out[str(name)] = first if held[mine & (lsns >= first)].all() else last
        else:
            out[str(name)] = last
    return out


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def _as_log_odds(ratings: Ratings) -> Ratings:
    if ((ratings.scores < 0) | (ratings.scores > 1)).any():
        raise InvalidInput("A logistic model trains on labels in [0, 1]; the ratings file has scores outside it.")
    p = np.clip(ratings.scores, _LABEL_CLIP, 1 - _LABEL_CLIP)
    return dataclasses.replace(ratings, scores=np.log(p / (1 - p)))
