"""Row validation: every raw row ends up either valid (typed) or in rejects with a reason.

Rules for interactions, checked in this order (the first failing one is the reason):

=============================  ==============================================================
reason                         rule
=============================  ==============================================================
malformed line                 the reader could not split the line into the expected fields
missing user_id / item_id      id null or blank
non-numeric user_id / item_id  ``numeric_ids`` and the id is not an integer
user_id / item_id out of range ``numeric_ids`` and the id does not fit a signed 64-bit integer
missing rating                 explicit feedback without a rating
rating not a number            rating does not parse as a number
rating is NaN                  rating parses to NaN
rating out of range            explicit rating outside [rating_min, rating_max]
non-positive weight            implicit event weight <= 0
missing timestamp              timestamp null or blank (when the source has timestamps)
unparseable timestamp          timestamp does not parse with the source's format
timestamp too old              before ``min_timestamp``
timestamp in the future        after run_date + ``max_future_days``
unknown item_id                ``require_known_items`` and the item is not in the item metadata
duplicate (user_id, item_id)   explicit: a later event of the same pair supersedes it (ties: higher
                               rating wins, then the earlier raw order)
=============================  ==============================================================

Implicit events of the same (user, item) are not duplicates: they are aggregated into one row whose
weight is the sum and whose timestamp is the latest.

Numeric ids are normalised to their canonical decimal form (``"007"`` -> ``"7"``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext.config import ValidationConfig
from watchnext.constants import (
    COL_CORRUPT,
    COL_DATASET,
    COL_GENRES,
    COL_ITEM,
    COL_RATING,
    COL_REASON,
    COL_RECORD,
    COL_RUN_DATE,
    COL_TAGS,
    COL_TIMESTAMP,
    COL_TITLE,
    COL_USER,
    COL_YEAR,
)
from watchnext.ingest.raw import EPOCH_MILLIS, EPOCH_SECONDS, NO_TIMESTAMP

REJECTS_SCHEMA = T.StructType(
    [
        T.StructField(COL_DATASET, T.StringType(), False),
        T.StructField(COL_REASON, T.StringType(), False),
        T.StructField(COL_RECORD, T.StringType(), True),
        T.StructField(COL_RUN_DATE, T.DateType(), False),
    ]
)

INTERACTIONS_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER, T.StringType(), False),
        T.StructField(COL_ITEM, T.StringType(), False),
        T.StructField(COL_RATING, T.DoubleType(), False),
        T.StructField(COL_TIMESTAMP, T.TimestampType(), True),
    ]
)

ITEMS_SCHEMA = T.StructType(
    [
        T.StructField(COL_ITEM, T.StringType(), False),
        T.StructField(COL_TITLE, T.StringType(), True),
        T.StructField(COL_YEAR, T.IntegerType(), True),
        T.StructField(COL_GENRES, T.ArrayType(T.StringType()), False),
        T.StructField(COL_TAGS, T.ArrayType(T.StringType()), False),
    ]
)

_REASON = "_reason"
_ORDER = "_order"


@dataclass(frozen=True)
class Validated:
    """Valid rows, typed, and the rejected rows with reasons."""

    valid: DataFrame
    rejects: DataFrame


def _blank(c: Column) -> Column:
    return c.isNull() | (F.trim(c) == "")


def _first_failing(rules: list[tuple[Column, str]]) -> Column:
    expr: Column = F.lit(None).cast("string")
    for cond, reason in reversed(rules):
        expr = F.when(cond, F.lit(reason)).otherwise(expr)
    return expr


def _id_rules(raw: Column, name: str, numeric: bool) -> list[tuple[Column, str]]:
    rules = [(_blank(raw), f"missing {name}")]
    if numeric:
        t = F.trim(raw)
        rules.append((~t.rlike(r"^[+-]?\d+$"), f"non-numeric {name}"))
        rules.append((t.try_cast("long").isNull(), f"{name} out of range"))
    return rules


def _clean_id(raw: Column, numeric: bool) -> Column:
    t = F.trim(raw)
    return t.try_cast("long").cast("string") if numeric else t


def _record(df: DataFrame, cols: list[str]) -> Column:
    """The rejected row as it was read: the raw line if malformed, else a JSON object of raw fields."""
    return F.coalesce(F.col(COL_CORRUPT), F.to_json(F.struct(*[F.col(c) for c in cols])))


def parse_timestamp(raw: Column, fmt: str) -> Column:
    """Parse a raw string column to TimestampType; null where it does not parse."""
    t = F.trim(raw)
    if fmt == EPOCH_SECONDS:
        secs = t.try_cast("double")
        return F.when(F.isnan(secs), None).otherwise(F.timestamp_seconds(secs.cast("long")))
    if fmt == EPOCH_MILLIS:
        return F.timestamp_millis(t.try_cast("long"))
    return F.try_to_timestamp(t, F.lit(fmt))


def validate_interactions(
    raw: DataFrame,
    *,
    rules: ValidationConfig,
    feedback: str,
    timestamp_format: str,
    run_date: dt.date,
    known_items: DataFrame | None = None,
    dataset: str = "interactions",
) -> Validated:
    """Split raw interactions (``RAW_INTERACTIONS_SCHEMA``) into typed valid rows and rejects."""
    if feedback not in ("explicit", "implicit"):
        raise ValueError(f"feedback must be 'explicit' or 'implicit', got {feedback!r}")
    raw_cols = [c for c in raw.columns if c != COL_CORRUPT]
    for c in (COL_USER, COL_ITEM, COL_RATING, COL_TIMESTAMP, COL_CORRUPT):
        if c not in raw.columns:
            raise ValueError(f"raw interactions are missing column '{c}'")

    rating_raw = F.trim(F.col(COL_RATING))
    rating_num = rating_raw.try_cast("double")
    ts = parse_timestamp(F.col(COL_TIMESTAMP), timestamp_format) if timestamp_format != NO_TIMESTAMP else None
    horizon = dt.datetime.combine(run_date + dt.timedelta(days=rules.max_future_days + 1), dt.time())

    checks: list[tuple[Column, str]] = [(F.col(COL_CORRUPT).isNotNull(), "malformed line")]
    checks += _id_rules(F.col(COL_USER), COL_USER, rules.numeric_ids)
    checks += _id_rules(F.col(COL_ITEM), COL_ITEM, rules.numeric_ids)
    if feedback == "explicit":
        checks += [
            (_blank(F.col(COL_RATING)), "missing rating"),
            (rating_num.isNull(), "rating not a number"),
            (F.isnan(rating_num), "rating is NaN"),
            (
                (rating_num < rules.rating_min) | (rating_num > rules.rating_max),
                f"rating out of range [{rules.rating_min:g}, {rules.rating_max:g}]",
            ),
        ]
        rating = rating_num
    else:
        present = ~_blank(F.col(COL_RATING))
        checks += [
            (present & rating_num.isNull(), "rating not a number"),
            (present & F.isnan(rating_num), "rating is NaN"),
            (present & (rating_num <= 0), "non-positive weight"),
        ]
        rating = F.when(present, rating_num).otherwise(F.lit(1.0))
    if ts is not None:
        checks += [
            (_blank(F.col(COL_TIMESTAMP)), "missing timestamp"),
            (ts.isNull(), "unparseable timestamp"),
            (ts < F.lit(dt.datetime.combine(rules.min_timestamp, dt.time())), "timestamp too old"),
            (ts >= F.lit(horizon), "timestamp in the future"),
        ]

    labelled = raw.select(
        *[F.col(c) for c in raw_cols],
        F.col(COL_CORRUPT),
        _first_failing(checks).alias(_REASON),
        F.monotonically_increasing_id().alias(_ORDER),
    )
    typed = labelled.select(
        "*",
        _clean_id(F.col(COL_USER), rules.numeric_ids).alias("_u"),
        _clean_id(F.col(COL_ITEM), rules.numeric_ids).alias("_i"),
        rating.alias("_r"),
        (ts if ts is not None else F.lit(None).cast("timestamp")).alias("_t"),
    )
    if known_items is not None and rules.require_known_items:
        known = known_items.select(F.col(COL_ITEM).alias("_i"), F.lit(True).alias("_known")).distinct()
        typed = typed.join(F.broadcast(known), on="_i", how="left").withColumn(
            _REASON,
            F.when(F.col(_REASON).isNull() & F.col("_known").isNull(), F.lit("unknown item_id")).otherwise(
                F.col(_REASON)
            ),
        )

    ok = typed.where(F.col(_REASON).isNull())
    if feedback == "explicit":
        w = Window.partitionBy("_u", "_i").orderBy(
            F.col("_t").desc_nulls_last(), F.col("_r").desc(), F.col(_ORDER).asc()
        )
        ok = ok.withColumn("_n", F.row_number().over(w)).withColumn(
            _REASON, F.when(F.col("_n") > 1, F.lit("duplicate (user_id, item_id)"))
        )
        valid = ok.where(F.col(_REASON).isNull()).select(
            F.col("_u").alias(COL_USER),
            F.col("_i").alias(COL_ITEM),
            F.col("_r").alias(COL_RATING),
            F.col("_t").alias(COL_TIMESTAMP),
        )
        dup_rejects = ok.where(F.col(_REASON).isNotNull())
    else:
        valid = ok.groupBy(F.col("_u").alias(COL_USER), F.col("_i").alias(COL_ITEM)).agg(
            F.sum("_r").alias(COL_RATING), F.max("_t").alias(COL_TIMESTAMP)
        )
        dup_rejects = None

    bad = typed.where(F.col(_REASON).isNotNull())
    if dup_rejects is not None:
        bad = bad.unionByName(dup_rejects.drop("_n"), allowMissingColumns=True)
    rejects = bad.select(
        F.lit(dataset).alias(COL_DATASET),
        F.col(_REASON).alias(COL_REASON),
        _record(bad, raw_cols).alias(COL_RECORD),
        F.lit(run_date).alias(COL_RUN_DATE),
    )
    valid = valid.select(
        F.col(COL_USER), F.col(COL_ITEM), F.col(COL_RATING).cast("double"), F.col(COL_TIMESTAMP)
    )
    return Validated(
        valid=_with_schema(valid, INTERACTIONS_SCHEMA), rejects=_with_schema(rejects, REJECTS_SCHEMA)
    )


def validate_items(
    raw: DataFrame, *, rules: ValidationConfig, run_date: dt.date, dataset: str = "items"
) -> Validated:
    """Split raw item metadata (``RAW_ITEMS_SCHEMA``) into typed items and rejects.

    Reasons: malformed line, missing/non-numeric/out-of-range item_id, duplicate item_id (the first
    row in file order wins). ``year`` falls back to a ``(1995)`` suffix of the title; missing genres or
    tags become empty arrays.
    """
    raw_cols = [c for c in raw.columns if c != COL_CORRUPT]
    checks: list[tuple[Column, str]] = [(F.col(COL_CORRUPT).isNotNull(), "malformed line")]
    checks += _id_rules(F.col(COL_ITEM), COL_ITEM, rules.numeric_ids)
    labelled = raw.select(
        "*",
        _first_failing(checks).alias(_REASON),
        F.monotonically_increasing_id().alias(_ORDER),
        _clean_id(F.col(COL_ITEM), rules.numeric_ids).alias("_i"),
    )
    ok = labelled.where(F.col(_REASON).isNull())
    w = Window.partitionBy("_i").orderBy(F.col(_ORDER))
    ok = ok.withColumn("_n", F.row_number().over(w)).withColumn(
        _REASON, F.when(F.col("_n") > 1, F.lit("duplicate item_id"))
    )
    title = F.trim(F.col(COL_TITLE))
    year_from_title = F.regexp_extract(title, r"\((\d{4})\)\s*$", 1)
    year = F.coalesce(F.col(COL_YEAR), F.when(year_from_title != "", year_from_title.cast("int")))
    clean_arr = lambda c: F.coalesce(  # noqa: E731
        F.filter(F.col(c), lambda x: x.isNotNull() & (F.trim(x) != "")), F.array().cast("array<string>")
    )
    valid = ok.where(F.col(_REASON).isNull()).select(
        F.col("_i").alias(COL_ITEM),
        F.when(title != "", title).alias(COL_TITLE),
        year.cast("int").alias(COL_YEAR),
        clean_arr(COL_GENRES).alias(COL_GENRES),
        clean_arr(COL_TAGS).alias(COL_TAGS),
    )
    bad = labelled.where(F.col(_REASON).isNotNull()).unionByName(
        ok.where(F.col(_REASON).isNotNull()).drop("_n")
    )
    rejects = bad.select(
        F.lit(dataset).alias(COL_DATASET),
        F.col(_REASON).alias(COL_REASON),
        _record(bad, raw_cols).alias(COL_RECORD),
        F.lit(run_date).alias(COL_RUN_DATE),
    )
    return Validated(valid=_with_schema(valid, ITEMS_SCHEMA), rejects=_with_schema(rejects, REJECTS_SCHEMA))


def items_from_interactions(interactions: DataFrame) -> DataFrame:
    """Bare item rows (no metadata) for sources that ship none."""
    return _with_schema(
        interactions.select(COL_ITEM)
        .distinct()
        .select(
            F.col(COL_ITEM),
            F.lit(None).cast("string").alias(COL_TITLE),
            F.lit(None).cast("int").alias(COL_YEAR),
            F.array().cast("array<string>").alias(COL_GENRES),
            F.array().cast("array<string>").alias(COL_TAGS),
        ),
        ITEMS_SCHEMA,
    )


def _with_schema(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Select ``schema``'s columns in order with its types."""
    return df.select(*[F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields])
