"""Experiment assignment: the hash (Python and Spark agree, and it is frozen), its statistics
(uniform, independent across salts and purposes), its stability, and the append-only table through a
ramp-up, a change of shares and a shrink of the traffic."""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual
from scipy import stats

from watchnext.constants import COL_USER
from watchnext.experiments.assignment import (
    PURPOSE_TRAFFIC,
    PURPOSE_VARIANT,
    assign,
    assign_python,
    grow_assignments,
    in_traffic_python,
    new_assignments,
    served_variants,
    unit_hash,
    unit_hash_col,
    variant_python,
)
from watchnext.experiments.spec import ExperimentConfig

pytestmark = pytest.mark.spark

DAY1, DAY2, DAY3 = dt.date(2026, 3, 1), dt.date(2026, 3, 2), dt.date(2026, 3, 3)
UNICODE_IDS = ["", "0", "user-1", "Zoë", "ユーザー", "😀🎬", "a:b:c", "  spaced  ", "ß" * 40, "NULL", "Ω" * 3]


def _exp(
    shares: tuple[float, ...] = (0.5, 0.5), traffic: float = 1.0, salt: str = "s1", name: str = "e1"
) -> ExperimentConfig:
    names = ["control", "b", "c", "d"][: len(shares)]
    variants: list[dict[str, Any]] = [
        {"name": n, "share": s, "recommend": {} if n == "control" else {"n": 10 + i}}
        for i, (n, s) in enumerate(zip(names, shares, strict=True))
    ]
    return ExperimentConfig(name=name, salt=salt, enabled=True, traffic=traffic, variants=variants)


def _users(spark: SparkSession, ids: list[str]) -> DataFrame:
    return spark.createDataFrame([(u,) for u in ids], T.StructType([T.StructField(COL_USER, T.StringType())]))


def _ids(n: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


# ------------------------------------------------------------------------------------------ the hash
def test_unit_hash_is_frozen() -> None:
    # `printf 'exp1:variant:user-1' | sha256sum` -> 60ca35593c3004ce...: the first 13 hex digits / 2^52.
    # Changing the scheme would move every user of every running experiment: this must never change.
    assert unit_hash("exp1", "user-1", "variant") == int("60ca35593c300", 16) / 2**52
    for uid in UNICODE_IDS:
        digest = hashlib.sha256(("s:traffic:" + uid).encode("utf-8")).digest()
        assert unit_hash("s", uid, "traffic") == (int.from_bytes(digest[:7], "big") >> 4) / 2**52
    values = [unit_hash("s", u, PURPOSE_VARIANT) for u in _ids(1000)]
    assert all(0.0 <= v < 1.0 for v in values)
    assert unit_hash("s", "u1", PURPOSE_VARIANT) != unit_hash("s", "u1", PURPOSE_TRAFFIC)
    assert unit_hash("s", 42, PURPOSE_VARIANT) == unit_hash("s", "42", PURPOSE_VARIANT)  # type: ignore[arg-type]


def test_spark_hash_equals_python(spark: SparkSession) -> None:
    ids = UNICODE_IDS + _ids(300, "user-") + [f"{i}-é-{i * 7919}" for i in range(50)]
    df = _users(spark, ids).repartition(3)
    got = df.select(
        COL_USER,
        unit_hash_col("salt-x", COL_USER, PURPOSE_TRAFFIC).alias("t"),
        unit_hash_col("salt-x", F.col(COL_USER), PURPOSE_VARIANT).alias("v"),
    )
    expected = [
        (u, unit_hash("salt-x", u, PURPOSE_TRAFFIC), unit_hash("salt-x", u, PURPOSE_VARIANT)) for u in ids
    ]
    # exact equality of the doubles: rtol/atol 0
    assertDataFrameEqual(got, spark.createDataFrame(expected, got.schema), rtol=0, atol=0)

    ints = spark.createDataFrame([(i,) for i in range(200)], "user_id long")
    got_int = ints.select(COL_USER, unit_hash_col("s", COL_USER, PURPOSE_VARIANT).alias("v"))
    expected_int = [(i, unit_hash("s", str(i), PURPOSE_VARIANT)) for i in range(200)]
    assertDataFrameEqual(got_int, spark.createDataFrame(expected_int, got_int.schema), rtol=0, atol=0)


def test_assign_equals_python_and_ignores_partitioning(spark: SparkSession) -> None:
    exp = _exp((0.5, 0.3, 0.2), traffic=0.4)
    ids = _ids(3000) + UNICODE_IDS
    users = _users(spark, ids)
    a = assign(users.repartition(7), exp)
    b = assign(users.coalesce(1), exp)
    assertDataFrameEqual(a, b)
    assert a.schema == T.StructType(
        [
            T.StructField("experiment", T.StringType(), False),
            T.StructField(COL_USER, T.StringType(), True),
            T.StructField("variant", T.StringType(), False),
            T.StructField("in_traffic", T.BooleanType(), True),
        ]
    )
    expected = [("e1", u, variant_python(u, exp), in_traffic_python(u, exp)) for u in ids]
    assertDataFrameEqual(a, spark.createDataFrame(expected, a.schema))
    # the served variant: None exactly outside the traffic
    served = {u: assign_python(u, exp) for u in ids}
    assert {u for u, v in served.items() if v is None} == {u for u in ids if not in_traffic_python(u, exp)}
    assert all(v == variant_python(u, exp) for u, v in served.items() if v is not None)


def test_assign_one_row_per_distinct_user(spark: SparkSession) -> None:
    users = _users(spark, ["a", "a", "b", None, "c", "b"])  # type: ignore[list-item]
    got = assign(users, _exp())
    assert sorted(r[COL_USER] for r in got.collect()) == ["a", "b", "c"]
    other = spark.createDataFrame([("x", 1), ("y", 2)], "uid string, n int")
    assert assign(other, _exp(), col_user="uid").columns == ["experiment", "uid", "variant", "in_traffic"]
    with pytest.raises(ValueError, match="users is missing column 'user_id'"):
        assign(other, _exp())


# ------------------------------------------------------------------------------------ its statistics
def _counts(df: DataFrame, *cols: str) -> dict[Any, int]:
    return {tuple(r[c] for c in cols): r["count"] for r in df.groupBy(*cols).count().collect()}


def test_uniform_over_variants_and_traffic(spark: SparkSession) -> None:
    n = 20_000
    shares = (0.5, 0.3, 0.2)
    got = assign(_users(spark, _ids(n)), _exp(shares, traffic=0.3)).cache()
    by_variant = _counts(got, "variant")
    observed = [by_variant[(v,)] for v in ("control", "b", "c")]
    assert stats.chisquare(observed, [n * s for s in shares]).pvalue > 0.001
    by_traffic = _counts(got, "in_traffic")
    assert stats.chisquare([by_traffic[(True,)], by_traffic[(False,)]], [0.3 * n, 0.7 * n]).pvalue > 0.001
    # the two purposes are independent draws: the variant mix is the same inside and outside the traffic
    joint = _counts(got, "in_traffic", "variant")
    table = np.array([[joint.get((t, v), 0) for v in ("control", "b", "c")] for t in (True, False)])
    assert stats.chi2_contingency(table).pvalue > 0.001
    # and the check has power: a split that is 52/28/20 instead of 50/30/20 is caught
    assert stats.chisquare([0.52 * n, 0.28 * n, 0.2 * n], [n * s for s in shares]).pvalue < 0.001
    got.unpersist()


def test_independent_across_salts(spark: SparkSession) -> None:
    users = _users(spark, _ids(20_000))
    one = assign(users, _exp((0.5, 0.3, 0.2), salt="salt-one", name="one")).select(
        COL_USER, F.col("variant").alias("v1")
    )
    two = assign(users, _exp((0.4, 0.6), salt="salt-two", name="two")).select(
        COL_USER, F.col("variant").alias("v2")
    )
    counts = _counts(one.join(two, COL_USER), "v1", "v2")
    table = np.array([[counts.get((a, b), 0) for b in ("control", "b")] for a in ("control", "b", "c")])
    assert table.sum() == 20_000
    assert stats.chi2_contingency(table).pvalue > 0.001
    # the salt, not the name, drives the hash: why validate_experiments refuses shared salts
    same = _exp((0.5, 0.3, 0.2), salt="salt-one", name="renamed")
    assert all(
        variant_python(u, same) == variant_python(u, _exp((0.5, 0.3, 0.2), salt="salt-one"))
        for u in _ids(500)
    )


# -------------------------------------------------------------------------------- the record over time
def _table(df: DataFrame) -> dict[str, tuple[str, dt.date]]:
    return {r[COL_USER]: (r["variant"], r["first_assigned"]) for r in df.collect()}


def _served(df: DataFrame) -> dict[str, str | None]:
    return {r[COL_USER]: r["variant"] for r in df.collect()}


def test_first_write_holds_in_traffic_users(spark: SparkSession) -> None:
    exp = _exp((0.5, 0.5), traffic=0.5)
    ids = _ids(400)
    fresh = assign(_users(spark, ids), exp)
    table = grow_assignments(None, fresh, DAY1)
    expected = [("e1", u, variant_python(u, exp), DAY1) for u in ids if in_traffic_python(u, exp)]
    assertDataFrameEqual(
        table,
        spark.createDataFrame(
            expected, "experiment string, user_id string, variant string, first_assigned date"
        ),
    )
    assert 150 < table.count() < 250
    # a re-run of the same day adds nothing and changes nothing
    assert new_assignments(table, fresh, DAY1).count() == 0
    assertDataFrameEqual(grow_assignments(table, fresh, DAY1), table)
    assertDataFrameEqual(grow_assignments(table, fresh, DAY2), table)


def test_ramp_up_keeps_every_assignment(spark: SparkSession) -> None:
    ids = _ids(4000)
    users = _users(spark, ids)
    day1_exp, day2_exp = _exp((0.5, 0.3, 0.2), traffic=0.1), _exp((0.5, 0.3, 0.2), traffic=0.5)
    day1 = grow_assignments(None, assign(users, day1_exp), DAY1).cache()
    fresh2 = assign(users, day2_exp)
    day2 = grow_assignments(day1, fresh2, DAY2).cache()
    t1, t2 = _table(day1), _table(day2)
    assert 300 < len(t1) < 500 and 1800 < len(t2) < 2200
    assert {u: t2[u] for u in t1} == t1  # every day-1 row kept as it was
    assert {d for u, (_, d) in t2.items() if u not in t1} == {DAY2}
    # ramp-up without the table: the hash alone keeps everyone in their variant
    assert all(assign_python(u, day2_exp) == v for u, (v, _) in t1.items())
    served = _served(served_variants(day2, fresh2))
    assert {u: served[u] for u in t1} == {u: v for u, (v, _) in t1.items()}
    assert sum(v is not None for v in served.values()) == len(t2)
    day1.unpersist()
    day2.unpersist()


def test_share_change_is_sticky_for_recorded_users(spark: SparkSession) -> None:
    """Treatment 50% -> 20%: recorded users keep their variant; users arriving later follow 80/20."""
    old_users, new_users = _ids(3000, "old"), _ids(3000, "new")
    before, after = _exp((0.5, 0.5), traffic=0.5), _exp((0.8, 0.2), traffic=0.5)
    day1 = grow_assignments(None, assign(_users(spark, old_users), before), DAY1).cache()
    fresh2 = assign(_users(spark, old_users + new_users), after)
    day2 = grow_assignments(day1, fresh2, DAY2).cache()
    served = _served(served_variants(day2, fresh2))
    t1 = _table(day1)
    assert {u: served[u] for u in t1} == {u: v for u, (v, _) in t1.items()}  # sticky
    # the stickiness is doing something: some recorded users' hash now says control
    assert sum(v == "b" and variant_python(u, after) == "control" for u, (v, _) in t1.items()) > 300
    # new users in the traffic follow the new shares
    new_served = [served[u] for u in new_users if served[u] is not None]
    observed = [new_served.count("control"), new_served.count("b")]
    assert stats.chisquare(observed, [0.8 * len(new_served), 0.2 * len(new_served)]).pvalue > 0.001
    # the table: day 1's rows as they were, plus the new users in the traffic with today's variant
    assert _table(day2) == t1 | {u: (served[u], DAY2) for u in new_users if served[u] is not None}
    day1.unpersist()
    day2.unpersist()


def test_traffic_shrink_serves_default_and_keeps_rows(spark: SparkSession) -> None:
    """Traffic 50% -> 10% -> 50%: the rows stay, users outside 10% get the default recipe (None), and
    the same variant again when the traffic is widened back."""
    ids = _ids(3000)
    users = _users(spark, ids)
    wide, narrow = _exp((0.5, 0.5), traffic=0.5), _exp((0.5, 0.5), traffic=0.1)
    day1 = grow_assignments(None, assign(users, wide), DAY1).cache()
    fresh2 = assign(users, narrow)
    day2 = grow_assignments(day1, fresh2, DAY2).cache()
    assertDataFrameEqual(day2, day1)  # nothing added (everyone in 10% is in 50%), nothing removed
    served2 = _served(served_variants(day2, fresh2))
    t1 = _table(day1)
    outside = {u for u in t1 if not in_traffic_python(u, narrow)}
    assert 1000 < len(outside) < len(t1)
    assert all(served2[u] is None for u in outside)
    assert all(served2[u] == t1[u][0] for u in set(t1) - outside)
    assert all(v is None for u, v in served2.items() if u not in t1)
    # widened again: everyone recorded is back in their variant
    fresh3 = assign(users, wide)
    day3 = grow_assignments(day2, fresh3, DAY3)
    served3 = _served(served_variants(day3, fresh3))
    assert {u: served3[u] for u in t1} == {u: v for u, (v, _) in t1.items()}
    day1.unpersist()
    day2.unpersist()


def test_served_falls_back_to_the_hash_without_a_record(spark: SparkSession) -> None:
    exp = _exp((0.5, 0.5), traffic=1.0)
    ids = _ids(50)
    fresh = assign(_users(spark, ids), exp)
    empty = spark.createDataFrame(
        [], "experiment string, user_id string, variant string, first_assigned date"
    )
    other_exp = spark.createDataFrame([("e2", u, "zzz", DAY1) for u in ids], empty.schema)
    got = served_variants(empty.unionByName(other_exp), fresh)  # another experiment's rows do not leak in
    expected = [("e1", u, variant_python(u, exp)) for u in ids]
    assertDataFrameEqual(
        got, spark.createDataFrame(expected, "experiment string, user_id string, variant string")
    )
