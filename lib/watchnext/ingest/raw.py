"""The contract between source readers and validation.

Every reader (MovieLens layouts, generic CSV/Parquet, the synthetic generator) returns a
:class:`RawSource`: frames whose id/rating/timestamp columns are still *strings* exactly as read, so
that validation alone decides what is valid and every bad row can be kept with a reason.
A row the reader could not even split (wrong field count, broken quoting) carries its text in
``_corrupt_record``; well-formed rows have it null.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql import DataFrame
from pyspark.sql import types as T

from watchnext.constants import (
    COL_CORRUPT,
    COL_GENRES,
    COL_ITEM,
    COL_RATING,
    COL_TAGS,
    COL_TIMESTAMP,
    COL_TITLE,
    COL_USER,
    COL_YEAR,
)

RAW_INTERACTIONS_SCHEMA = T.StructType(
    [
        T.StructField(COL_USER, T.StringType()),
        T.StructField(COL_ITEM, T.StringType()),
        T.StructField(COL_RATING, T.StringType()),  # null for implicit events (weight 1.0)
        T.StructField(COL_TIMESTAMP, T.StringType()),
        T.StructField(COL_CORRUPT, T.StringType()),
    ]
)

RAW_ITEMS_SCHEMA = T.StructType(
    [
        T.StructField(COL_ITEM, T.StringType()),
        T.StructField(COL_TITLE, T.StringType()),
        T.StructField(COL_YEAR, T.IntegerType()),  # null: taken from a "Title (1995)" suffix if any
        T.StructField(COL_GENRES, T.ArrayType(T.StringType())),
        T.StructField(COL_TAGS, T.ArrayType(T.StringType())),
        T.StructField(COL_CORRUPT, T.StringType()),
    ]
)

# Timestamp formats a reader can declare: epoch seconds, epoch milliseconds, or a Spark datetime pattern.
EPOCH_SECONDS = "epoch_seconds"
EPOCH_MILLIS = "epoch_millis"
NO_TIMESTAMP = "none"  # a source without event times


@dataclass(frozen=True)
class RawSource:
    """What a reader hands to validation."""

    name: str  # e.g. "ml-100k", "generic-csv", "synthetic"
    interactions: DataFrame  # RAW_INTERACTIONS_SCHEMA
    items: DataFrame | None  # RAW_ITEMS_SCHEMA, or None when the source has no item metadata
    timestamp_format: str = EPOCH_SECONDS
