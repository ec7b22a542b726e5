"""Top-K ranking and beyond-accuracy metrics, computed with Spark aggregations.

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
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

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
from watchnext.grouped import by_key

log = logging.getLogger(__name__)


def _check_k(k: int) -> None:
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")


def _float(value: object) -> float:
    return float("nan") if value is None else float(value)  # type: ignore[arg-type]


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
    row = per_user.agg(
        F.count(F.lit(1)).alias("_users"), *[exact_mean(expr).alias(name) for name, expr in names.items()]
    ).first()
    if not row["_users"]:
        raise ValueError("truth has no user with a relevant item; ranking metrics are undefined")
    log.info("ranking metrics at %s over %d users", ks, row["_users"])
    return {name: float(row[name]) for name in names}


@dataclass(frozen=True)
class TrainStats:
    """The train aggregates behind novelty, popularity bias and the catalogue size, computed once
    for many models (the evaluate stage scores ~10 lists against the same train split).

    ``items``: ``(col_item, _u: distinct train users with the item, _p: train rows of the item)``,
    one row per train item, persisted (item-sized); ``n_users`` / ``n_items``: distinct train users
    and items."""

    items: DataFrame
    n_users: int
    n_items: int  # distinct train items (the rows of ``items``)
    col_item: str = COL_ITEM_IDX

    @classmethod
    def of(
        cls, train: DataFrame, *, col_user: str = COL_USER_IDX, col_item: str = COL_ITEM_IDX
    ) -> TrainStats:
        require_columns(train, [col_user, col_item], "train")
        items = (
            train.groupBy(col_item)
            .agg(F.countDistinct(col_user).cast("double").alias("_u"), F.count(F.lit(1)).alias("_p"))
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        n_users = int(train.agg(F.countDistinct(col_user)).first()[0])
        return cls(items=items, n_users=n_users, n_items=items.count(), col_item=col_item)

    def release(self) -> None:
        self.items.unpersist()


def _stats(train: DataFrame | TrainStats, col_user: str, col_item: str) -> TrainStats:
    if isinstance(train, TrainStats):
        if train.col_item != col_item:
            raise ValueError(f"train stats are keyed by {train.col_item!r}, not {col_item!r}")
        return train
    return TrainStats.of(train, col_user=col_user, col_item=col_item)


def catalog_coverage(recs: DataFrame, n_items: int, *, col_item: str = COL_ITEM_IDX) -> float:
    """Share of the catalog recommended to anyone: ``|distinct items in recs| / n_items``."""
    require_columns(recs, [col_item], "recs")
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    n = recs.agg(F.countDistinct(col_item).alias("n")).first()["n"]
    return float(n) / float(n_items)


def novelty(
    recs: DataFrame,
    train: DataFrame | TrainStats,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
) -> float:
    """Mean self-information of the recommended items.

    ``pop(i) = |distinct train users with i| / |distinct train users|``; novelty is the mean of
    ``-log2 pop(i)`` over the rows of ``recs`` (one row = one list slot). Rows whose item is not in
    train (undefined self-information) are left out and counted in the log. ``train``: the
    interactions, or their :class:`TrainStats`.
    """
    require_columns(recs, [col_item], "recs")
    stats = _stats(train, col_user, col_item)
    info = -F.log2(F.col("_u") / F.lit(float(stats.n_users)))
    row = (
        recs.select(col_item)
        .join(F.broadcast(stats.items.select(col_item, "_u")), col_item, "left")
        .agg(exact_mean(info).alias("novelty"), F.count(F.when(F.col("_u").isNull(), 1)).alias("unknown"))
        .first()
    )
    if row["unknown"]:
        log.info("novelty: %d recommendation rows have an item not in train; left out", row["unknown"])
    return _float(row["novelty"])


def intra_list_diversity(
    recs: DataFrame,
    item_features: DataFrame,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_features: str = COL_GENRES,
) -> float:
    """Mean over users of the mean pairwise dissimilarity within the user's list.

    ``item_features`` has one row per item. If ``col_features`` is an array (e.g. genres), the
    dissimilarity of items a, b is ``1 - |A ∩ B| / |A ∪ B|`` (Jaccard on the sets; two empty or null
    sets count as similarity 0, dissimilarity 1); otherwise (e.g. a cluster id) it is 1 when the
    values differ and 0 when equal, so ILD is the share of pairs in different clusters, and pairs with
    a null value are left out. Items without a features row are left out; users with fewer than two
    remaining items do not count. Returns NaN when no user has a pair.
    """
    require_columns(recs, [col_user, col_item], "recs")
    require_columns(item_features, [col_item, col_features], "item_features")
    table = _feature_table(item_features, col_item, col_features)
    # Each list's pairs scored in numpy on whole partitions of the lists shuffled by user, against the
    # item features broadcast as bit sets (arrays) or codes (scalars). As a self-join of the lists it
    # was ~80% of the evaluate stage (users x K^2 pair rows with two array functions each).
    feats = recs.sparkSession.sparkContext.broadcast(table)
    schema = T.StructType(
        [T.StructField("_u", recs.schema[col_user].dataType), T.StructField("_ild", T.DoubleType())]
    )

    def step(t: pa.Table) -> pa.Table:
        users, ild = _list_diversity(
            t.column(col_user).to_numpy(), t.column(col_item).to_numpy(), *feats.value
        )
        return pa.table({"_u": users, "_ild": ild})

    per_user = by_key(recs.select(col_user, col_item).dropna(), col_user, step, schema)
    try:
        return _float(per_user.agg(exact_mean("_ild").alias("ild")).first()["ild"])
    finally:
        feats.unpersist()


def _feature_table(item_features: DataFrame, col_item: str, col_features: str) -> tuple[np.ndarray, ...]:
    """``(item ids sorted, features in that order, is_set)``: each item's feature set as ``ceil(V / 64)``
    uint64 words of bits (``V`` distinct values; a null array is the empty set), or its scalar as an
    int64 code (-1 for null). One row per item (item-sized, collected); a duplicated item is an error."""
    ftype = item_features.schema[col_features].dataType
    rows = item_features.select(col_item, col_features).where(F.col(col_item).isNotNull()).toArrow()
    items = rows.column(col_item).to_numpy(zero_copy_only=False)
    order = np.argsort(items, kind="stable")
    items = items[order]
    if len(items) and (items[1:] == items[:-1]).any():
        dup = items[1:][items[1:] == items[:-1]]
        raise ValueError(f"item_features has {len(dup)} duplicated items in '{col_item}' (e.g. {dup[0]})")
    values = rows.column(col_features).to_pylist()
    values = [values[i] for i in order]
    if isinstance(ftype, T.ArrayType):
        vocab = {v: j for j, v in enumerate(sorted({x for xs in values if xs for x in xs}, key=repr))}
        bits = np.zeros((len(items), max(1, -(-len(vocab) // 64))), dtype=np.uint64)
        for r, xs in enumerate(values):
            for x in set(xs or ()):
                j = vocab[x]
                bits[r, j // 64] |= np.uint64(1) << np.uint64(j % 64)
        return items, bits, np.array(True)
    codes = {v: j for j, v in enumerate(sorted({v for v in values if v is not None}, key=repr))}
    return items, np.array([codes[v] if v is not None else -1 for v in values], np.int64), np.array(False)


_PAIR_CELLS = 1 << 22  # (lists x pairs) scored at once


def _list_diversity(
    users: np.ndarray, items: np.ndarray, feat_items: np.ndarray, feats: np.ndarray, is_set: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per user, the mean dissimilarity over the pairs of its distinct items that have features; users
    with no such pair (or, for scalars, no pair without a null) are left out."""
    order = np.lexsort((items, users))
    users, items = users[order], items[order]
    keep = np.ones(len(users), bool)
    keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])  # distinct (user, item)
    pos = np.searchsorted(feat_items, items).clip(0, max(len(feat_items) - 1, 0))
    # items without a features row are left out (all of them when there are no features)
    keep &= feat_items[pos] == items if len(feat_items) else False
    users, pos = users[keep], pos[keep]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.zeros(0, int)
    sizes = np.diff(np.r_[starts, len(users)])
    out_u, out_v = [], []
    for s in np.unique(sizes[sizes >= 2]):
        first = starts[sizes == s]
        ia, ib = np.triu_indices(s, 1)
        step = max(1, _PAIR_CELLS // len(ia))
        for c in range(0, len(first), step):
            rows = first[c : c + step, None] + np.arange(s)  # (lists, s) positions
            a, b = pos[rows[:, ia]], pos[rows[:, ib]]
            if is_set:
                fa, fb = feats[a], feats[b]  # (lists, pairs, words)
                inter = np.bitwise_count(fa & fb).sum(-1, dtype=np.int64)
                union = np.bitwise_count(fa | fb).sum(-1, dtype=np.int64)
                d = np.where(union == 0, 1.0, 1.0 - inter / np.maximum(union, 1))
                n = np.full(len(rows), len(ia), np.int64)
            else:
                ca, cb = feats[a], feats[b]
                valid = (ca >= 0) & (cb >= 0)
                d = np.where(valid, (ca != cb).astype(np.float64), 0.0)
                n = valid.sum(1)
            mean = d.sum(1) / np.maximum(n, 1)
            out_u.append(users[first[c : c + step]][n > 0])
            out_v.append(mean[n > 0])
    if not out_u:
        return users[:0], np.zeros(0)
    return np.concatenate(out_u), np.concatenate(out_v)


def popularity_bias(
    recs: DataFrame,
    train: DataFrame | TrainStats,
    *,
    n_items: int | None = None,
    head_share: float = 0.8,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
) -> dict[str, float]:
    """Exposure inequality and long-tail share of the recommendations.

    ``exposure_gini``: Gini coefficient of item exposure (number of ``recs`` rows per item) over the
    catalog of ``n_items`` items (default: distinct items of train ∪ recs), never-recommended items
    counting 0: with exposures sorted ascending ``x_1 <= ... <= x_n``,
    ``G = sum_i (2i - n - 1) x_i / (n * sum_i x_i)`` (0 = equal exposure, (n-1)/n = one item only).

    ``long_tail_share``: share of ``recs`` rows whose item is outside the head, where the head is the
    shortest prefix of train items sorted by interaction count (rows) descending, ties by item
    ascending, that holds at least ``head_share`` of train interactions (an item is in the head iff
    the interactions of the items before it are ``< head_share * total``). Items absent from train
    are long tail. ``train``: the interactions, or their :class:`TrainStats`.
    """
    require_columns(recs, [col_item], "recs")
    stats = _stats(train, col_user, col_item)
    if not 0.0 < head_share <= 1.0:
        raise ValueError(f"head_share must be in (0, 1], got {head_share}")
    if n_items is not None and n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    exposure = recs.groupBy(col_item).agg(F.count(F.lit(1)).alias("_x"))
    if n_items is None:
        catalog = (
            stats.items.select(col_item)
            .union(recs.select(col_item))
            .agg(F.countDistinct(col_item).alias("_n"))
        )
    else:
        catalog = recs.sparkSession.range(1).select(F.lit(n_items).cast("long").alias("_n"))
    # Gini over groups of equal exposure (a tiny frame: one row per distinct exposure value). A group
    # of c items with value x at sorted positions a+1..a+c adds x * c * (2a + c - n) to the numerator,
    # where a = (n - m) + (items with smaller exposure) and m = number of recommended items.
    hist = exposure.groupBy("_x").agg(F.count(F.lit(1)).alias("_c"))
    before = Window.orderBy("_x").rowsBetween(Window.unboundedPreceding, -1)
    hist = hist.withColumn("_b", F.coalesce(F.sum("_c").over(before), F.lit(0)))
    x, c, n = (F.col(name).cast("double") for name in ("_x", "_c", "_n"))
    m = F.sum("_c").over(Window.partitionBy())
    a = n - m + F.col("_b")
    row = (
        hist.crossJoin(catalog)
        .withColumn("_term", x * c * (2.0 * a + c - n))
        .withColumn("_m", m)
        .agg(
            exact_sum("_term").alias("num"),
            exact_sum(x * c).alias("total"),
            F.first("_n").alias("n"),
            F.first("_m").alias("m"),
        )
        .first()
    )
    if row["total"] is None:
        gini = float("nan")
    else:
        if row["m"] > row["n"]:
            raise ValueError(f"n_items={row['n']} is smaller than the {row['m']} distinct recommended items")
        gini = float(row["num"]) / (float(row["n"]) * float(row["total"]))

    # Un-partitioned windows (here and for the Gini histogram) run on one partition; they see one row
    # per item or per exposure value, never per user or interaction.
    pop = stats.items.select(col_item, "_p")
    order = Window.orderBy(F.col("_p").desc(), F.col(col_item).asc())
    order = order.rowsBetween(Window.unboundedPreceding, -1)
    head = (
        pop.withColumn("_before", F.coalesce(F.sum("_p").over(order), F.lit(0)).cast("double"))
        .withColumn("_total", F.sum("_p").over(Window.partitionBy()).cast("double"))
        .filter(F.col("_before") < F.lit(float(head_share)) * F.col("_total"))
        .select(col_item, F.lit(True).alias("_head"))
    )
    tail = (
        recs.select(col_item)
        .join(F.broadcast(head), col_item, "left")
        .agg(exact_mean(F.when(F.col("_head").isNull(), 1.0).otherwise(0.0)).alias("share"))
    )
    return {"exposure_gini": gini, "long_tail_share": _float(tail.first()["share"])}


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
    ).first()
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
    cols = {"col_user": col_user, "col_item": col_item}
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
    cols: dict[str, str],
) -> dict[str, float]:
    out: dict[str, float] = {}
    col_user, col_item = cols["col_user"], cols["col_item"]
    stats = _stats(train, col_user, col_item) if train is not None else None
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
