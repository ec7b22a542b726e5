"""NCF training and evaluation data, built in Spark and written as Parquet shards for the ranks.

* :func:`positives`: distinct (user, item) pairs: every interaction, or ratings >= a threshold.
* :func:`training_rows`: each round ``r`` of ``rounds`` holds one row per positive with its
  ``num_negatives`` uniformly sampled items that the user never interacted with (an array column),
  drawn per user with ``numpy.random.default_rng([seed, user, r])`` inside ``applyInPandas``:
  seeded, independent of partitioning, exact exclusion by rejection sampling. Keeping a positive
  with its negatives lets the trainer use either the paper's pointwise log loss or a softmax over
  the positive and its negatives. Epoch ``e`` trains on round ``e % rounds``, so negatives are fresh
  each epoch as in the paper when ``rounds >= epochs``.
* :func:`sampled_eval_rows`: the paper's evaluation: per user one held-out item among
  ``num_negatives`` items the user never interacted with, sampled without replacement.
* :func:`training_positives` and :func:`sample_negatives`: the same rows without writing the
  negatives: the shards hold each user's positives (a user in one shard) and every rank draws the
  negatives of its users for each round with the same seeded generator, so the training data is the
  one :func:`training_rows` materialises, at a fraction of the Parquet written (what the stage does).
* :func:`write_shards`: Parquet partitioned by (round, shard); ``shard`` is a seeded hash of the row (or
  of the user), so every rank of any ``num_proc`` reads the shards ``s % size == rank`` and gets a
  near-equal share. Nothing is collected to the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext.checks import require_columns
from watchnext.constants import COL_ITEM_IDX, COL_RATING, COL_TIMESTAMP, COL_USER_IDX
from watchnext.kernels import run_starts

log = logging.getLogger(__name__)

COL_LABEL = "label"
COL_NEGATIVES = "negatives"
COL_ROUND = "round"
COL_SHARD = "shard"

_EVAL_ROWS = T.StructType(
    [
        T.StructField(COL_USER_IDX, T.IntegerType(), False),
        T.StructField(COL_ITEM_IDX, T.IntegerType(), False),
        T.StructField(COL_LABEL, T.FloatType(), False),
        T.StructField(COL_ROUND, T.IntegerType(), False),
    ]
)
_TRAIN_ROWS = T.StructType(
    [
        T.StructField(COL_USER_IDX, T.IntegerType(), False),
        T.StructField(COL_ITEM_IDX, T.IntegerType(), False),
        T.StructField(COL_NEGATIVES, T.ArrayType(T.IntegerType(), False), False),
        T.StructField(COL_ROUND, T.IntegerType(), False),
    ]
)


@dataclass(frozen=True)
class NegativeSampling:
    """Negatives drawn in the ranks (:func:`sample_negatives`): ``per_positive`` unseen items per
    positive and round, ``rounds`` rounds, from ``numpy.random.default_rng([seed, user, round])``."""

    n_items: int
    per_positive: int
    rounds: int
    seed: int


@dataclass(frozen=True)
class ShardedData:
    """Where a rank finds its data, and how much there is. With ``sampling``, the shards hold the
    positives only (one round, a user's rows in one shard) and each rank draws their negatives."""

    path: str
    rounds: int
    shards: int
    rows: int  # per round (every round has the same rows)
    sampling: NegativeSampling | None = None


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
    """``(user_idx, item_idx, negatives, round)``: per round every positive with ``num_negatives``
    sampled unseen items.

    A user who has interacted with every item has no negatives to draw: their positives are left out
    of training, with a warning on the executor.
    """
    require_columns(pos, [COL_USER_IDX, COL_ITEM_IDX], "positives")
    if n_items < 1 or num_negatives < 1 or rounds < 1:
        raise ValueError(
            f"n_items, num_negatives and rounds must be >= 1: {n_items}, {num_negatives}, {rounds}"
        )

    import pyarrow as pa

    schema = pa.schema(
        [
            pa.field(COL_USER_IDX, pa.int32(), False),
            pa.field(COL_ITEM_IDX, pa.int32(), False),
            pa.field(COL_NEGATIVES, pa.list_(pa.field("element", pa.int32(), False)), False),
            pa.field(COL_ROUND, pa.int32(), False),
        ]
    )

    def per_user(table: pa.Table) -> pa.Table:
        # Arrow in and out: the negatives go back as one list array over a flat buffer (a pandas column
        # of per-row arrays cost four times as long to build and convert).
        user = int(table.column(COL_USER_IDX)[0].as_py())
        items = np.unique(table.column(COL_ITEM_IDX).to_numpy().astype(np.int64))
        if items.max() >= n_items or items.min() < 0:
            raise ValueError(f"user {user} has item_idx outside [0, {n_items}): n_items is too small")
        if len(items) >= n_items:
            log.warning("user %d interacted with every item: no negatives, left out of training", user)
            return schema.empty_table()
        negatives = np.concatenate(
            [
                _sample_unseen(
                    np.random.default_rng([seed, user, r]), items, n_items, len(items) * num_negatives
                )
                for r in range(rounds)
            ]
        )
        n = len(items) * rounds  # round-major: round 0's rows, then round 1's, ...
        offsets = np.arange(0, n * num_negatives + 1, num_negatives, dtype=np.int32)
        return pa.Table.from_arrays(
            [
                pa.array(np.full(n, user, np.int32)),
                pa.array(np.tile(items.astype(np.int32), rounds)),
                pa.ListArray.from_arrays(pa.array(offsets), pa.array(negatives, pa.int32())).cast(
                    schema.field(COL_NEGATIVES).type
                ),
                pa.array(np.repeat(np.arange(rounds, dtype=np.int32), len(items))),
            ],
            schema=schema,
        )

    return pos.groupBy(COL_USER_IDX).applyInArrow(per_user, _TRAIN_ROWS)


def training_positives(pos: DataFrame, n_items: int) -> DataFrame:
    """``(user_idx, item_idx, round = 0)``: the positives :func:`training_rows` would keep, for the
    ranks to draw their negatives (:func:`sample_negatives`, the same draws) instead of writing them.

    Raises ``ValueError`` for an item outside ``[0, n_items)``; a user who has interacted with every
    item has no negatives to draw and is left out, with a warning."""
    require_columns(pos, [COL_USER_IDX, COL_ITEM_IDX], "positives")
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    lo, hi = pos.agg(F.min(COL_ITEM_IDX), F.max(COL_ITEM_IDX)).head(1)[0]
    if hi is not None and (lo < 0 or hi >= n_items):
        raise ValueError(f"positives have item_idx {lo}..{hi}, outside [0, {n_items}): n_items is too small")
    full = pos.groupBy(COL_USER_IDX).count().where(F.col("count") >= n_items).select(COL_USER_IDX)
    for row in full.collect():
        log.warning("user %d interacted with every item: no negatives, left out of training", row[0])
    return pos.join(F.broadcast(full), COL_USER_IDX, "left_anti").select(
        F.col(COL_USER_IDX).cast("int"), F.col(COL_ITEM_IDX).cast("int"), F.lit(0).alias(COL_ROUND)
    )


def sample_negatives(
    user: np.ndarray, item: np.ndarray, sampling: NegativeSampling, round_: int
) -> np.ndarray:
    """``(rows, per_positive)`` negatives of round ``round_`` for positives sorted by (user, item), a
    user's positives all present: per user the draws of :func:`training_rows` for that round."""
    k = sampling.per_positive
    out = np.empty((len(user), k), dtype=np.int32)
    starts = np.flatnonzero(run_starts(user))
    for a, b in zip(starts, np.r_[starts[1:], len(user)], strict=True):
        items = item[a:b].astype(np.int64)
        rng = np.random.default_rng([sampling.seed, int(user[a]), round_])
        out[a:b] = _sample_unseen(rng, items, sampling.n_items, (b - a) * k).reshape(b - a, k)
    return out


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

    import pyarrow as pa

    schema = pa.schema(
        [
            pa.field(COL_USER_IDX, pa.int32(), False),
            pa.field(COL_ITEM_IDX, pa.int32(), False),
            pa.field(COL_LABEL, pa.float32(), False),
            pa.field(COL_ROUND, pa.int32(), False),
        ]
    )

    def per_user(table: pa.Table) -> pa.Table:
        # Arrow in and out (a pandas frame per user cost ~1 ms of overhead each)
        user = int(table.column(COL_USER_IDX)[0].as_py())
        items = table.column(COL_ITEM_IDX).to_numpy().astype(np.int64)
        labels = table.column(COL_LABEL).to_numpy()
        target = items[labels == 1.0]
        if len(target) != 1:
            raise ValueError(f"user {user} has {len(target)} held-out items; expected exactly one")
        seen = np.unique(items)
        pool = np.setdiff1d(np.arange(n_items, dtype=np.int64), seen, assume_unique=True)
        rng = np.random.default_rng([seed, user])
        neg = rng.choice(pool, size=min(num_negatives, len(pool)), replace=False) if len(pool) else pool
        n = 1 + len(neg)
        return pa.Table.from_arrays(
            [
                pa.array(np.full(n, user, np.int32)),
                pa.array(np.concatenate([target, np.sort(neg)]).astype(np.int32)),
                pa.array(np.concatenate([[1.0], np.zeros(len(neg))]).astype(np.float32)),
                pa.array(np.zeros(n, np.int32)),
            ],
            schema=schema,
        )

    return tagged.groupBy(COL_USER_IDX).applyInArrow(per_user, _EVAL_ROWS)


def shard_of(seed: int, shards: int, *cols: str) -> Column:
    """``pmod(xxhash64(seed, cols...), shards)``: a seeded, partitioning-independent shard."""
    return F.pmod(F.xxhash64(F.lit(int(seed)).cast("long"), *[F.col(c) for c in cols]), F.lit(shards)).cast(
        "int"
    )


def write_shards(
    rows: DataFrame,
    path: str,
    shards: int,
    seed: int,
    *,
    by_user: bool = False,
    sampling: NegativeSampling | None = None,
) -> ShardedData:
    """Write ``rows`` (training rows, labelled evaluation rows, or with ``sampling`` the positives of
    :func:`training_positives`) to ``path`` as Parquet partitioned by (round, shard).

    ``by_user`` (always with ``sampling``): all rows of a user in one shard (evaluation sets, scored
    per user; positives whose negatives a rank draws); otherwise each row is hashed on its own key,
    so shards are balanced even when users are not.
    """
    require_columns(rows, [COL_USER_IDX, COL_ITEM_IDX, COL_ROUND], "rows")
    if COL_LABEL not in rows.columns and COL_NEGATIVES not in rows.columns and sampling is None:
        raise ValueError(f"rows need a {COL_LABEL!r} or a {COL_NEGATIVES!r} column, got {rows.columns}")
    by_user = by_user or sampling is not None
    key = [COL_USER_IDX] if by_user else [COL_USER_IDX, COL_ITEM_IDX, COL_ROUND]
    if not by_user and COL_LABEL in rows.columns:
        key.append(COL_LABEL)
    out = rows.withColumn(COL_SHARD, shard_of(seed, shards, *key))
    (
        out.repartition(COL_ROUND, COL_SHARD)
        .write.mode("overwrite")
        .partitionBy(COL_ROUND, COL_SHARD)
        .parquet(path)
    )
    # Counted from the files just written: counting ``out`` would run the sampling a second time.
    written = rows.sparkSession.read.parquet(path)
    stats = written.groupBy(COL_ROUND).count().agg(F.min("count"), F.max("count"), F.count("*")).head(1)[0]
    n_rounds = int(stats[2])
    lo, hi = (int(stats[0]), int(stats[1])) if n_rounds else (0, 0)
    if lo != hi:
        raise AssertionError(f"rounds written to {path} differ in size: {lo} .. {hi} rows")
    if sampling is not None:
        log.info("wrote %d positives in %d shards to %s (negatives drawn in the ranks)", hi, shards, path)
        return ShardedData(path=path, rounds=sampling.rounds, shards=shards, rows=hi, sampling=sampling)
    log.info("wrote %d rounds x %d rows in %d shards to %s", n_rounds, hi, shards, path)
    return ShardedData(path=path, rounds=n_rounds, shards=shards, rows=hi)


def read_rank_shards(data: ShardedData, rank: int, size: int, round_: int = 0) -> dict[str, np.ndarray]:
    """The rows of round ``round_`` in the shards ``s % size == rank`` as numpy arrays (``negatives``
    as a 2-D array; with ``data.sampling`` drawn here for the round), sorted by (user, item, label):
    the same whatever order Spark wrote the files in."""
    import pyarrow.dataset as ds

    mine = [s for s in range(data.shards) if s % size == rank]
    dataset = ds.dataset(data.path, format="parquet", partitioning="hive")
    names = set(dataset.schema.names)
    cols = [COL_USER_IDX, COL_ITEM_IDX] + [c for c in (COL_LABEL, COL_NEGATIVES) if c in names]
    stored = 0 if data.sampling is not None else round_
    table = dataset.to_table(
        columns=cols, filter=(ds.field(COL_ROUND) == stored) & ds.field(COL_SHARD).isin(mine)
    )
    out: dict[str, np.ndarray] = {
        COL_USER_IDX: table.column(COL_USER_IDX).to_numpy().astype(np.int32),
        COL_ITEM_IDX: table.column(COL_ITEM_IDX).to_numpy().astype(np.int32),
    }
    if COL_LABEL in names:
        out[COL_LABEL] = table.column(COL_LABEL).to_numpy().astype(np.float32)
    if COL_NEGATIVES in names:
        lists = table.column(COL_NEGATIVES).combine_chunks()
        width = int(lists.value_lengths().to_numpy().max()) if len(lists) else 0
        flat = lists.flatten().to_numpy().astype(np.int32)
        if len(flat) != width * len(lists):
            raise ValueError(f"{data.path}: rows of round {round_} have different negative counts")
        out[COL_NEGATIVES] = flat.reshape(len(lists), width)
    keys = [out[COL_USER_IDX], out[COL_ITEM_IDX]] + ([out[COL_LABEL]] if COL_LABEL in out else [])
    order = np.lexsort(keys[::-1])
    out = {k: v[order] for k, v in out.items()}
    if data.sampling is not None:
        out[COL_NEGATIVES] = sample_negatives(out[COL_USER_IDX], out[COL_ITEM_IDX], data.sampling, round_)
    return out


def iter_batches(
    arrays: dict[str, np.ndarray], batch_size: int, steps: int, rng: np.random.Generator
) -> Iterator[dict[str, np.ndarray]]:
    """``steps`` shuffled batches (the same keys as ``arrays``); when the rank holds fewer than
    ``steps * batch_size`` rows it wraps around (every rank must run the same number of allreduce
    steps, or the others wait forever)."""
    n = len(arrays[COL_USER_IDX])
    if n == 0:
        raise ValueError("this rank has no training rows: use fewer processes or more shards")
    order = rng.permutation(n)
    need = steps * batch_size
    if need > n:
        order = np.concatenate([order, np.resize(rng.permutation(n), need - n)])
    for s in range(steps):
        idx = order[s * batch_size : (s + 1) * batch_size]
        if len(idx) == 0:
            return
        yield {k: v[idx] for k, v in arrays.items()}
