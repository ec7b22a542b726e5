"""Small checks and conversions shared by the pure transforms (fail fast, naming the problem)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

UTC = dt.UTC


def require_columns(df: DataFrame, cols: Iterable[str], what: str) -> None:
    """Raise ``ValueError("<what> is missing column 'c' (has [...])")`` before Spark runs anything."""
    for c in cols:
        if c not in df.columns:
            raise ValueError(f"{what} is missing column '{c}' (has {df.columns})")


def timestamp_literal(value: dt.datetime | dt.date | str, name: str) -> Column:
    """A timestamp literal: a naive datetime is UTC, a date its midnight UTC, a string is parsed by Spark."""
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return F.lit(aware).cast("timestamp")
    if isinstance(value, dt.date):
        return F.lit(dt.datetime.combine(value, dt.time(), tzinfo=UTC)).cast("timestamp")
    if isinstance(value, str):
        return F.to_timestamp(F.lit(value))
    raise TypeError(f"{name} must be a datetime, date or string, got {type(value).__name__}")
