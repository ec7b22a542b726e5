"""The ingest stage end to end on real Delta tables and a real MLflow store."""

from __future__ import annotations

import datetime as dt

import mlflow
import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from watchnext import pipeline, tables
from watchnext.config import Config
from watchnext.constants import (
    TABLE_INTERACTIONS,
    TABLE_ITEM_INDEX,
    TABLE_ITEMS,
    TABLE_REJECTS,
    TABLE_USER_INDEX,
)
from watchnext.ingest.raw import RAW_INTERACTIONS_SCHEMA, RAW_ITEMS_SCHEMA, RawSource
from watchnext.stages import ingest

pytestmark = [pytest.mark.spark, pytest.mark.delta]

D1 = dt.date(2024, 6, 1)
D2 = dt.date(2024, 6, 2)
T0 = 1_700_000_000


def _source(spark: SparkSession, ratings: list[tuple], items: list[tuple]) -> RawSource:
    return RawSource(
        name="inline",
        interactions=spark.createDataFrame(
            [(u, i, r, str(T0 + k), None) for k, (u, i, r) in enumerate(ratings)], RAW_INTERACTIONS_SCHEMA
        ),
        items=spark.createDataFrame([(i, t, None, g, [], None) for i, t, g in items], RAW_ITEMS_SCHEMA),
    )


ITEMS_1 = [("10", "Heat (1995)", ["Crime"]), ("20", "Up (2009)", ["Animation"])]
RATINGS_1 = [("1", "10", "4.0"), ("2", "10", "3.0"), ("3", "20", "5.0"), ("3", "99", "5.0")]


def test_index_is_stable_across_ingests(spark: SparkSession, cfg: Config) -> None:
    ingest.run(spark, cfg, D1, _source(spark, RATINGS_1, ITEMS_1))
    # second day: user 2 gone, users 12 and 4 new, item 30 new, item 20 gone from the catalogue
    ratings_2 = [("1", "10", "4.0"), ("12", "30", "2.0"), ("4", "30", "1.0"), ("3", "10", "5.0")]
    items_2 = [("10", "Heat (1995)", ["Crime"]), ("30", "Alien (1979)", ["Horror", "Sci-Fi"])]
    summary = ingest.run(spark, cfg, D2, _source(spark, ratings_2, items_2))
    assert (summary["new_users_indexed"], summary["new_items_indexed"]) == (2, 1)

    users = tables.read(spark, cfg.table_path(TABLE_USER_INDEX))
    assertDataFrameEqual(
        users,
        spark.createDataFrame(
            [("1", 0, D1), ("2", 1, D1), ("3", 2, D1), ("4", 3, D2), ("12", 4, D2)],
            "user_id string, user_idx int, first_seen date",
        ),
    )
    items = tables.read(spark, cfg.table_path(TABLE_ITEM_INDEX))
    assertDataFrameEqual(
        items,
        spark.createDataFrame(
            [("10", 0, D1), ("20", 1, D1), ("30", 2, D2)], "item_id string, item_idx int, first_seen date"
        ),
    )
    day2 = tables.read_run_date(spark, cfg.table_path(TABLE_INTERACTIONS), D2).select(
        "user_id", "item_id", "user_idx", "item_idx", "rating"
    )
    assertDataFrameEqual(
        day2,
        spark.createDataFrame(
            [("1", "10", 0, 0, 4.0), ("12", "30", 4, 2, 2.0), ("4", "30", 3, 2, 1.0), ("3", "10", 2, 0, 5.0)],
            "user_id string, item_id string, user_idx int, item_idx int, rating double",
        ),
    )


def test_rerun_of_a_date_is_identical_and_leaves_other_dates(spark: SparkSession, cfg: Config) -> None:
    src = _source(spark, RATINGS_1, ITEMS_1)
    ingest.run(spark, cfg, D1, src)
    ingest.run(spark, cfg, D2, _source(spark, RATINGS_1[:2], ITEMS_1))
    path = cfg.table_path(TABLE_INTERACTIONS)
    before = tables.read(spark, path).toPandas()
    rejects_before = tables.read(spark, cfg.table_path(TABLE_REJECTS)).toPandas()
    summary = ingest.run(spark, cfg, D1, src)
    after = tables.read(spark, path)
    assertDataFrameEqual(after, spark.createDataFrame(before, after.schema))
    rejects_after = tables.read(spark, cfg.table_path(TABLE_REJECTS))
    assertDataFrameEqual(rejects_after, spark.createDataFrame(rejects_before, rejects_after.schema))
    assert summary["rejects_by_reason"] == {"unknown item_id": 1}
    assert summary["rows_read"] == 4 and summary["interactions_written"] == 3
    # the re-run was one more commit on each table, not a rewrite of day 2
    assert tables.read_run_date(spark, path, D2).count() == 2
    items = tables.read_run_date(spark, cfg.table_path(TABLE_ITEMS), D1).select(
        "item_id", "item_idx", "title", "year"
    )
    assertDataFrameEqual(
        items,
        spark.createDataFrame(
            [("10", 0, "Heat (1995)", 1995), ("20", 1, "Up (2009)", 2009)],
            "item_id string, item_idx int, title string, year int",
        ),
    )


def test_pipeline_logs_parent_and_child_runs(spark: SparkSession, cfg: Config, run_date: dt.date) -> None:
    results = pipeline.run_pipeline(spark, cfg, run_date, ["ingest"])
    client = mlflow.MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    parent = client.get_run(results["pipeline"]["mlflow_run_id"])
    child = client.get_run(results["ingest"]["mlflow_run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.tags["watchnext.stage"] == "ingest"
    assert parent.data.tags["watchnext.run_date"] == run_date.isoformat()
    assert parent.data.tags["mlflow.source.git.commit"]
    assert parent.data.params["ingest.source"] == "synthetic"
    assert child.data.metrics["rows_read"] == results["ingest"]["rows_read"] > 0
    assert (
        child.data.metrics["interactions_written"]
        == tables.read(spark, cfg.table_path(TABLE_INTERACTIONS)).count()
    )
    assert child.data.metrics["rows_rejected"] == results["ingest"]["rows_rejected"]
