"""NCF training and evaluation data, built in Spark and written as Parquet shards for the ranks.

* :func:`positives`: distinct (user, item) pairs: every interaction, or ratings >= a threshold.
* :func:`training_rows`: each round ``r`` of ``rounds`` holds every positive (label 1) and
  ``num_negatives`` uniformly sampled items per positive that the user never interacted with
  (label 0), drawn per user with ``numpy.random.default_rng([seed, user, r])`` inside
  ``applyInPandas``: seeded, independent of partitioning, exact exclusion by rejection sampling.
  Epoch ``e`` trains on round ``e % rounds``, so negatives are fresh each epoch as in the paper
  when ``rounds >= epochs``.
* :func:`sampled_eval_rows`: the paper's evaluation: per user one held-out item among
  ``num_negatives`` items the user never interacted with, sampled without replacement.
* :func:`write_shards`: Parquet partitioned by (round, shard); ``shard`` is a seeded hash of the row, so
  every rank of any ``num_proc`` reads the shards ``s % size == rank`` and gets a near-equal share.
  Nothing is collected to the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext.checks import require_columns
from watchnext.constants import COL_ITEM_IDX, COL_RATING, COL_TIMESTAMP, COL_USER_IDX

log = logging.getLogger(__name__)

COL_LABEL = "label"
COL_ROUND = "round"
COL_SHARD = "shard"

_ROWS = T.StructType(
    [
        T.StructField(COL_USER_IDX, T.IntegerType(), False),
        T.StructField(COL_ITEM_IDX, T.IntegerType(), False),
        T.StructField(COL_LABEL, T.FloatType(), False),
        T.StructField(COL_ROUND, T.IntegerType(), False),
    ]
)


@dataclass(frozen=True)
class ShardedData:
    """Where a rank finds its data, and how much there is."""

    path: str
    rounds: int
    shards: int
    rows: int  # per round (every round has the same positives and negatives count)


def positives(
    interactions: DataFrame,
    threshold: float | None = None,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_rating: str = COL_RATING,
) -> DataFrame:
    """Distinct ``(user_idx, item_idx)`` positives: all interactions, or those rated >= ``threshold``."""
    require_columns(
        interactions, [col_user, col_item] + ([col_rating] if threshold is not None else []), "interactions"
    )
    df = interactions if threshold is None else interactions.where(F.col(col_rating) >= threshold)
    return df.select(F.col(col_user).cast("int"), F.col(col_item).cast("int")).distinct()


def _sample_unseen(rng: np.random.Generator, seen: np.ndarray, n_items: int, n: int) -> np.ndarray:
    """``n`` uniform draws from ``[0, n_items)`` minus the sorted ``seen`` (with replacement)."""
    out = np.empty(0, dtype=np.int32)
    while len(out) < n:
        draw = rng.integers(0, n_items, size=max(n - len(out), 16) * 2, dtype=np.int64)
        draw = draw[~np.isin(draw, seen, assume_unique=False)]
        out = np.concatenate([out, draw[: n - len(out)].astype(np.int32)])
    return out


def training_rows(pos: DataFrame, n_items: int, num_negatives: int, rounds: int, seed: int) -> DataFrame:
    """``(user_idx, item_idx, label, round)``: per round every positive and its sampled negatives.

    A user who has interacted with every item gets no negatives (logged as a warning on the executor).
    """
    require_columns(pos, [COL_USER_IDX, COL_ITEM_IDX], "positives")
    if n_items < 1 or num_negatives < 1 or rounds < 1:
        raise ValueError(
            f"n_items, num_negatives and rounds must be >= 1: {n_items}, {num_negatives}, {rounds}"
        )

    def per_user(pdf: pd.DataFrame) -> pd.DataFrame:
        user = int(pdf[COL_USER_IDX].iloc[0])
        items = np.unique(pdf[COL_ITEM_IDX].to_numpy(dtype=np.int64))
        if items.max() >= n_items or items.min() < 0:
            raise ValueError(f"user {user} has item_idx outside [0, {n_items}): n_items is too small")
        n_neg = len(items) * num_negatives if len(items) < n_items else 0
        if n_neg == 0:
            log.warning("user %d interacted with every item: no negatives", user)
        frames = []
        for r in range(rounds):
            neg = _sample_unseen(np.random.default_rng([seed, user, r]), items, n_items, n_neg)
            frames.append(
                pd.DataFrame(
                    {
                        COL_USER_IDX: np.int32(user),
                        COL_ITEM_IDX: np.concatenate([items.astype(np.int32), neg]),
                        COL_LABEL: np.concatenate(
                            [np.ones(len(items), np.float32), np.zeros(len(neg), np.float32)]
                        ),
                        COL_ROUND: np.int32(r),
                    }
                )
            )
        return pd.concat(frames, ignore_index=True)

    return pos.groupBy(COL_USER_IDX).applyInPandas(per_user, _ROWS)


def holdout_latest(
    test: DataFrame,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_timestamp: str = COL_TIMESTAMP,
) -> DataFrame:
    """One held-out ``(user_idx, item_idx)`` per user of ``test``: the latest (ties: the smaller item)."""
    require_columns(test, [col_user, col_item, col_timestamp], "test")
    w = Window.partitionBy(col_user).orderBy(F.col(col_timestamp).desc_nulls_last(), F.col(col_item))
    return (
        test.withColumn("_pos", F.row_number().over(w))
        .where("_pos = 1")
        .select(F.col(col_user).cast("int"), F.col(col_item).cast("int"))
    )


def sampled_eval_rows(
    holdout: DataFrame, known: DataFrame, n_items: int, num_negatives: int, seed: int
) -> DataFrame:
    """Per held-out ``(user, item)``: that item (label 1) and ``num_negatives`` distinct items the user
    has no interaction with in ``known`` (label 0), sampled without replacement; ``round`` is 0.

    A user with fewer unseen items than ``num_negatives`` gets all of them.
    """
    require_columns(holdout, [COL_USER_IDX, COL_ITEM_IDX], "holdout")
    require_columns(known, [COL_USER_IDX, COL_ITEM_IDX], "known")
    tagged = holdout.select(
        COL_USER_IDX, COL_ITEM_IDX, F.lit(1.0).cast("float").alias(COL_LABEL)
    ).unionByName(
        known.select(
            F.col(COL_USER_IDX).cast("int"),
            F.col(COL_ITEM_IDX).cast("int"),
            F.lit(0.0).cast("float").alias(COL_LABEL),
        ).join(holdout.select(COL_USER_IDX), COL_USER_IDX, "left_semi")
    )

    def per_user(pdf: pd.DataFrame) -> pd.DataFrame:
        user = int(pdf[COL_USER_IDX].iloc[0])
        target = pdf.loc[pdf[COL_LABEL] == 1.0, COL_ITEM_IDX].to_numpy(dtype=np.int64)
        if len(target) != 1:
            raise ValueError(f"user {user} has {len(target)} held-out items; expected exactly one")
        seen = np.unique(pdf[COL_ITEM_IDX].to_numpy(dtype=np.int64))
        pool = np.setdiff1d(np.arange(n_items, dtype=np.int64), seen, assume_unique=True)
        rng = np.random.default_rng([seed, user])
        neg = rng.choice(pool, size=min(num_negatives, len(pool)), replace=False) if len(pool) else pool
        return pd.DataFrame(
            {
                COL_USER_IDX: np.int32(user),
                COL_ITEM_IDX: np.concatenate([target, np.sort(neg)]).astype(np.int32),
                COL_LABEL: np.concatenate([[1.0], np.zeros(len(neg))]).astype(np.float32),
                COL_ROUND: np.int32(0),
            }
        )

    return tagged.groupBy(COL_USER_IDX).applyInPandas(per_user, _ROWS)


def shard_of(seed: int, shards: int, *cols: str) -> Column:
    """``pmod(xxhash64(seed, cols...), shards)``: a seeded, partitioning-independent shard."""
    return F.pmod(F.xxhash64(F.lit(int(seed)).cast("long"), *[F.col(c) for c in cols]), F.lit(shards)).cast(
        "int"
    )


def write_shards(rows: DataFrame, path: str, shards: int, seed: int, *, by_user: bool = False) -> ShardedData:
    """Write ``rows`` (the ``_ROWS`` schema) to ``path`` as Parquet partitioned by (round, shard).

    ``by_user``: all rows of a user in one shard (evaluation sets, scored per user); otherwise each row
    is hashed on its own, so shards are balanced even when users are not.
    """
    require_columns(rows, [c.name for c in _ROWS.fields], "rows")
    key = [COL_USER_IDX] if by_user else [COL_USER_IDX, COL_ITEM_IDX, COL_LABEL, COL_ROUND]
    out = rows.withColumn(COL_SHARD, shard_of(seed, shards, *key))
    (
        out.repartition(COL_ROUND, COL_SHARD)
        .write.mode("overwrite")
        .partitionBy(COL_ROUND, COL_SHARD)
        .parquet(path)
    )
    # Counted from the files just written: counting ``out`` would run the sampling a second time.
    written = rows.sparkSession.read.parquet(path)
    stats = written.groupBy(COL_ROUND).count().agg(F.min("count"), F.max("count"), F.count("*")).first()
    n_rounds = int(stats[2]) if stats is not None else 0
    lo, hi = (int(stats[0]), int(stats[1])) if n_rounds else (0, 0)
    if lo != hi:
        raise AssertionError(f"rounds written to {path} differ in size: {lo} .. {hi} rows")
    log.info("wrote %d rounds x %d rows in %d shards to %s", n_rounds, hi, shards, path)
    return ShardedData(path=path, rounds=n_rounds, shards=shards, rows=hi)


def read_rank_shards(data: ShardedData, rank: int, size: int, round_: int = 0) -> dict[str, np.ndarray]:
    """The rows of round ``round_`` in the shards ``s % size == rank``, as numpy arrays sorted by
    (user, item, label): the same arrays whatever order Spark wrote the files in."""
    import pyarrow.dataset as ds

    mine = [s for s in range(data.shards) if s % size == rank]
    dataset = ds.dataset(data.path, format="parquet", partitioning="hive")
    table = dataset.to_table(
        columns=[COL_USER_IDX, COL_ITEM_IDX, COL_LABEL],
        filter=(ds.field(COL_ROUND) == round_) & ds.field(COL_SHARD).isin(mine),
    )
    u = table.column(COL_USER_IDX).to_numpy().astype(np.int32)
    i = table.column(COL_ITEM_IDX).to_numpy().astype(np.int32)
    y = table.column(COL_LABEL).to_numpy().astype(np.float32)
    order = np.lexsort((y, i, u))
    return {COL_USER_IDX: u[order], COL_ITEM_IDX: i[order], COL_LABEL: y[order]}


def iter_batches(
    arrays: dict[str, np.ndarray], batch_size: int, steps: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``steps`` shuffled batches; when the rank holds fewer than ``steps * batch_size`` rows it wraps
    around (every rank must run the same number of allreduce steps, or the others wait forever)."""
    n = len(arrays[COL_LABEL])
    if n == 0:
        raise ValueError("this rank has no training rows: use fewer processes or more shards")
    order = rng.permutation(n)
    need = steps * batch_size
    if need > n:
        order = np.concatenate([order, np.resize(rng.permutation(n), need - n)])
    u, i, y = arrays[COL_USER_IDX], arrays[COL_ITEM_IDX], arrays[COL_LABEL]
    for s in range(steps):
        idx = order[s * batch_size : (s + 1) * batch_size]
        if len(idx) == 0:
            return
        yield u[idx], i[idx], y[idx]
