"""The table catalogue: a missing input names the stage that writes it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from watchnext import catalog, tables
from watchnext.constants import TABLE_ITEM_FACTORS, TABLE_USER_INDEX

D1, D2 = dt.date(2024, 6, 1), dt.date(2024, 6, 2)


def test_written_by_and_unknown_table() -> None:
    assert catalog.written_by(TABLE_ITEM_FACTORS) == "als"
    assert catalog.TABLES[TABLE_USER_INDEX].partition_by == ()
    with pytest.raises(KeyError, match="'nope' is not a table"):
        catalog.written_by("nope")


def test_read_input_names_the_writing_stage(spark: SparkSession, tmp_path: Path) -> None:
    path = f"file://{tmp_path / TABLE_ITEM_FACTORS}"
    with pytest.raises(catalog.MissingInputError, match=r"similarities needs the 'item_factors' table .*"
                       r"run the als stage first"):  # fmt: skip
        catalog.read_input(spark, path, TABLE_ITEM_FACTORS, D1, reader="similarities")
    rows = spark.createDataFrame([(1, D1)], "item_idx int, run_date date")
    tables.overwrite_run_date(rows, path, D1)
    assertDataFrameEqual(catalog.read_input(spark, path, TABLE_ITEM_FACTORS, D1, reader="x"), rows)
    # another date: empty, which is an error only where the reader requires rows
    assert catalog.read_input(spark, path, TABLE_ITEM_FACTORS, D2, reader="x").isEmpty()
    with pytest.raises(catalog.MissingInputError, match="no rows for run_date 2024-06-02; run the als stage"):
        catalog.read_input(spark, path, TABLE_ITEM_FACTORS, D2, reader="x", require_rows=True)
