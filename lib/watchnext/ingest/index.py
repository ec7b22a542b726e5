"""Stable integer id index (``user_index``, ``item_index``).

ALS and the factor tables need int ids, and factors must stay joinable across runs, so an id keeps
the index it got the first time it was seen, forever. New ids get the next integers after the current
maximum, in a deterministic order (shorter ids first, then lexicographic: numeric ids come out in
numeric order). The index table is only ever extended, with a Delta MERGE (insert-if-absent), which
also makes two concurrent writers conflict instead of both inserting.
"""

from __future__ import annotations

import datetime as dt
import logging

from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from watchnext import tables
from watchnext.constants import COL_FIRST_SEEN

log = logging.getLogger(__name__)

MAX_INDEX = 2**31 - 1  # ALS ids are Java ints


def new_index_rows(
    existing: DataFrame | None, ids: DataFrame, *, id_col: str, idx_col: str, run_date: dt.date
) -> DataFrame:
    """Rows to add to the index for ids not in ``existing`` (pure; no IO)."""
    candidates = (
        ids.select(F.col(id_col).cast("string").alias(id_col)).where(F.col(id_col).isNotNull()).distinct()
    )
    if existing is not None:
        candidates = candidates.join(existing.select(id_col), on=id_col, how="left_anti")
        start = existing.agg(F.coalesce(F.max(idx_col), F.lit(-1))).head(1)[0][0] + 1
    else:
        start = 0
    # A single global ordering: the new ids of one run are few compared to the table; the window
    # without partition moves only them (not the existing index) to one task.
    order = Window.orderBy(F.length(id_col), F.col(id_col))
    rows = candidates.select(
        F.col(id_col),
        (F.row_number().over(order) - 1 + F.lit(start)).cast("int").alias(idx_col),
        F.lit(run_date).cast("date").alias(COL_FIRST_SEEN),
    )
    return rows


def update_index(
    spark: SparkSession, path: str, ids: DataFrame, *, id_col: str, idx_col: str, run_date: dt.date
) -> tuple[DataFrame, int]:
    """Extend the index at ``path`` with unseen ``ids``; return (the whole index, number added)."""
    existing = tables.read(spark, path) if tables.exists(spark, path) else None
    rows = new_index_rows(existing, ids, id_col=id_col, idx_col=idx_col, run_date=run_date).persist()
    try:
        stats = rows.agg(F.count("*"), F.max(idx_col)).head(1)[0]
        added, top = int(stats[0]), stats[1]
        if top is not None and top > MAX_INDEX:
            raise OverflowError(
                f"{idx_col} would exceed {MAX_INDEX}: too many distinct {id_col}s for int ids"
            )
        if existing is None:
            tables.overwrite(rows, path)
        elif added:
            (
                DeltaTable.forPath(spark, path)
                .alias("t")
                .merge(rows.alias("s"), f"t.{id_col} = s.{id_col}")
                .whenNotMatchedInsertAll()
                .execute()
            )
    finally:
        rows.unpersist()
    log.info("index %s: %d new ids", path, added)
    return tables.read(spark, path), added
