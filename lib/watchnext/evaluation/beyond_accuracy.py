"""Beyond-accuracy metrics of top-K lists: catalogue coverage, novelty, intra-list diversity and
popularity bias, computed with Spark aggregations (one aggregate row per metric comes to the driver)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext.aggregates import exact_mean, exact_sum
from watchnext.checks import require_columns
from watchnext.constants import (
    COL_GENRES,
    COL_ITEM_IDX,
    COL_USER_IDX,
)
from watchnext.grouped import by_key

log = logging.getLogger(__name__)


def float_or_nan(value: object) -> float:
    """``float(value)``, NaN for None (an aggregate over no rows)."""
    return float("nan") if value is None else float(value)  # type: ignore[arg-type]


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
        n_users = int(train.agg(F.countDistinct(col_user)).head(1)[0][0])
        return cls(items=items, n_users=n_users, n_items=items.count(), col_item=col_item)

    def release(self) -> None:
        self.items.unpersist()


def train_stats(train: DataFrame | TrainStats, col_user: str, col_item: str) -> TrainStats:
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
    n = recs.agg(F.countDistinct(col_item).alias("n")).head(1)[0]["n"]
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
    stats = train_stats(train, col_user, col_item)
    info = -F.log2(F.col("_u") / F.lit(float(stats.n_users)))
    row = (
        recs.select(col_item)
        .join(F.broadcast(stats.items.select(col_item, "_u")), col_item, "left")
        .agg(exact_mean(info).alias("novelty"), F.count(F.when(F.col("_u").isNull(), 1)).alias("unknown"))
        .head(1)[0]
    )
    if row["unknown"]:
        log.info("novelty: %d recommendation rows have an item not in train; left out", row["unknown"])
    return float_or_nan(row["novelty"])


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
    table = feature_table(item_features, col_item, col_features)
    # Each list's pairs scored in numpy on whole partitions of the lists shuffled by user, against the
    # item features broadcast as bit sets (arrays) or codes (scalars). As a self-join of the lists it
    # was ~80% of the evaluate stage (users x K^2 pair rows with two array functions each).
    feats = recs.sparkSession.sparkContext.broadcast(table)
    schema = T.StructType(
        [T.StructField("_u", recs.schema[col_user].dataType), T.StructField("_ild", T.DoubleType())]
    )

    def step(t: pa.Table) -> pa.Table:
        users, ild = list_diversity(
            t.column(col_user).to_numpy(), t.column(col_item).to_numpy(), *feats.value
        )
        return pa.table({"_u": users, "_ild": ild})

    per_user = by_key(recs.select(col_user, col_item).dropna(), col_user, step, schema)
    try:
        return float_or_nan(per_user.agg(exact_mean("_ild").alias("ild")).head(1)[0]["ild"])
    finally:
        feats.unpersist()


def feature_table(
    item_features: DataFrame, col_item: str, col_features: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def list_diversity(
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
    stats = train_stats(train, col_user, col_item)
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
        .head(1)[0]
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
    return {"exposure_gini": gini, "long_tail_share": float_or_nan(tail.head(1)[0]["share"])}
