"""Top-K ranking metrics, rating error and :func:`evaluate_all`, computed with Spark aggregations.

The beyond-accuracy metrics (coverage, novelty, diversity, popularity bias) live in
``evaluation/beyond_accuracy.py``; :func:`evaluate_all` combines both families.

Per-user work stays in Spark (joins, windows, ``groupBy``); only one aggregate row per metric family
comes back to the driver. Metric names are MLflow-safe (``precision_at_10``; MLflow rejects ``@``).

Ranking metrics (``ranking_metrics``), for a user ``u`` with relevant set ``R_u`` (the user's
held-out items; binary relevance) and top-K list ``L_u`` (ranks ``1..K``, possibly shorter than K),
``hits = |L_u ∩ R_u|`` and ``rel_i = 1`` if the item at rank ``i`` is in ``R_u``:

* ``precision_at_K = hits / K`` (K, not ``|L_u|``, so short lists are penalised);
* ``recall_at_K = hits / |R_u|``;
* ``ndcg_at_K = DCG / IDCG``, ``DCG = sum_i rel_i / log2(i + 1)``,
  ``IDCG = sum_{i=1}^{min(K, |R_u|)} 1 / log2(i + 1)``;
* ``map_at_K``: mean of ``AP@K = sum_i rel_i * P@i / |R_u|`` with ``P@i = (hits in ranks 1..i) / i``
  (normalised by ``|R_u|``, the project's definition, not by ``min(K, |R_u|)``);
* ``mrr_at_K``: ``1 / (rank of the first hit)``, 0 if no hit within K;
* ``hit_rate_at_K``: 1 if ``hits > 0`` else 0.

Each is averaged over the users of ``truth`` that have at least one relevant item; such a user with no
recommendations scores 0 on all of them. Users who only appear in ``recs`` are ignored.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from watchnext.aggregates import exact_mean, exact_sum
from watchnext.checks import require_columns
from watchnext.constants import (
    COL_GENRES,
    COL_ITEM_IDX,
    COL_PREDICTION,
    COL_RANK,
    COL_RATING,
    COL_SCORE,
    COL_USER_IDX,
)
from watchnext.evaluation.beyond_accuracy import (
    TrainStats,
    catalog_coverage,
    intra_list_diversity,
    novelty,
    popularity_bias,
    train_stats,
)

log = logging.getLogger(__name__)


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")


def top_k(
    recs: DataFrame,
    k: int,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_rank: str = COL_RANK,
    col_score: str = COL_SCORE,
) -> DataFrame:
    """Normalise recommendations to ``(user, item, rank)`` with ranks ``1..k`` per user.

    Uses ``col_rank`` (ascending) when ``recs`` has it, else ``col_score`` (descending); ties go to the
    smaller item. A duplicated (user, item) keeps its best position. Ranks are renumbered densely, so
    gaps in the given ranks close up.
    """
    _check_k(k)
    require_columns(recs, [col_user, col_item], "recs")
    if col_rank in recs.columns:
        best = F.min(col_rank).alias("_key")
        order = F.col("_key").asc()
    elif col_score in recs.columns:
        best = F.max(col_score).alias("_key")
        order = F.col("_key").desc()
    else:
        raise ValueError(f"recs needs a '{col_rank}' or a '{col_score}' column (has {recs.columns})")
    w = Window.partitionBy(col_user).orderBy(order, F.col(col_item).asc())
    return (
        recs.groupBy(col_user, col_item)
        .agg(best)
        .withColumn(col_rank, F.row_number().over(w))
        .filter(F.col(col_rank) <= k)
        .select(col_user, col_item, col_rank)
    )


def _relevant(
    truth: DataFrame,
    col_user: str,
    col_item: str,
    col_rating: str,
    relevance_threshold: float | None,
) -> DataFrame:
    require_columns(truth, [col_user, col_item], "truth")
    if relevance_threshold is not None:
        require_columns(truth, [col_rating], "truth")
        truth = truth.filter(F.col(col_rating) >= relevance_threshold)
    return truth.select(col_user, col_item).distinct()


def ranking_metrics(
    recs: DataFrame,
    truth: DataFrame,
    k: int | Sequence[int],
    *,
    relevance_threshold: float | None = None,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_rank: str = COL_RANK,
    col_score: str = COL_SCORE,
    col_rating: str = COL_RATING,
) -> dict[str, float]:
    """Precision, recall, NDCG, MAP, MRR and hit rate at ``k`` (definitions in the module docstring).

    ``k`` may be several cut-offs: every one is computed in the same pass (one top-``max(k)`` cut, one
    join, one aggregation), since the top ``k`` of a list is its ranks ``1..k``. ``recs`` is cut with
    :func:`top_k`. A ``truth`` row is relevant when ``relevance_threshold`` is None, else when its
    rating is ``>= relevance_threshold``. Raises ``ValueError`` if no user has a relevant item.
    """
    ks = _cutoffs(k)
    top = top_k(recs, ks[-1], col_user=col_user, col_item=col_item, col_rank=col_rank, col_score=col_score)
    return _ranking_from_top(top, truth, ks, relevance_threshold, col_user, col_item, col_rank, col_rating)


def _cutoffs(k: int | Sequence[int]) -> list[int]:
    ks = sorted({k} if isinstance(k, int) else set(k))
    if not ks:
        raise ValueError("no cut-off k given")
    for kk in ks:
        _check_k(kk)
    return ks


def ranking_metrics_per_user(
    recs: DataFrame,
    truth: DataFrame,
    k: int | Sequence[int],
    *,
    relevance_threshold: float | None = None,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_rank: str = COL_RANK,
    col_score: str = COL_SCORE,
    col_rating: str = COL_RATING,
) -> DataFrame:
    """The per-user values that :func:`ranking_metrics` averages: one row per user of ``truth`` with a
    relevant item, ``col_user`` and one double column per metric and cut-off, named as
    :func:`ranking_metrics` names them (``ndcg_at_10``, ...). A user without recommendations scores 0.
    Their (exact) mean over the rows is :func:`ranking_metrics`; the A/B analysis compares them between
    groups of users (``evaluation/experiments.py``)."""
    ks = _cutoffs(k)
    top = top_k(recs, ks[-1], col_user=col_user, col_item=col_item, col_rank=col_rank, col_score=col_score)
    return _per_user_from_top(top, truth, ks, relevance_threshold, col_user, col_item, col_rank, col_rating)


def _ranking_from_top(
    top: DataFrame,
    truth: DataFrame,
    ks: list[int],
    relevance_threshold: float | None,
    col_user: str,
    col_item: str,
    col_rank: str,
    col_rating: str,
) -> dict[str, float]:
    """:func:`ranking_metrics` on lists already cut by :func:`top_k` at ``ks[-1]`` (sorted ``ks``)."""
    per_user = _per_user_from_top(
        top, truth, ks, relevance_threshold, col_user, col_item, col_rank, col_rating
    )
    names = [c for c in per_user.columns if c != col_user]
    row = per_user.agg(
        F.count(F.lit(1)).alias("_users"), *[exact_mean(name).alias(name) for name in names]
    ).head(1)[0]
    if not row["_users"]:
        raise ValueError("truth has no user with a relevant item; ranking metrics are undefined")
    log.info("ranking metrics at %s over %d users", ks, row["_users"])
    return {name: float(row[name]) for name in names}


def _per_user_from_top(
    top: DataFrame,
    truth: DataFrame,
    ks: list[int],
    relevance_threshold: float | None,
    col_user: str,
    col_item: str,
    col_rank: str,
    col_rating: str,
) -> DataFrame:
    """:func:`ranking_metrics_per_user` on lists already cut by :func:`top_k` at ``ks[-1]``."""
    rel = _relevant(truth, col_user, col_item, col_rating, relevance_threshold)

    n_rel = rel.groupBy(col_user).agg(F.count(F.lit(1)).alias("_n_rel"))
    hits = top.join(rel, [col_user, col_item], "inner")
    rank = F.col(col_rank).cast("double")
    # hits up to and including each hit's rank: the same whatever the cut-off at or below that rank
    cum_hits = F.row_number().over(Window.partitionBy(col_user).orderBy(col_rank)).cast("double")
    sums = []
    for kk in ks:
        within = F.col(col_rank) <= kk
        sums += [
            F.sum(F.when(within, 1).otherwise(0)).cast("double").alias(f"_hits{kk}"),
            exact_sum(F.when(within, 1.0 / F.log2(rank + 1.0)).otherwise(0.0)).alias(f"_dcg{kk}"),
            exact_sum(F.when(within, F.col("_cum") / rank).otherwise(0.0)).alias(f"_ap{kk}"),
        ]
    per_user_hits = (
        hits.withColumn("_cum", cum_hits).groupBy(col_user).agg(*sums, F.min(rank).alias("_first"))
    )
    filled = [c for kk in ks for c in (f"_hits{kk}", f"_dcg{kk}", f"_ap{kk}")]
    per_user = n_rel.join(per_user_hits, col_user, "left").fillna(0.0, subset=filled)
    n = F.col("_n_rel").cast("double")
    names: dict[str, Column] = {}
    for kk in ks:
        # IDCG depends only on min(K, |R_u|): a K-long lookup array of prefix sums.
        idcg = [sum(1.0 / math.log2(i + 1) for i in range(1, j + 1)) for j in range(1, kk + 1)]
        idcg_at = F.element_at(
            F.array(*[F.lit(v) for v in idcg]), F.least(F.col("_n_rel"), F.lit(kk)).cast("int")
        )
        hits_k = F.col(f"_hits{kk}")
        names |= {
            f"precision_at_{kk}": hits_k / float(kk),
            f"recall_at_{kk}": hits_k / n,
            f"ndcg_at_{kk}": F.col(f"_dcg{kk}") / idcg_at,
            f"map_at_{kk}": F.col(f"_ap{kk}") / n,
            f"mrr_at_{kk}": F.when(F.col("_first") <= kk, 1.0 / F.col("_first")).otherwise(0.0),
            f"hit_rate_at_{kk}": (hits_k > 0).cast("double"),
        }
    return per_user.select(col_user, *[expr.cast("double").alias(name) for name, expr in names.items()])


def rmse_mae(
    predictions: DataFrame,
    truth: DataFrame,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_prediction: str = COL_PREDICTION,
    col_rating: str = COL_RATING,
) -> dict[str, float]:
    """RMSE and MAE of explicit predictions over the truth pairs that have a (non-null, non-NaN) one.

    ``rmse = sqrt(mean((prediction - rating)^2))``, ``mae = mean(|prediction - rating|)``; ``predictions``
    has one row per (user, item). Truth pairs without a usable prediction (e.g. ALS cold start) are
    left out and counted in the log. Raises ``ValueError`` when no pair is left.
    """
    require_columns(predictions, [col_user, col_item, col_prediction], "predictions")
    require_columns(truth, [col_user, col_item, col_rating], "truth")
    pred = F.col(col_prediction).cast("double")
    joined = truth.select(col_user, col_item, F.col(col_rating).cast("double").alias("_r")).join(
        predictions.select(col_user, col_item, pred.alias("_p")), [col_user, col_item], "left"
    )
    usable = F.col("_p").isNotNull() & ~F.isnan("_p")
    err = F.when(usable, F.col("_p") - F.col("_r"))
    row = joined.agg(
        F.sqrt(exact_mean(err * err)).alias("rmse"),
        exact_mean(F.abs(err)).alias("mae"),
        F.count(err).alias("n"),
        F.count(F.lit(1)).alias("total"),
    ).head(1)[0]
    if not row["n"]:
        raise ValueError("no truth pair has a prediction; RMSE/MAE are undefined")
    if row["n"] < row["total"]:
        missing = row["total"] - row["n"]
        log.info("rmse_mae: %d of %d truth pairs have no usable prediction", missing, row["total"])
    return {"rmse": float(row["rmse"]), "mae": float(row["mae"])}


def evaluate_all(
    recs: DataFrame,
    truth: DataFrame,
    k: int,
    *,
    train: DataFrame | TrainStats | None = None,
    n_items: int | None = None,
    item_features: DataFrame | None = None,
    relevance_threshold: float | None = None,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_rank: str = COL_RANK,
    col_score: str = COL_SCORE,
    col_rating: str = COL_RATING,
    col_features: str = COL_GENRES,
    ranking_ks: Sequence[int] = (),
) -> dict[str, float]:
    """Ranking metrics plus the beyond-accuracy metrics the inputs allow, all on the top ``k``;
    ``ranking_ks`` adds the ranking metrics at more cut-offs (computed in the same pass).

    Adds ``catalog_coverage_at_K`` (when ``n_items`` is given, or ``train`` to count its items),
    ``novelty_at_K``, ``exposure_gini_at_K`` and ``long_tail_share_at_K`` (when ``train`` is given),
    ``ild_at_K`` (when ``item_features`` is given). ``train``: the interactions, or their
    :class:`TrainStats` when several lists are scored against the same split.
    """
    cols: dict[str, Any] = {"col_user": col_user, "col_item": col_item}
    ks = _cutoffs([k, *ranking_ks])
    # One top-max(K) cut, persisted: the ranking metrics and the (up to four) beyond-accuracy jobs below
    # read it, where each used to shuffle and rank ``recs`` again.
    top_all = top_k(recs, ks[-1], col_rank=col_rank, col_score=col_score, **cols).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    try:
        out = _ranking_from_top(
            top_all, truth, ks, relevance_threshold, col_user, col_item, col_rank, col_rating
        )
        top = top_all.where(F.col(col_rank) <= k)
        out |= _beyond_accuracy(top, k, train, n_items, item_features, col_features, cols)
    finally:
        top_all.unpersist()
    return out


def _beyond_accuracy(
    top: DataFrame,
    k: int,
    train: DataFrame | TrainStats | None,
    n_items: int | None,
    item_features: DataFrame | None,
    col_features: str,
    cols: dict[str, Any],
) -> dict[str, float]:
    out: dict[str, float] = {}
    col_user, col_item = cols["col_user"], cols["col_item"]
    stats = train_stats(train, col_user, col_item) if train is not None else None
    n_catalog = n_items if n_items is not None or stats is None else stats.n_items
    if n_catalog:
        out[f"catalog_coverage_at_{k}"] = catalog_coverage(top, n_catalog, col_item=col_item)
    if stats is not None:
        out[f"novelty_at_{k}"] = novelty(top, stats, **cols)
        # A given n_items is the catalog; otherwise popularity_bias counts train ∪ recs items.
        bias = popularity_bias(top, stats, n_items=n_items, **cols)
        out[f"exposure_gini_at_{k}"] = bias["exposure_gini"]
        out[f"long_tail_share_at_{k}"] = bias["long_tail_share"]
        if stats is not train:
            stats.release()
    if item_features is not None:
        out[f"ild_at_{k}"] = intra_list_diversity(top, item_features, col_features=col_features, **cols)
    return out
