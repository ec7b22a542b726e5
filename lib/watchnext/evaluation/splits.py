"""Train/test splits of an interactions frame, deterministic regardless of partitioning.

Every split returns ``(train, test)`` with the input's schema and follows the same rules:

* **Randomness is a hash, not ``rand()``.** A row's draw is ``xxhash64(seed, user, item)`` (Spark's
  built-in, itself seeded with 42), so the result depends only on the data and ``seed``, never on
  partitioning or row order. All rows of one (user, item) pair share a draw, so a pair never
  straddles train and test.
* **Warm test only.** After assignment, test rows whose user or item does not occur in train are
  removed from test (a model cannot score them); they are in neither frame. ``time_split`` also
  removes test rows whose (user, item) pair occurs in train (repeat consumption). The number removed
  is logged at INFO (counting costs one extra pass, so only when INFO is enabled for this logger).
  So ``train ∪ test`` equals the input minus exactly those rows.
* A null timestamp counts as the earliest possible time.
"""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from watchnext.checks import require_columns, timestamp_literal
from watchnext.constants import COL_ITEM_IDX, COL_TIMESTAMP, COL_USER_IDX

log = logging.getLogger(__name__)

# dt.UTC is 3.11+; the project also supports 3.10.
_HASH_BITS = 53  # a double holds 53 bits exactly: u = (hash & (2^53 - 1)) / 2^53 is uniform in [0, 1)


def _check_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")


def pair_hash(seed: int, col_user: str = COL_USER_IDX, col_item: str = COL_ITEM_IDX) -> Column:
    """``xxhash64(seed as bigint, user, item)``: the seeded per-pair draw every split uses."""
    return F.xxhash64(F.lit(int(seed)).cast("long"), F.col(col_user), F.col(col_item))


def _uniform(seed: int, col_user: str, col_item: str) -> Column:
    mask = F.lit((1 << _HASH_BITS) - 1).cast("long")
    return pair_hash(seed, col_user, col_item).bitwiseAND(mask).cast("double") / float(1 << _HASH_BITS)


def _warm_test(
    train: DataFrame,
    test: DataFrame,
    col_user: str,
    col_item: str,
    split: str,
    drop_repeats: bool = False,
    counts: dict[str, int] | None = None,
) -> DataFrame:
    """Drop test rows whose user or item is absent from train (and, optionally, pairs seen in train).

    The counts (``n`` test rows before, ``dropped`` and why) are logged at INFO; ``counts``, when
    given, receives them (one aggregation serves both)."""
    users = train.select(col_user).distinct().withColumn("_in_u", F.lit(True))
    items = train.select(col_item).distinct().withColumn("_in_i", F.lit(True))
    flagged = test.join(users, col_user, "left").join(items, col_item, "left")
    keep = F.col("_in_u").isNotNull() & F.col("_in_i").isNotNull()
    if drop_repeats:
        pairs = train.select(col_user, col_item).distinct().withColumn("_in_p", F.lit(True))
        flagged = flagged.join(pairs, [col_user, col_item], "left")
        keep = keep & F.col("_in_p").isNull()
    else:
        flagged = flagged.withColumn("_in_p", F.lit(None).cast("boolean"))
    if counts is not None or log.isEnabledFor(logging.INFO):
        row = flagged.agg(
            F.count(F.lit(1)).alias("n"),
            F.count(F.when(F.col("_in_u").isNull(), 1)).alias("cold_user"),
            F.count(F.when(F.col("_in_i").isNull(), 1)).alias("cold_item"),
            F.count(F.when(F.col("_in_p").isNotNull(), 1)).alias("repeat"),
            F.count(F.when(~keep, 1)).alias("dropped"),
        ).head(1)[0]
        if counts is not None:
            counts.update(row.asDict())
        log.info(
            "%s: dropped %d of %d test rows (user not in train: %d, item not in train: %d, "
            "pair already in train: %d)",
            split,
            row["dropped"],
            row["n"],
            row["cold_user"],
            row["cold_item"],
            row["repeat"],
        )
    return flagged.filter(keep).select(*test.columns)


def random_split(
    df: DataFrame,
    ratio: float = 0.75,
    seed: int = 42,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    counts: dict[str, int] | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Global random split: a row is in train iff ``u(seed, user, item) < ratio``.

    ``u = (xxhash64(seed, user, item) & (2^53 - 1)) / 2^53``, uniform in [0, 1). The train share is
    ``ratio`` in expectation, not exactly. Cold test rows are then dropped (module docstring).
    """
    require_columns(df, [col_user, col_item], "interactions")
    _check_ratio(ratio)
    in_train = _uniform(seed, col_user, col_item) < ratio
    train = df.filter(in_train)
    test = df.filter(~in_train)
    return train, _warm_test(train, test, col_user, col_item, "random_split", counts=counts)


def stratified_split(
    df: DataFrame,
    ratio: float = 0.75,
    seed: int = 42,
    min_ratings: int = 1,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    counts: dict[str, int] | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Per-user stratified split (the quality-bar protocol: ``ratio=0.75, seed=42``).

    For each user with ``n`` distinct items: order the items by ``(xxhash64(seed, user, item), item)``
    ascending; the first ``max(1, round_half_up(ratio * n))`` go to train (all rows of those pairs),
    the rest to test. Users with ``n < min_ratings`` go wholly to train. Test rows whose item is not
    in train are then dropped (module docstring); every user keeps at least one train row.
    """
    require_columns(df, [col_user, col_item], "interactions")
    _check_ratio(ratio)
    if min_ratings < 1:
        raise ValueError(f"min_ratings must be >= 1, got {min_ratings}")
    h = pair_hash(seed, col_user, col_item)
    by_user = Window.partitionBy(col_user)
    # dense_rank: duplicate rows of one pair share a rank, so n counts distinct items.
    pos = F.dense_rank().over(by_user.orderBy(h, F.col(col_item)))
    ranked = df.withColumn("_pos", pos).withColumn("_n", F.max("_pos").over(by_user))
    n_train = F.greatest(F.lit(1), F.round(F.lit(float(ratio)) * F.col("_n")).cast("int"))
    ranked = ranked.withColumn("_train", (F.col("_n") < min_ratings) | (F.col("_pos") <= n_train))
    train = ranked.filter("_train").select(*df.columns)
    test = ranked.filter(~F.col("_train")).select(*df.columns)
    return train, _warm_test(train, test, col_user, col_item, "stratified_split", counts=counts)


def leave_last_n_split(
    df: DataFrame,
    n: int = 1,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_timestamp: str = COL_TIMESTAMP,
    counts: dict[str, int] | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Per user, the ``n`` latest items go to test, the rest to train.

    Items are ordered by their latest event time, descending, ties broken by item ascending (the
    smaller item counts as later); all rows of a test pair go to test. Users with ``<= n`` distinct
    items stay wholly in train. Cold test rows are then dropped (module docstring).
    """
    require_columns(df, [col_user, col_item, col_timestamp], "interactions")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    last = F.max(col_timestamp).over(Window.partitionBy(col_user, col_item))
    by_user = Window.partitionBy(col_user)
    pos = F.dense_rank().over(by_user.orderBy(F.col("_last").desc_nulls_last(), F.col(col_item).asc()))
    ranked = (
        df.withColumn("_last", last)
        .withColumn("_pos", pos)
        .withColumn("_n", F.max("_pos").over(by_user))
        .withColumn("_test", (F.col("_n") > n) & (F.col("_pos") <= n))
    )
    train = ranked.filter(~F.col("_test")).select(*df.columns)
    test = ranked.filter("_test").select(*df.columns)
    return train, _warm_test(train, test, col_user, col_item, "leave_last_n_split", counts=counts)


def time_split(
    df: DataFrame,
    cutoff: dt.datetime | dt.date | str,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_timestamp: str = COL_TIMESTAMP,
    counts: dict[str, int] | None = None,
) -> tuple[DataFrame, DataFrame]:
    """Global temporal split: ``timestamp < cutoff`` (or null) to train, ``>= cutoff`` to test.

    A naive ``datetime`` is taken as UTC, a ``date`` as its midnight UTC, a string is parsed by
    ``to_timestamp`` in the session time zone (UTC in this project's sessions). Test rows with a cold
    user or item, or whose (user, item) pair already occurs in train, are then dropped.
    """
    require_columns(df, [col_user, col_item, col_timestamp], "interactions")
    in_test = F.coalesce(F.col(col_timestamp) >= timestamp_literal(cutoff, "cutoff"), F.lit(False))
    train = df.filter(~in_test)
    test = df.filter(in_test)
    return train, _warm_test(train, test, col_user, col_item, "time_split", drop_repeats=True, counts=counts)


def split_summary(
    train: DataFrame,
    test: DataFrame,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
) -> dict[str, float]:
    """Rows, distinct users and items of each side, and the test share of rows (two small actions)."""
    out: dict[str, float] = {}
    for name, frame in (("train", train), ("test", test)):
        row = frame.agg(
            F.count(F.lit(1)).alias("rows"),
            F.countDistinct(col_user).alias("users"),
            F.countDistinct(col_item).alias("items"),
        ).head(1)[0]
        for key in ("rows", "users", "items"):
            out[f"{name}_{key}"] = float(row[key])
    total = out["train_rows"] + out["test_rows"]
    out["test_share"] = out["test_rows"] / total if total else float("nan")
    return out
