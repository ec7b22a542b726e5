"""exact_sum / exact_mean: the same double whatever the order Spark adds the values in."""

from __future__ import annotations

import math

import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from watchnext.aggregates import exact_mean, exact_sum

pytestmark = [pytest.mark.spark]

# Plain double addition of these depends on the order: 1e14 + 0.1 keeps only 1/64ths of the 0.1.
VALUES = [1e14, 0.1, 0.7, -1e14, 0.2, 0.3, -0.6, 2.5, 1e-3]


def test_exact_sum_does_not_depend_on_the_order(spark: SparkSession) -> None:
    want = math.fsum(VALUES)  # the correctly rounded sum
    orders = [VALUES, VALUES[::-1], sorted(VALUES), [VALUES[i] for i in (3, 1, 0, 2, 8, 4, 7, 5, 6)]]
    plain, exact = set(), set()
    for order in orders:
        for parts in (1, 3):
            df = spark.createDataFrame([(0, v) for v in order], "g int, x double").coalesce(1)
            df = df.repartition(parts) if parts > 1 else df
            plain.add(df.agg(F.sum("x")).first()[0])
            row = df.groupBy("g").agg(exact_sum("x").alias("s"), exact_mean("x").alias("m")).first()
            exact.add((row["s"], row["m"]))
    assert len(plain) > 1, "Spark's own sum did not change with the order: the data shows nothing"
    assert exact == {(want, want / len(VALUES))}


def test_nulls_are_left_out_like_sum_and_avg(spark: SparkSession) -> None:
    df = spark.createDataFrame([(0, 1.5), (0, None), (0, 2.0), (1, None)], "g int, x double")
    got = {
        r["g"]: (r["s"], r["m"], r["sum"], r["avg"])
        for r in df.groupBy("g")
        .agg(
            exact_sum("x").alias("s"),
            exact_mean("x").alias("m"),
            F.sum("x").alias("sum"),
            F.avg("x").alias("avg"),
        )
        .collect()
    }
    assert got == {0: (3.5, 1.75, 3.5, 1.75), 1: (None, None, None, None)}


def test_nan_infinity_and_huge_values_sum_like_spark(spark: SparkSession) -> None:
    inf = float("inf")
    rows = [(0, 1.0), (0, float("nan")), (1, 1.0), (1, inf), (2, -inf), (2, 2.0), (3, 1e300), (3, 1.0)]
    df = spark.createDataFrame(rows, "g int, x double")
    got = df.groupBy("g").agg(exact_sum("x").alias("s"), exact_mean("x").alias("m")).orderBy("g").collect()
    assert math.isnan(got[0]["s"]) and math.isnan(got[0]["m"])
    assert [(r["s"], r["m"]) for r in got[1:]] == [(inf, inf), (-inf, -inf), (1e300, 5e299)]
