"""Splits: the documented rules against plain-Python references, and the properties every split keeps."""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
from collections import defaultdict
from collections.abc import Callable

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from watchnext.config import EvaluationConfig
from watchnext.constants import COL_ITEM_IDX, COL_RATING, COL_TIMESTAMP, COL_USER_IDX
from watchnext.evaluation.protocol import split as protocol_split
from watchnext.evaluation.splits import (
    leave_last_n_split,
    pair_hash,
    random_split,
    split_summary,
    stratified_split,
    time_split,
)

pytestmark = pytest.mark.spark

SCHEMA = T.StructType(
    [
        T.StructField(COL_USER_IDX, T.IntegerType()),
        T.StructField(COL_ITEM_IDX, T.IntegerType()),
        T.StructField(COL_RATING, T.DoubleType()),
        T.StructField(COL_TIMESTAMP, T.TimestampType()),
    ]
)
UTC = dt.timezone(dt.timedelta(0))
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)
CUTOFF = T0 + dt.timedelta(hours=30)

Row = tuple[int, int, float, dt.datetime | None]


def _ts(hours: int | None) -> dt.datetime | None:
    return None if hours is None else T0 + dt.timedelta(hours=hours)


def _rows(seed: int = 0, n_users: int = 60, n_items: int = 40) -> list[Row]:
    """Random interactions: 1-15 items per user, hour-granular times (many ties), some rewatches."""
    rng = random.Random(seed)
    rows: list[Row] = []
    for u in range(n_users):
        for i in rng.sample(range(n_items), rng.randint(1, 15)):
            rows.append((u, i, float(rng.randint(1, 5)), _ts(rng.randint(0, 50))))
        if rng.random() < 0.2:  # a rewatch: a second row of an existing pair, later
            u_, i_, r_, t_ = rows[-1]
            rows.append((u_, i_, r_, t_ + dt.timedelta(hours=rng.randint(1, 20))))
    rows.append((0, 0, 3.0, None))  # a null timestamp
    return rows


@pytest.fixture(scope="module")
def rows() -> list[Row]:
    return _rows()


@pytest.fixture(scope="module")
def df(spark: SparkSession, rows: list[Row]) -> DataFrame:
    return spark.createDataFrame(rows, SCHEMA)


def _frame(spark: SparkSession, rows: list[Row]) -> DataFrame:
    return spark.createDataFrame(rows, SCHEMA)


def _warm(train: list[Row], test: list[Row], drop_repeats: bool = False) -> list[Row]:
    """The documented test filter: user and item in train (and, for time_split, pair not in train)."""
    users = {r[0] for r in train}
    items = {r[1] for r in train}
    pairs = {(r[0], r[1]) for r in train}
    return [
        r for r in test if r[0] in users and r[1] in items and not (drop_repeats and (r[0], r[1]) in pairs)
    ]


def _row(r: object) -> Row:
    """A collected Row as an input tuple (collect gives naive local-time datetimes)."""
    u, i, rating, t = r  # type: ignore[misc]
    return (u, i, rating, None if t is None else t.astimezone(UTC))


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


SPLITS: dict[str, Callable[[DataFrame], tuple[DataFrame, DataFrame]]] = {
    "random": lambda d: random_split(d, 0.75, seed=42),
    "stratified": lambda d: stratified_split(d, 0.75, seed=42),
    "leave_last_2": lambda d: leave_last_n_split(d, n=2),
    "time": lambda d: time_split(d, CUTOFF),
}


# --- the documented rules, against plain-Python references ------------------------------------


def test_stratified_follows_the_documented_rule(spark: SparkSession, df: DataFrame, rows: list[Row]) -> None:
    ratio, seed = 0.75, 42
    hashes = {
        (r[0], r[1]): r[2]
        for r in df.select(COL_USER_IDX, COL_ITEM_IDX, pair_hash(seed).alias("h")).collect()
    }
    items_of: dict[int, set[int]] = defaultdict(set)
    for u, i, _, _ in rows:
        items_of[u].add(i)
    train_pairs = set()
    for u, items in items_of.items():
        ordered = sorted(items, key=lambda i: (hashes[(u, i)], i))
        n_train = max(1, _round_half_up(ratio * len(ordered)))
        train_pairs |= {(u, i) for i in ordered[:n_train]}
    exp_train = [r for r in rows if (r[0], r[1]) in train_pairs]
    exp_test = _warm(exp_train, [r for r in rows if (r[0], r[1]) not in train_pairs])

    train, test = stratified_split(df, ratio=ratio, seed=seed)
    assertDataFrameEqual(train, _frame(spark, exp_train))
    assertDataFrameEqual(test, _frame(spark, exp_test))

    # per-user train size within one row of round(ratio * n), n = the user's distinct items
    n_train_of = {
        r[COL_USER_IDX]: r["n"]
        for r in train.groupBy(COL_USER_IDX).agg(F.countDistinct(COL_ITEM_IDX).alias("n")).collect()
    }
    assert set(n_train_of) == set(items_of)  # every user keeps train rows
    for u, items in items_of.items():
        assert abs(n_train_of[u] - round(ratio * len(items))) <= 1


def test_stratified_min_ratings_keeps_small_users_in_train(spark: SparkSession) -> None:
    # user 1 has 2 items (< min_ratings=3): all in train; user 2 has 4: round(0.5 * 4) = 2 in train.
    rows = [(1, 10, 1.0, _ts(0)), (1, 11, 1.0, _ts(1))] + [(2, i, 1.0, _ts(i)) for i in (10, 11, 12, 13)]
    train, test = stratified_split(_frame(spark, rows), ratio=0.5, seed=1, min_ratings=3)
    counts = {r[0]: r[1] for r in train.groupBy(COL_USER_IDX).count().collect()}
    assert counts == {1: 2, 2: 2}
    assert test.filter(f"{COL_USER_IDX} = 1").count() == 0


def test_leave_last_n_takes_the_latest_n(spark: SparkSession, df: DataFrame, rows: list[Row]) -> None:
    n = 2
    never = dt.datetime.min.replace(tzinfo=UTC)  # a null timestamp is the earliest
    last: dict[tuple[int, int], dt.datetime] = {}
    for u, i, _, t in rows:
        last[(u, i)] = max(last.get((u, i), never), t or never)
    by_user: dict[int, list[int]] = defaultdict(list)
    for u, i in last:
        by_user[u].append(i)
    test_pairs = set()
    for u, items in by_user.items():
        if len(items) > n:
            latest = sorted(items, key=lambda i: (-last[(u, i)].timestamp(), i))[:n]
            test_pairs |= {(u, i) for i in latest}
    exp_train = [r for r in rows if (r[0], r[1]) not in test_pairs]
    exp_test = _warm(exp_train, [r for r in rows if (r[0], r[1]) in test_pairs])

    train, test = leave_last_n_split(df, n=n)
    assertDataFrameEqual(train, _frame(spark, exp_train))
    assertDataFrameEqual(test, _frame(spark, exp_test))


def test_time_split_follows_the_cutoff(spark: SparkSession, df: DataFrame, rows: list[Row]) -> None:
    exp_train = [r for r in rows if r[3] is None or r[3] < CUTOFF]
    exp_test = _warm(exp_train, [r for r in rows if r[3] is not None and r[3] >= CUTOFF], drop_repeats=True)
    for cutoff in (CUTOFF, CUTOFF.replace(tzinfo=None), "2024-01-02 06:00:00"):  # the same instant, UTC
        train, test = time_split(df, cutoff)
        assertDataFrameEqual(train, _frame(spark, exp_train))
        assertDataFrameEqual(test, _frame(spark, exp_test))
    train, _ = time_split(df, dt.date(2024, 1, 2))  # midnight UTC = hour 24
    assert train.count() == sum(1 for r in rows if r[3] is None or r[3] < _ts(24))


def test_random_split_share_is_close_to_ratio(spark: SparkSession) -> None:
    big = _frame(spark, _rows(seed=3, n_users=400, n_items=200))
    train, test = random_split(big, ratio=0.75, seed=42)
    n_train, n_all = train.count(), big.count()
    assert abs(n_train / n_all - 0.75) < 0.03


# --- hand-made examples ---------------------------------------------------------------------------


def test_leave_last_one_hand_example_drops_cold_item_and_logs(
    spark: SparkSession, caplog: pytest.LogCaptureFixture
) -> None:
    rows = [
        (1, 10, 5.0, _ts(1)),
        (1, 11, 4.0, _ts(2)),
        (1, 12, 3.0, _ts(3)),  # user 1's latest; item 12 occurs nowhere else -> dropped from test
        (2, 10, 5.0, _ts(1)),
        (2, 11, 4.0, _ts(5)),  # tie at hour 5: item 11 < 13, so 11 is "later" -> test
        (2, 13, 2.0, _ts(5)),
        (3, 11, 1.0, _ts(9)),  # user 3 has 1 item (<= n): wholly train
    ]
    caplog.set_level(logging.INFO, logger="watchnext.evaluation.splits")
    train, test = leave_last_n_split(_frame(spark, rows), n=1)
    assertDataFrameEqual(train, _frame(spark, [rows[0], rows[1], rows[3], rows[5], rows[6]]))
    assertDataFrameEqual(test, _frame(spark, [rows[4]]))
    assert "dropped 1 of 2 test rows" in caplog.text
    assert "item not in train: 1" in caplog.text


def test_time_split_hand_example(spark: SparkSession) -> None:
    rows = [
        (1, 10, 5.0, _ts(1)),
        (1, 11, 4.0, None),  # null time: train
        (1, 10, 5.0, _ts(40)),  # repeat of a train pair -> dropped from test
        (1, 11, 3.0, _ts(30)),  # exactly at the cutoff: test, but the pair is in train -> dropped
        (2, 12, 2.0, _ts(2)),
        (2, 10, 2.0, _ts(31)),  # kept: user 2 and item 10 are in train, pair (2, 10) is not
        (3, 10, 2.0, _ts(35)),  # user 3 only after the cutoff -> dropped
    ]
    train, test = time_split(_frame(spark, rows), CUTOFF)
    assertDataFrameEqual(train, _frame(spark, [rows[0], rows[1], rows[4]]))
    assertDataFrameEqual(test, _frame(spark, [rows[5]]))
    summary = split_summary(train, test)
    assert summary == {
        "train_rows": 3.0,
        "train_users": 2.0,
        "train_items": 3.0,
        "test_rows": 1.0,
        "test_users": 1.0,
        "test_items": 1.0,
        "test_share": 0.25,
    }


# --- properties every split keeps -----------------------------------------------------------------


@pytest.mark.parametrize("name", list(SPLITS))
def test_split_properties(spark: SparkSession, df: DataFrame, rows: list[Row], name: str) -> None:
    train, test = SPLITS[name](df)
    train_rows = [_row(r) for r in train.collect()]
    test_rows = [_row(r) for r in test.collect()]
    assert test_rows
    # no (user, item) in both
    assert not {(r[0], r[1]) for r in train_rows} & {(r[0], r[1]) for r in test_rows}
    # every test user and item is in train
    assert {r[0] for r in test_rows} <= {r[0] for r in train_rows}
    assert {r[1] for r in test_rows} <= {r[1] for r in train_rows}
    # union = input minus the documented drops: test is exactly the warm part of (input - train)
    rest = list(rows)
    for r in train_rows:
        rest.remove(r)  # multiset difference; raises if train has a row the input lacks
    exp_test = _warm(train_rows, rest, drop_repeats=name == "time")
    assertDataFrameEqual(test, _frame(spark, exp_test))
    assertDataFrameEqual(train.unionByName(test), _frame(spark, train_rows + exp_test))


@pytest.mark.parametrize("name", list(SPLITS))
def test_split_is_independent_of_partitioning(df: DataFrame, name: str) -> None:
    train_a, test_a = SPLITS[name](df.coalesce(1))
    train_b, test_b = SPLITS[name](df.repartition(7))
    assertDataFrameEqual(train_a, train_b)
    assertDataFrameEqual(test_a, test_b)


@pytest.mark.parametrize("split", [random_split, stratified_split])
def test_different_seeds_differ(df: DataFrame, split: Callable[..., tuple[DataFrame, DataFrame]]) -> None:
    train_a, _ = split(df, 0.75, seed=42)
    train_b, _ = split(df, 0.75, seed=7)
    assert train_a.exceptAll(train_b).count() > 0
    train_c, _ = split(df, 0.75, seed=42)
    assertDataFrameEqual(train_a, train_c)


def test_bad_arguments_fail_fast(df: DataFrame) -> None:
    with pytest.raises(ValueError, match="ratio"):
        stratified_split(df, ratio=1.0)
    with pytest.raises(ValueError, match="ratio"):
        random_split(df, ratio=0.0)
    with pytest.raises(ValueError, match="n must be"):
        leave_last_n_split(df, n=0)
    with pytest.raises(ValueError, match="min_ratings"):
        stratified_split(df, min_ratings=0)
    with pytest.raises(ValueError, match="missing column 'uid'"):
        stratified_split(df, col_user="uid")
    with pytest.raises(ValueError, match="missing column 'timestamp'"):
        leave_last_n_split(df.drop(COL_TIMESTAMP))
    with pytest.raises(TypeError, match="cutoff"):
        time_split(df, 12)  # type: ignore[arg-type]


@pytest.mark.parametrize("split", ["leave_last_n", "time"])
def test_a_split_by_time_refuses_interactions_without_a_timestamp(spark: SparkSession, split: str) -> None:
    rows = [(0, 1, 4.0, dt.datetime(2024, 1, 1)), (0, 2, 3.0, None), (1, 1, 5.0, dt.datetime(2024, 2, 1))]
    df = spark.createDataFrame(
        rows, f"{COL_USER_IDX} int, {COL_ITEM_IDX} int, {COL_RATING} double, {COL_TIMESTAMP} timestamp"
    )
    cfg = EvaluationConfig(split=split, time_cutoff=dt.date(2024, 1, 15) if split == "time" else None)
    with pytest.raises(
        ValueError,
        match=f"evaluation.split '{split}' orders interactions by time, but 1 interactions have no timestamp",
    ):
        protocol_split(df, cfg)
