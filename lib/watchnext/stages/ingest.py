"""Ingest stage: source -> validation -> id index -> Delta tables.

Tables written (each one atomic Delta commit; per-date tables replace exactly their run_date):

- ``items``        item_id, item_idx, title, year, genres, tags, run_date
- ``interactions`` user_id, item_id, user_idx, item_idx, rating, timestamp, run_date
- ``rejects``      dataset, reason, record, run_date
- ``user_index`` / ``item_index``  id -> stable int index, first_seen (only ever extended)
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from watchnext import tables, tracking
from watchnext.config import Config
from watchnext.constants import (
    COL_GENRES,
    COL_ITEM,
    COL_ITEM_IDX,
    COL_REASON,
    COL_RUN_DATE,
    COL_TAGS,
    COL_TITLE,
    COL_USER,
    COL_USER_IDX,
    TABLE_INTERACTIONS,
    TABLE_ITEM_INDEX,
    TABLE_ITEMS,
    TABLE_REJECTS,
    TABLE_USER_INDEX,
)
from watchnext.ingest.index import update_index
from watchnext.ingest.raw import RawSource
from watchnext.ingest.validate import items_from_interactions, validate_interactions, validate_items

log = logging.getLogger(__name__)


def read_source(spark: SparkSession, cfg: Config) -> RawSource:
    """The configured source as raw frames."""
    src = cfg.ingest.source
    if src == "synthetic":
        from watchnext.ingest.synthetic import generate

        return generate(spark, cfg.ingest.synthetic).source
    if src == "movielens":
        from watchnext.ingest.movielens import movielens_source

        return movielens_source(spark, cfg.ingest.movielens, cfg.storage.cache_dir)
    if src == "generic":
        from watchnext.ingest.generic import read_generic

        return read_generic(spark, cfg.ingest.generic, cfg.ingest.feedback)
    raise ValueError(f"unknown ingest.source {src!r}")


def run(
    spark: SparkSession, cfg: Config, run_date: dt.date, source: RawSource | None = None
) -> dict[str, Any]:
    """Run ingest for ``run_date``; returns the summary (also logged to the active MLflow run)."""
    t0 = time.perf_counter()
    source = source or read_source(spark, cfg)
    # Cache what was read: validation, rejects and the counts all derive from it (one source scan;
    # Spark also refuses queries on a raw CSV that only touch _corrupt_record unless it is cached).
    raw = source.interactions.persist(StorageLevel.MEMORY_AND_DISK)
    raw_items = source.items.persist(StorageLevel.MEMORY_AND_DISK) if source.items is not None else None
    rows_read = raw.count()
    rules = cfg.ingest.validation
    note = f"ingest run_date={run_date.isoformat()}"

    # Validate items first: interactions are checked against the valid item ids.
    item_rejects = None
    if raw_items is not None:
        vi = validate_items(raw_items, rules=rules, run_date=run_date)
        items = vi.valid.persist(StorageLevel.MEMORY_AND_DISK)
        item_rejects = vi.rejects
    else:
        items = None
    vx = validate_interactions(
        raw,
        rules=rules,
        feedback=cfg.ingest.feedback,
        timestamp_format=source.timestamp_format,
        run_date=run_date,
        known_items=items,
    )
    valid = vx.valid.persist(StorageLevel.MEMORY_AND_DISK)
    rejects = vx.rejects if item_rejects is None else vx.rejects.unionByName(item_rejects)
    rejects = rejects.persist(StorageLevel.MEMORY_AND_DISK)
    if items is None:
        items = items_from_interactions(valid).persist(StorageLevel.MEMORY_AND_DISK)

    try:
        # Checked before anything is written: a bad input leaves every table as it was.
        if raw_items is not None:
            check_text_decoded(raw_items, source.name)
        counts = valid.agg(
            F.count("*").alias("n"),
            F.countDistinct(COL_USER).alias("u"),
            F.countDistinct(COL_ITEM).alias("i"),
        ).head(1)[0]
        by_reason = {r[COL_REASON]: int(r["count"]) for r in rejects.groupBy(COL_REASON).count().collect()}
        check_not_empty(source.name, rows_read, int(counts["n"]), by_reason)
        users_index, new_users = update_index(
            spark,
            cfg.table_path(TABLE_USER_INDEX),
            valid.select(COL_USER),
            id_col=COL_USER,
            idx_col=COL_USER_IDX,
            run_date=run_date,
        )
        items_index, new_items = update_index(
            spark,
            cfg.table_path(TABLE_ITEM_INDEX),
            items.select(COL_ITEM),
            id_col=COL_ITEM,
            idx_col=COL_ITEM_IDX,
            run_date=run_date,
        )
        items_out = attach_index(items, items_index, COL_ITEM, COL_ITEM_IDX).withColumn(
            COL_RUN_DATE, F.lit(run_date)
        )
        interactions_out = (
            valid.transform(attach_index, users_index, COL_USER, COL_USER_IDX)
            .transform(attach_index, items_index, COL_ITEM, COL_ITEM_IDX)
            .select(COL_USER, COL_ITEM, COL_USER_IDX, COL_ITEM_IDX, "rating", "timestamp")
            .withColumn(COL_RUN_DATE, F.lit(run_date))
        )
        tables.overwrite_run_date(rejects, cfg.table_path(TABLE_REJECTS), run_date, note)
        tables.overwrite_run_date(items_out, cfg.table_path(TABLE_ITEMS), run_date, note)
        tables.overwrite_run_date(interactions_out, cfg.table_path(TABLE_INTERACTIONS), run_date, note)
    finally:
        for df in (valid, rejects, items, raw, raw_items):
            if df is not None:
                df.unpersist()

    n_rejected = sum(by_reason.values())
    summary: dict[str, Any] = {
        "source": source.name,
        "rows_read": rows_read,
        "interactions_written": int(counts["n"]),
        "users": int(counts["u"]),
        "items_in_interactions": int(counts["i"]),
        "rows_rejected": n_rejected,
        "new_users_indexed": new_users,
        "new_items_indexed": new_items,
        "rejects_by_reason": by_reason,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    tracking.log_metrics(
        {
            "rows_read": summary["rows_read"],
            "interactions_written": summary["interactions_written"],
            "rows_rejected": n_rejected,
            "users": summary["users"],
            "items": summary["items_in_interactions"],
            "new_users_indexed": new_users,
            "new_items_indexed": new_items,
            **{f"rejected.{_metric_key(k)}": v for k, v in by_reason.items()},
        }
    )
    tracking.log_dict(summary, "ingest_summary.json")
    return summary


class NoInteractionsError(ValueError):
    """The source holds no valid interaction: nothing is written (every table keeps its version)."""


def check_not_empty(source: str, rows_read: int, valid: int, rejects_by_reason: dict[str, int]) -> None:
    """Raise :class:`NoInteractionsError` when there is nothing to ingest, naming why."""
    if rows_read == 0:
        raise NoInteractionsError(
            f"source {source} has no interaction rows (an empty file, or a header without data): "
            "nothing was ingested"
        )
    if valid == 0:
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(rejects_by_reason.items(), key=lambda x: -x[1]))
        hint = ""
        if rejects_by_reason.get("malformed line", 0) >= rows_read:
            hint = " (every line malformed: is the separator right, e.g. ingest.generic.sep?)"
        raise NoInteractionsError(
            f"source {source}: all {rows_read} interaction rows were rejected ({reasons}){hint}; "
            "nothing was ingested"
        )


# U+FFFD: what Spark's decoder puts where the bytes are not valid in the declared encoding.
REPLACEMENT_CHAR = "\ufffd"


def check_text_decoded(raw_items: DataFrame, source: str) -> None:
    """Raise ``ValueError`` if item text holds bytes the declared encoding could not decode.

    Spark replaces undecodable bytes with U+FFFD silently; a latin-1 catalogue read as UTF-8 would
    publish titles like ``Mis\ufffdrables``. The usual cause is the file's encoding, a setting.
    """
    bad = F.col(COL_TITLE).contains(REPLACEMENT_CHAR)
    for c in (COL_GENRES, COL_TAGS):
        bad = bad | F.exists(
            F.coalesce(F.col(c), F.array().cast("array<string>")), lambda x: x.contains(REPLACEMENT_CHAR)
        )
    rows = raw_items.where(bad).select(COL_ITEM, COL_TITLE).limit(3).collect()
    if rows:
        n = raw_items.where(bad).count()
        examples = ", ".join(repr(r[COL_TITLE]) for r in rows)
        raise ValueError(
            f"source {source}: {n} item rows hold bytes that are not valid in the file's encoding "
            f"(e.g. {examples}): set the encoding the file was written in (ingest.generic.encoding, "
            "e.g. ISO-8859-1; MovieLens ml-100k and ml-1m are ISO-8859-1)"
        )


def attach_index(df: DataFrame, index: DataFrame, id_col: str, idx_col: str) -> DataFrame:
    """Add ``idx_col`` from the index (every id is in it by construction: inner join loses nothing)."""
    return df.join(index.select(id_col, idx_col), on=id_col, how="inner")


def _metric_key(reason: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in reason).strip("_")
