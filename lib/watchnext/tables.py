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


def last_commit(spark: SparkSession, path: str) -> dict[str, object]:
    """The newest commit of the table: ``version``, ``operation``, ``userMetadata``, ``operationMetrics``."""
    row = DeltaTable.forPath(spark, path).history(1).head(1)[0]
    return {k: row[k] for k in ("version", "operation", "userMetadata", "operationMetrics")}


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


def overwrite_run_date(
    df: DataFrame, path: str, run_date: dt.date, commit_note: str | None = None, *, add_columns: bool = False
) -> None:
    """Replace exactly the ``run_date`` partition in one commit (creating the table if needed).

    ``add_columns``: columns of ``df`` the table lacks are added to its schema in the same commit
    (a table written before a release that added them); otherwise the schemas must match."""
    overwrite_partition(df, path, {COL_RUN_DATE: run_date}, commit_note, add_columns=add_columns)


def append(df: DataFrame, path: str, commit_note: str | None = None) -> None:
    writer = df.write.format("delta").mode("append")
    if commit_note:
        writer = writer.option("userMetadata", commit_note)
    writer.save(path)


def overwrite_partition(
    df: DataFrame,
    path: str,
    values: dict[str, object],
    commit_note: str | None = None,
    *,
    add_columns: bool = False,
) -> None:
    """Replace exactly the partition ``values`` (e.g. ``{"run_date": d, "model": "als"}``) in one commit.

    The table is partitioned by the keys of ``values``, in that order.
    """
    missing = [c for c in values if c not in df.columns]
    if missing:
        raise ValueError(f"frame written to {path} is missing partition columns {missing}")
    where = " AND ".join(f"{c} = {_sql_literal(v)}" for c, v in values.items())
    writer = df.write.format("delta").mode("overwrite").partitionBy(*values).option("replaceWhere", where)
    if add_columns:
        writer = writer.option("mergeSchema", "true")
    if commit_note:
        writer = writer.option("userMetadata", commit_note)
    writer.save(path)
    log.info("wrote Delta table %s where %s", path, where)


def _sql_literal(v: object) -> str:
    if isinstance(v, dt.date):
        return f"DATE'{v.isoformat()}'"
    if isinstance(v, int | float):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def _identifier(path: str) -> str:
    """A path-based SQL identifier; ``path`` must be absolute (the config resolves every location:
    ``delta.`./x``` does not resolve against the working directory)."""
    return "delta.`" + path.replace("`", "``") + "`"


def replace_with_properties(
    spark: SparkSession, df: DataFrame, path: str, properties: dict[str, str]
) -> None:
    """Replace the whole table, data, schema and ``properties``, in one commit (CREATE OR REPLACE)."""
    writer = df.writeTo(_identifier(path)).using("delta")
    for k, v in sorted(properties.items()):
        writer = writer.tableProperty(k, v)
    writer.createOrReplace()
    log.info("replaced Delta table %s", path)
