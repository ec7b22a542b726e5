"""Delta table IO: one place for how every table is read and written.

Writes are atomic (one Delta commit) and partition-scoped where a table is per run date:
``replaceWhere`` replaces exactly that date, so re-running a day gives the same table and other
dates are untouched. A job that fails before its commit leaves the previous version as it was.
"""

from __future__ import annotations

import datetime as dt
import logging

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession

from watchnext.constants import COL_RUN_DATE

log = logging.getLogger(__name__)


def exists(spark: SparkSession, path: str) -> bool:
    return DeltaTable.isDeltaTable(spark, path)


def read(spark: SparkSession, path: str) -> DataFrame:
    if not exists(spark, path):
        raise FileNotFoundError(f"no Delta table at {path}: run the stage that writes it first")
    return spark.read.format("delta").load(path)


def read_run_date(spark: SparkSession, path: str, run_date: dt.date) -> DataFrame:
    """The rows of one run date of a table partitioned by ``run_date``."""
    df = read(spark, path).where(f"{COL_RUN_DATE} = DATE'{run_date.isoformat()}'")
    return df


def overwrite(df: DataFrame, path: str, commit_note: str | None = None) -> None:
    """Replace the whole table (schema included) in one commit."""
    writer = df.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    if commit_note:
        writer = writer.option("userMetadata", commit_note)
    writer.save(path)
    log.info("wrote Delta table %s", path)


def overwrite_run_date(df: DataFrame, path: str, run_date: dt.date, commit_note: str | None = None) -> None:
    """Replace exactly the ``run_date`` partition in one commit (creating the table if needed)."""
    if COL_RUN_DATE not in df.columns:
        raise ValueError(f"frame written to {path} is missing column '{COL_RUN_DATE}'")
    writer = (
        df.write.format("delta")
        .mode("overwrite")
        .partitionBy(COL_RUN_DATE)
        .option("replaceWhere", f"{COL_RUN_DATE} = DATE'{run_date.isoformat()}'")
    )
    if commit_note:
        writer = writer.option("userMetadata", commit_note)
    writer.save(path)
    log.info("wrote Delta table %s for run_date %s", path, run_date)


def append(df: DataFrame, path: str, commit_note: str | None = None) -> None:
    writer = df.write.format("delta").mode("append")
    if commit_note:
        writer = writer.option("userMetadata", commit_note)
    writer.save(path)
