"""Non-personalised baselines and the regularised bias model, all in Spark.

* **Popularity**: ``score(i) = |distinct users with i in train|``.
* **Trending**: the same count restricted to a time window ``[as_of - window_days, as_of]``; with
  ``backfill`` the items outside the window follow, ordered by overall popularity.
* **Bias model**: ``r_hat(u, i) = mu + b_u + b_i`` with ``mu`` the mean training rating and the
  biases minimising ``sum (r - mu - b_u - b_i)^2 + reg_user * sum b_u^2 + reg_item * sum b_i^2`` by
  alternating exact updates (coordinate descent, so the objective never increases):
  ``b_i = sum_{u in R(i)} (r_ui - mu - b_u) / (reg_item + |R(i)|)``, then
  ``b_u = sum_{i in R(u)} (r_ui - mu - b_i) / (reg_user + |R(u)|)``, starting from ``b_u = 0``.
  Unknown users or items get bias 0 at prediction time.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from watchnext.aggregates import exact_mean, exact_sum
from watchnext.checks import require_columns, timestamp_literal
from watchnext.constants import (
    COL_ITEM_IDX,
    COL_PREDICTION,
    COL_RATING,
    COL_SCORE,
    COL_TIMESTAMP,
    COL_USER_IDX,
)

log = logging.getLogger(__name__)

COL_BIAS = "bias"


def popularity_scores(
    train: DataFrame,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_score: str = COL_SCORE,
) -> DataFrame:
    """``(col_item, col_score: double)``: number of distinct train users per item."""
    require_columns(train, [col_user, col_item], "train")
    return train.groupBy(col_item).agg(F.countDistinct(col_user).cast("double").alias(col_score))


def trending_scores(
    train: DataFrame,
    window_days: float,
    as_of: dt.datetime | dt.date | str | None = None,
    *,
    backfill: bool = True,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_timestamp: str = COL_TIMESTAMP,
    col_score: str = COL_SCORE,
) -> DataFrame:
    """``(col_item, col_score: double)``: distinct users per item within the window before ``as_of``.

    The window is ``as_of - window_days <= timestamp <= as_of``; ``as_of`` None means the latest
    timestamp in ``train`` (found in Spark, not on the driver); a naive datetime is UTC, a date its
    midnight UTC. Without ``backfill`` only items with an event in the window are returned. With it,
    every train item is: ``score = window_users + users / (max_users + 1)``, so the order is by window
    users, then by overall popularity (the fraction is < 1).
    """
    require_columns(train, [col_user, col_item, col_timestamp], "train")
    if window_days <= 0:
        raise ValueError(f"window_days must be > 0, got {window_days}")
    if as_of is None:
        end = train.agg(F.max(col_timestamp).alias("_end"))
        events = train.crossJoin(F.broadcast(end))
    else:
        events = train.withColumn("_end", timestamp_literal(as_of, "as_of"))
    seconds = int(round(float(window_days) * 86400))
    start = F.col("_end") - F.make_dt_interval(secs=F.lit(seconds))
    in_window = (F.col(col_timestamp) >= start) & (F.col(col_timestamp) <= F.col("_end"))
    counts = events.groupBy(col_item).agg(
        F.countDistinct(F.when(in_window, F.col(col_user))).cast("double").alias("_w"),
        F.countDistinct(col_user).cast("double").alias("_all"),
    )
    if not backfill:
        return counts.filter(F.col("_w") > 0).select(col_item, F.col("_w").alias(col_score))
    top = counts.agg(F.max("_all").alias("_max"))
    return counts.crossJoin(F.broadcast(top)).select(
        col_item, (F.col("_w") + F.col("_all") / (F.col("_max") + 1.0)).alias(col_score)
    )


@dataclass(frozen=True)
class BiasModel:
    """``r_hat(u, i) = mu + b_u + b_i``; biases as frames ``(col_user, bias)`` and ``(col_item, bias)``."""

    mu: float
    user_bias: DataFrame
    item_bias: DataFrame
    col_user: str = COL_USER_IDX
    col_item: str = COL_ITEM_IDX


def fit_biases(
    train: DataFrame,
    reg_user: float = 10.0,
    reg_item: float = 10.0,
    iters: int = 5,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_rating: str = COL_RATING,
) -> BiasModel:
    """Fit the regularised bias model (module docstring) with ``iters`` item-then-user sweeps.

    ``mu`` is one scalar brought to the driver; the bias frames stay in Spark, each sweep's result
    checkpointed (reliably when the SparkContext has a checkpoint dir, else locally) so the lineage
    does not grow with ``iters``.
    """
    require_columns(train, [col_user, col_item, col_rating], "train")
    if reg_user < 0 or reg_item < 0:
        raise ValueError(f"bias regularisation must be >= 0, got reg_user={reg_user}, reg_item={reg_item}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    r = train.select(col_user, col_item, F.col(col_rating).cast("double").alias("_r"))
    mu_row = r.agg(exact_mean("_r").alias("mu"), F.count(F.lit(1)).alias("n")).head(1)[0]
    if not mu_row["n"]:
        raise ValueError("train is empty; the bias model is undefined")
    mu = float(mu_row["mu"])
    reliable = train.sparkSession.sparkContext.getCheckpointDir() is not None

    def sweep(frame: DataFrame, key: str, other: str, reg: float) -> DataFrame:
        resid = F.col("_r") - F.lit(mu) - F.coalesce(F.col(other), F.lit(0.0))
        bias = frame.groupBy(key).agg(
            (exact_sum(resid) / (F.lit(float(reg)) + F.count(F.lit(1)))).alias(COL_BIAS)
        )
        return bias.checkpoint() if reliable else bias.localCheckpoint()

    user_b: DataFrame | None = None
    item_b: DataFrame | None = None
    for _ in range(iters):
        if user_b is None:
            with_u = r.withColumn("_bu", F.lit(0.0))
        else:
            with_u = r.join(user_b.withColumnRenamed(COL_BIAS, "_bu"), col_user, "left")
        item_b = sweep(with_u, col_item, "_bu", reg_item)
        with_i = r.join(item_b.withColumnRenamed(COL_BIAS, "_bi"), col_item, "left")
        user_b = sweep(with_i, col_user, "_bi", reg_user)
    assert item_b is not None and user_b is not None
    log.info("bias model: mu=%.4f after %d sweeps (reg_user=%g, reg_item=%g)", mu, iters, reg_user, reg_item)
    return BiasModel(mu=mu, user_bias=user_b, item_bias=item_b, col_user=col_user, col_item=col_item)


def predict_biases(
    model: BiasModel,
    pairs: DataFrame,
    *,
    clip: tuple[float, float] | None = None,
    col_prediction: str = COL_PREDICTION,
) -> DataFrame:
    """``pairs`` plus ``col_prediction = mu + b_u + b_i`` (0 for an unknown user or item bias).

    ``clip=(lo, hi)`` clamps the prediction to the rating scale.
    """
    u, i = model.col_user, model.col_item
    require_columns(pairs, [u, i], "pairs")
    pred = F.lit(model.mu) + F.coalesce(F.col("_bu"), F.lit(0.0)) + F.coalesce(F.col("_bi"), F.lit(0.0))
    if clip is not None:
        pred = F.least(F.greatest(pred, F.lit(float(clip[0]))), F.lit(float(clip[1])))
    cols = [c for c in pairs.columns if c != col_prediction]
    return (
        pairs.join(model.user_bias.withColumnRenamed(COL_BIAS, "_bu"), u, "left")
        .join(model.item_bias.withColumnRenamed(COL_BIAS, "_bi"), i, "left")
        .withColumn(col_prediction, pred)
        .select(*cols, col_prediction)
    )
