"""Distributed training of θ with Apache Spark MLlib ALS, written in the local trainer's format.

Spark fits y ≈ μ + b_x + u_u · v_x: the global mean and the item biases by one aggregation, then
MLlib ALS on the residuals (its regParam is scaled by each row's count, as in ALS-WR). That is
the split model with f(x) = [v_x, μ + b_x, 1] and w_u = [u_u, 1, 0], so Spark's item factors are
θ as the server uses it. Every user's served statistics are then the same exact ridge solve the
local trainer does (`solve_users`), against Spark's θ and the prior the user factors imply.

Input is Parquet (a file, or a directory such as `veloxserve log export` writes), read by Spark
itself; other formats are converted to Parquet first. Runs on any master URL: `local[2]` in tests
and on one machine, `spark://…` or `yarn` on a cluster.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from veloxserve.config import HomeLayout
from veloxserve.errors import InvalidInput
from veloxserve.models.version import Link, sigmoid
from veloxserve.storage.versions import VersionStore
from veloxserve.training.als import (
    ALSConfig,
    TrainedFactors,
    _features,
    prior_precision_vector,
    solve_users,
    theta_rmse,
)
from veloxserve.training.ratings import Ratings, load_ratings, write_ratings_parquet
from veloxserve.training.spark_session import DEFAULT_START_TIMEOUT, spark_session
from veloxserve.training.trainer import add_reference, fit_input, save_base_data, version_meta

DEFAULT_REG_PARAM = 0.1  # MLlib's λ (per rating, ALS-WR); measured on ml-100k u1 in bench/bench_lifecycle.py
ITEM_BIAS_REG = 5.0  # b_x = Σ (y − μ) / (n_x + this): shrinks rarely rated items' bias to 0


def train_version_spark(
    layout: HomeLayout,
    model: str,
    ratings: str | Path | Ratings,
    config: ALSConfig | None = None,
    *,
    master: str = "local[2]",
    reg_param: float = DEFAULT_REG_PARAM,
    start_timeout: float = DEFAULT_START_TIMEOUT,
) -> dict[str, Any]:
    """Train θ with Spark MLlib ALS from a ratings file or Parquet directory; write the next version."""
    config = config or ALSConfig()
    started = time.perf_counter()
    spark = spark_session(master, start_timeout=start_timeout)
    with tempfile.TemporaryDirectory(prefix="veloxserve-spark-") as scratch:
        path = _as_parquet(ratings, Path(scratch))
        factors, data, test, info = fit_spark(spark, str(path), config, reg_param)
    meta = version_meta(model, config, Link.IDENTITY, factors, data, test, started)
    meta.update(
        engine="spark",
        spark_master=master,
        spark_version=spark.version,
        reg=reg_param,
        reg_meaning="MLlib regParam",
        source=str(ratings) if not isinstance(ratings, Ratings) else "in-memory ratings",
        log_position=0,
        reason="manual",
        heldout_fraction=config.heldout_fraction,
        **info,
    )
    add_reference(factors, meta, data, Link.IDENTITY, config.seed)  # for serving's deviation checks
    version = VersionStore(layout.versions_dir(model)).write(factors.arrays, meta)
    save_base_data(layout, model, data)
    return {**meta, "version": version}


def _as_parquet(ratings: str | Path | Ratings, scratch: Path) -> Path:
    if not isinstance(ratings, Ratings):
        path = Path(ratings)
        if path.is_dir() or path.suffix == ".parquet":
            if not path.exists():
                raise InvalidInput(f"Cannot read ratings from {path}: no such file or directory.", field="ratings")
            return path
        ratings = load_ratings(path)
    out = scratch / "ratings.parquet"
    write_ratings_parquet(ratings, out)
    return out


def fit_spark(
    spark,
    path: str,
    config: ALSConfig,
    reg_param: float,
    heldout_path: str | None = None,
) -> tuple[TrainedFactors, Ratings, Ratings, dict]:
    """θ from Spark, users solved locally; returns (factors, all ratings, held-out slice, info).
    Without `heldout_path`, `config.heldout_fraction` of the rows is held out at random."""
    from pyspark.sql import functions as sf

    frame = _read(spark, path)
    index = _indexer(frame)
    if heldout_path is None:
        train_df, test_df = index(frame).randomSplit(
            [1 - config.heldout_fraction, config.heldout_fraction], seed=config.seed
        )
    else:
        train_df, test_df = index(frame), index(_read(spark, heldout_path))
    train_df = train_df.cache()
    mu, bias_df, fitted = _als(train_df, config, reg_param)
    native = fitted.transform(test_df.join(bias_df.select("i", "b"), "i")).withColumn(
        "prediction", sf.col("prediction") + mu + sf.col("b")
    )
    row = native.agg(sf.sqrt(sf.avg((sf.col("prediction") - sf.col("score")) ** 2))).first()
    assert row is not None  # an aggregate has one row
    native_rmse = row[0]
    item_ids, V, b, w0 = _theta(bias_df, fitted)
    lam = prior_precision_vector(config)

    train, test = _collect(train_df), _collect(test_df)
    F = _features(V, b, mu)
    arrays = {"item_ids": item_ids, "item_factors": V, "item_bias": b, "prior_mean": w0, "prior_precision": lam}
    data = Ratings(
        np.concatenate([train.users, test.users]),
        np.concatenate([train.items, test.items]),
        np.concatenate([train.scores, test.scores]),
    )
    heldout_rmse, _ = theta_rmse(arrays, mu, train, test)
    users = solve_users(train, item_ids, F, lam, w0)
    arrays.update(users)
    pred = np.einsum(
        "ij,ij->i",
        F[np.searchsorted(item_ids, train.items)],
        users["user_weights"][np.searchsorted(users["user_ids"], train.users)],
    )
    train_rmse = float(np.sqrt(np.mean((train.scores - pred) ** 2)))
    factors = TrainedFactors(arrays, mu, train_rmse, heldout_rmse, len(test), 0)
    return factors, data, test, {"spark_native_heldout_rmse": native_rmse, "rows_trained": len(train)}


def fit_theta_spark(
    train: Ratings,
    test: Ratings,
    config: ALSConfig,
    link: Link,
    *,
    master: str,
    reg_param: float | None,
    items: np.ndarray,
    final_users: Ratings,
    start_timeout: float = DEFAULT_START_TIMEOUT,
) -> tuple[TrainedFactors, dict[str, Any]]:
    """A retrain's θ fitted by Spark MLlib on exactly the rows the local retrain fits
    (training/trainer.py `retrain_version` made the split): the catalogue is those rows' items
    plus `items` (the parent's; unrated ones get V = 0, b = 0, as `train_als` gives them), and the
    held-out RMSE and every user's served statistics are the local solves against Spark's θ.
    `reg_param` None: DEFAULT_REG_PARAM (the parent's `reg` means the local λ_i, not MLlib's).
    A `spark://` master not ready within `start_timeout` s: TrainingFailed (training/spark_session.py)."""
    started = time.perf_counter()
    reg_param = DEFAULT_REG_PARAM if reg_param is None else reg_param
    rows = fit_input(train, link)
    spark = spark_session(master, app="veloxserve-retrain", start_timeout=start_timeout)
    with tempfile.TemporaryDirectory(prefix="veloxserve-spark-") as scratch:
        path = Path(scratch) / "train.parquet"
        write_ratings_parquet(rows, path)
        frame = _read(spark, str(path))
        mu, bias_df, fitted = _als(_indexer(frame)(frame), config, reg_param)
        spark_items, spark_V, spark_b, w0 = _theta(bias_df, fitted)
    item_ids = np.unique(np.concatenate([train.items, np.asarray(items, dtype=str)]))
    at = np.searchsorted(item_ids, spark_items)
    V, b = np.zeros((len(item_ids), config.rank)), np.zeros(len(item_ids))
    V[at], b[at] = spark_V, spark_b
    arrays = {
        "item_ids": item_ids,
        "item_factors": V,
        "item_bias": b,
        "prior_mean": w0,
        "prior_precision": prior_precision_vector(config),
    }
    heldout_rmse, known = theta_rmse(arrays, mu, rows, test, sigmoid if link is Link.LOGISTIC else None)
    train_rmse, _ = theta_rmse(arrays, mu, rows, rows)
    F = _features(V, b, mu)
    arrays.update(solve_users(fit_input(final_users, link), item_ids, F, arrays["prior_precision"], w0))
    skipped = int(len(test) - known.sum())
    factors = TrainedFactors(
        arrays,
        mu,
        float(train_rmse or 0.0),
        heldout_rmse,
        len(test) - skipped,
        skipped,
        [],
        time.perf_counter() - started,
    )
    return factors, {
        "engine": "spark",
        "spark_master": master,
        "spark_version": spark.version,
        "reg": reg_param,
        "reg_meaning": "MLlib regParam",
    }


def _read(spark, path: str):
    from pyspark.sql import functions as sf

    return spark.read.parquet(path).select(
        sf.col("user").cast("string").alias("user"),
        sf.col("item").cast("string").alias("item"),
        sf.col("score").cast("double").alias("score"),
    )


def _indexer(frame):
    """Maps a frame of ratings to one with integer user and item columns `u` and `i` (MLlib's ids)."""
    from pyspark.ml.feature import StringIndexer
    from pyspark.sql import functions as sf

    indexer = StringIndexer(inputCols=["user", "item"], outputCols=["u", "i"], handleInvalid="keep").fit(frame)

    def index(df):
        out = indexer.transform(df)
        return out.withColumn("u", sf.col("u").cast("int")).withColumn("i", sf.col("i").cast("int"))

    return index


def _als(train_df, config: ALSConfig, reg_param: float):
    """μ, the item biases (frame of i, b, item) and MLlib's ALS model fitted on the residuals."""
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import functions as sf

    mu = float(train_df.agg(sf.avg("score")).first()[0])
    bias_df = train_df.groupBy("i").agg(
        (sf.sum(sf.col("score") - mu) / (sf.count("*") + ITEM_BIAS_REG)).alias("b"), sf.first("item").alias("item")
    )
    residual = train_df.join(bias_df.select("i", "b"), "i").withColumn("residual", sf.col("score") - mu - sf.col("b"))
    als = ALS(
        rank=config.rank,
        maxIter=config.iterations,
        regParam=reg_param,
        userCol="u",
        itemCol="i",
        ratingCol="residual",
        coldStartStrategy="drop",
        seed=config.seed,
        nonnegative=False,
    )
    return mu, bias_df, als.fit(residual)


def _theta(bias_df, fitted) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """θ in the server's form, items sorted by id: (item ids, V, b) and the prior mean w0."""
    items: Any = bias_df.join(fitted.itemFactors.withColumnRenamed("id", "i"), "i").orderBy("item").toPandas()
    item_ids = items["item"].to_numpy().astype(str)
    V = np.stack(items["features"].to_numpy()).astype(np.float64)
    b = items["b"].to_numpy().astype(np.float64)
    spark_users: Any = fitted.userFactors.toPandas()
    user_factors = np.stack(spark_users["features"].to_numpy()).astype(np.float64)
    return item_ids, V, b, np.concatenate([user_factors.mean(axis=0), [1.0, 0.0]])


def _collect(frame) -> Ratings:
    table = frame.select("user", "item", "score").toPandas()
    return Ratings(
        table["user"].to_numpy().astype(str),
        table["item"].to_numpy().astype(str),
        table["score"].to_numpy().astype(np.float64),
    )
