"""The table catalogue: every Delta table's name, partition columns and the stage that writes it.

One place for "which stage writes this table": a stage that needs another stage's output names it in
its error (``read_input``), the run report names it for a missing section, and a test checks the
tables a whole pipeline run writes against it (partition columns included).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession

from watchnext import tables
from watchnext.constants import (
    COL_MODEL,
    COL_RUN_DATE,
    TABLE_BECAUSE_YOU_WATCHED,
    TABLE_CLUSTERS,
    TABLE_EVAL_FACTORS,
    TABLE_EVAL_NEIGHBORS,
    TABLE_EVAL_PREDICTIONS,
    TABLE_EVAL_RECS,
    TABLE_EVALUATION,
    TABLE_EXPERIMENT_ASSIGNMENTS,
    TABLE_EXPERIMENT_RESULTS,
    TABLE_GENRE_ROWS,
    TABLE_INTERACTIONS,
    TABLE_ITEM_CLUSTERS,
    TABLE_ITEM_FACTORS,
    TABLE_ITEM_FEATURES,
    TABLE_ITEM_INDEX,
    TABLE_ITEM_SIMILARITIES,
    TABLE_ITEMS,
    TABLE_NCF_SCORES,
    TABLE_RECOMMENDATIONS,
    TABLE_RECOMMENDATIONS_LATEST,
    TABLE_REJECTS,
    TABLE_USER_CLUSTER_AFFINITY,
    TABLE_USER_FACTORS,
    TABLE_USER_INDEX,
    TABLE_USER_NEIGHBORS,
)


@dataclass(frozen=True)
class Table:
    name: str
    written_by: str  # a stage name, or several joined by " / " (eval tables: one partition per model)
    partition_by: tuple[str, ...] = (COL_RUN_DATE,)  # () for tables that are not per run date


_BY_MODEL = (COL_RUN_DATE, COL_MODEL)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        Table(TABLE_INTERACTIONS, "ingest"),
        Table(TABLE_ITEMS, "ingest"),
        Table(TABLE_REJECTS, "ingest"),
        Table(TABLE_USER_INDEX, "ingest", ()),
        Table(TABLE_ITEM_INDEX, "ingest", ()),
        Table(TABLE_USER_FACTORS, "als"),
        Table(TABLE_ITEM_FACTORS, "als"),
        Table(TABLE_ITEM_FEATURES, "clusters"),
        Table(TABLE_ITEM_CLUSTERS, "clusters"),
        Table(TABLE_CLUSTERS, "clusters"),
        Table(TABLE_USER_CLUSTER_AFFINITY, "clusters"),
        Table(TABLE_ITEM_SIMILARITIES, "similarities"),
        Table(TABLE_USER_NEIGHBORS, "similarities"),
        Table(TABLE_NCF_SCORES, "ncf"),
        Table(TABLE_RECOMMENDATIONS, "recommend"),
        Table(TABLE_RECOMMENDATIONS_LATEST, "recommend", ()),
        Table(TABLE_GENRE_ROWS, "recommend"),
        Table(TABLE_BECAUSE_YOU_WATCHED, "recommend"),
        Table(TABLE_EVAL_RECS, "als / similarities / ncf / recommend", _BY_MODEL),
        Table(TABLE_EVAL_PREDICTIONS, "als", _BY_MODEL),
        Table(TABLE_EVAL_FACTORS, "als", _BY_MODEL),
        Table(TABLE_EVAL_NEIGHBORS, "similarities", _BY_MODEL),
        Table(TABLE_EVALUATION, "evaluate"),
        Table(TABLE_EXPERIMENT_ASSIGNMENTS, "recommend", ()),  # only grows: one row per user ever assigned
        Table(TABLE_EXPERIMENT_RESULTS, "evaluate"),
    )
}


def written_by(name: str) -> str:
    """The stage (or stages) that write table ``name``."""
    if name not in TABLES:
        raise KeyError(f"'{name}' is not a table of the catalogue (watchnext.catalog.TABLES)")
    return TABLES[name].written_by


class MissingInputError(FileNotFoundError):
    """A stage's input table is missing (or has no rows for the run date); the message names the stage
    that writes it."""


def read_input(
    spark: SparkSession,
    path: str,
    name: str,
    run_date: dt.date,
    *,
    reader: str,
    require_rows: bool = False,
) -> DataFrame:
    """The ``run_date`` rows of table ``name`` at ``path``, read by stage ``reader``; raises
    :class:`MissingInputError` naming the writing stage when the table does not exist (or, with
    ``require_rows``, holds no row of that date)."""
    stage = written_by(name)
    if not tables.exists(spark, path):
        raise MissingInputError(f"{reader} needs the '{name}' table ({path}); run the {stage} stage first")
    df = tables.read_run_date(spark, path, run_date)
    if require_rows and df.isEmpty():
        raise MissingInputError(
            f"'{name}' has no rows for run_date {run_date}; run the {stage} stage for that date"
        )
    return df
