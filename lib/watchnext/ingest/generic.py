"""Read a user's own interactions (and optional item metadata) from CSV or Parquet.

The user's column names are mapped onto the contract names of :mod:`watchnext.ingest.raw` by
``GenericConfig.columns`` / ``item_columns``; every value is handed over as a string, as read.

Delimited text is read line by line and split with ``from_csv`` rather than with
``spark.read.csv``: the file source prunes the columns a query does not use *before* the token count
is checked, so whether a too-short or too-long line is flagged in ``_corrupt_record`` would depend on
which columns a later stage selects (Spark 4.2 flags nothing once any data column is pruned).
``from_csv`` always splits the whole line. The helpers here are shared with the MovieLens reader.
"""

from __future__ import annotations

import csv
import logging
from typing import Literal

from pyspark.errors import AnalysisException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext.config import GenericConfig
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
from watchnext.ingest.raw import (
    EPOCH_MILLIS,
    NO_TIMESTAMP,
    RAW_INTERACTIONS_SCHEMA,
    RAW_ITEMS_SCHEMA,
    RawSource,
)

log = logging.getLogger(__name__)

LINE = "_line"  # the raw text of a line, as decoded
_NEVER_SEP = "\u0001"  # field separator for reading whole lines; a line containing it is still kept whole
_STRING_ARRAY = T.ArrayType(T.StringType())


# --------------------------------------------------------------------------- delimited text, shared
def read_lines(spark: SparkSession, path: str, encoding: str = "UTF-8") -> DataFrame:
    """Every non-blank line of the text file(s) at ``path`` as column ``_line``, decoded with ``encoding``.

    ``spark.read.text`` only decodes UTF-8, so this reads with the CSV source as one unquoted column;
    a line that happens to contain the separator lands in the corrupt column whole, and is taken from
    there. Line ends (``\\n``, ``\\r\\n``) are stripped; blank lines are skipped, as Spark's CSV source does.
    """
    schema = T.StructType(
        [T.StructField("value", T.StringType()), T.StructField(COL_CORRUPT, T.StringType())]
    )
    raw = (
        spark.read.schema(schema)
        .options(
            sep=_NEVER_SEP,
            quote="",
            encoding=encoding,
            mode="PERMISSIVE",
            columnNameOfCorruptRecord=COL_CORRUPT,
        )
        .csv(path)
    )
    return raw.select(F.coalesce(F.col(COL_CORRUPT), F.col("value")).alias(LINE))


def first_line(lines: DataFrame, path: str) -> str:
    """The first line of ``lines`` (a header); reads one line only."""
    row = lines.first()
    if row is None:
        raise ValueError(f"{path} is empty")
    return str(row[LINE])


def split_header(line: str, sep: str, quote: str = '"') -> list[str]:
    """Split a header line on ``sep`` (quotes removed, a leading byte-order mark dropped)."""
    line = line.lstrip("\ufeff")
    if len(sep) == 1 and quote:
        return next(csv.reader([line], delimiter=sep, quotechar=quote))
    return [name.strip(quote) if quote else name for name in line.split(sep)]


def parse_delimited(lines: DataFrame, n_fields: int, sep: str, quote: str = '"') -> DataFrame:
    """Split column ``_line`` into string columns ``_f0`` .. ``_f<n-1>`` plus ``_corrupt_record``.

    A line with fewer or more than ``n_fields`` fields (an unclosed quote swallows the rest of its line,
    so it is one) gets its text in ``_corrupt_record`` and null fields; empty fields are null.
    ``quote=""`` turns quoting off (the MovieLens ``.dat`` and ``u.*`` files, whose titles contain bare
    quotes); with a quote character, a doubled quote inside a quoted field is a literal quote
    (RFC 4180, as pandas and MovieLens write).
    ``_line`` is kept.
    """
    ddl = ", ".join([*(f"_f{i} STRING" for i in range(n_fields)), f"{COL_CORRUPT} STRING"])
    options = {
        "sep": sep,
        "quote": quote,
        "escape": quote or "\\",
        "mode": "PERMISSIVE",
        "columnNameOfCorruptRecord": COL_CORRUPT,
    }
    parsed = lines.select(F.col(LINE), F.from_csv(F.col(LINE), ddl, options).alias("_p"))
    bad = F.col(f"_p.{COL_CORRUPT}").isNotNull()
    return parsed.select(
        *(F.when(~bad, F.col(f"_p._f{i}")).alias(f"_f{i}") for i in range(n_fields)),
        F.col(LINE),
        F.col(f"_p.{COL_CORRUPT}").alias(COL_CORRUPT),
    )


def empty_list() -> Column:
    """An empty ``array<string>``."""
    return F.array().cast(_STRING_ARRAY)


def split_list(value: Column, sep: str) -> Column:
    """Split a string on the literal ``sep``; entries trimmed, empty ones dropped; ``[]`` for null.

    Built without lambdas, so the projection stays in whole-stage code generation.
    """
    trimmed = F.regexp_replace(value, r"^\s+|\s+$", "")
    parts = F.split(trimmed, r"\s*" + _literal_regex(sep) + r"\s*")
    return F.coalesce(F.array_remove(parts, ""), empty_list())


def tag_list(value: Column, sep: str) -> Column:
    """Tags in a ``sep``-separated string: distinct, lower-cased, trimmed, sorted."""
    return F.array_sort(F.array_distinct(split_list(F.lower(value), sep)))


def normalize_tags(tags: Column) -> Column:
    """An array of tags made distinct, lower-cased, trimmed, sorted, without empties (``[]`` for null)."""
    cleaned = F.filter(F.transform(tags, lambda x: F.lower(F.trim(x))), lambda x: x.isNotNull() & (x != ""))
    return F.coalesce(F.array_sort(F.array_distinct(cleaned)), empty_list())


def conform(df: DataFrame, schema: T.StructType) -> DataFrame:
    """Select ``schema``'s columns in order, cast to its types and marked nullable where it says so."""
    cols = []
    for field in schema.fields:
        col = F.col(field.name)
        if not df.schema[field.name].nullable and field.nullable:
            col = F.when(col.isNotNull(), col)  # only relaxes the declared nullability
        cols.append(col.cast(field.dataType).alias(field.name))
    return df.select(*cols)


def _literal_regex(sep: str) -> str:
    # F.split takes a Java pattern, and "|" (the usual list separator) is special there: quote it.
    return "\\Q" + sep + "\\E"


def _col(name: str) -> Column:
    """A top-level column by its exact name (dots and spaces are part of user names, not paths)."""
    return F.col("`" + name.replace("`", "``") + "`")


# ----------------------------------------------------------------------------------------- generic
def read_generic(
    spark: SparkSession, cfg: GenericConfig, feedback: Literal["explicit", "implicit"] = "explicit"
) -> RawSource:
    """Read ``cfg.path`` (and ``cfg.items_path`` if set) into a :class:`RawSource`.

    ``cfg.columns.rating = None`` gives null ratings (implicit events, weight 1.0); with
    ``feedback="explicit"`` a rating column is required. ``cfg.columns.timestamp = None`` gives null
    timestamps and declares the format ``"none"`` (validation then skips time checks). A Parquet
    timestamp/date column is already typed: it is handed over as epoch milliseconds and the source
    declares that format, whatever ``cfg.timestamp_format`` says. CSV quoting is RFC 4180 (``""``
    inside a quoted field is a quote).
    """
    if not cfg.path:
        raise ValueError("generic.path is not set")
    cols = cfg.columns
    if feedback == "explicit" and cols.rating is None:
        raise ValueError(
            "explicit feedback needs a rating column but generic.columns.rating is null; "
            "set it, or use ingest.feedback=implicit"
        )
    frame, found = _open(spark, cfg, cfg.path, cfg.format, "ingest.generic.path")
    mapping = {
        COL_USER: cols.user,
        COL_ITEM: cols.item,
        COL_RATING: cols.rating,
        COL_TIMESTAMP: cols.timestamp,
    }
    _require(mapping, found, f"interactions file {cfg.path}")
    timestamp_format = cfg.timestamp_format if cols.timestamp is not None else NO_TIMESTAMP
    selected: list[Column] = []
    for target, source in mapping.items():
        if source is None:
            selected.append(F.lit(None).cast("string").alias(target))
            continue
        col, dtype = _col(source), frame.schema[source].dataType
        if target == COL_TIMESTAMP and isinstance(dtype, T.TimestampType | T.TimestampNTZType | T.DateType):
            log.info("%s: column %r is typed %s; reading it as epoch milliseconds", cfg.path, source, dtype)
            timestamp_format = EPOCH_MILLIS
            col = F.floor(F.unix_micros(col.cast("timestamp")) / 1000)
        selected.append(col.cast("string").alias(target))
    corrupt = F.col(COL_CORRUPT) if COL_CORRUPT in frame.columns else F.lit(None).cast("string")
    interactions = conform(frame.select(*selected, corrupt.alias(COL_CORRUPT)), RAW_INTERACTIONS_SCHEMA)

    items = _read_items(spark, cfg, cfg.items_path) if cfg.items_path else None
    return RawSource(
        name=f"generic-{cfg.format}",
        interactions=interactions,
        items=items,
        timestamp_format=timestamp_format,
    )


def _read_items(spark: SparkSession, cfg: GenericConfig, path: str) -> DataFrame:
    icols = cfg.item_columns
    frame, found = _open(spark, cfg, path, cfg.items_format, "ingest.generic.items_path")
    mapping = {COL_ITEM: icols.item, COL_TITLE: icols.title, COL_GENRES: icols.genres, COL_TAGS: icols.tags}
    _require(mapping, found, f"items file {path}")

    def as_list(source: str | None, tags: bool) -> Column:
        if source is None:
            return empty_list()
        col = _col(source)
        if isinstance(frame.schema[source].dataType, T.ArrayType):  # Parquet list column
            arr = col.cast(_STRING_ARRAY)
            if tags:
                return normalize_tags(arr)
            return F.filter(F.transform(arr, lambda x: F.trim(x)), lambda x: x.isNotNull() & (x != ""))
        return (
            tag_list(col.cast("string"), cfg.genre_sep)
            if tags
            else split_list(col.cast("string"), cfg.genre_sep)
        )

    ok = F.col(COL_CORRUPT).isNull() if COL_CORRUPT in frame.columns else F.lit(True)
    corrupt = F.col(COL_CORRUPT) if COL_CORRUPT in frame.columns else F.lit(None).cast("string")
    title = _col(icols.title).cast("string") if icols.title else F.lit(None).cast("string")
    items = frame.select(
        _col(icols.item).cast("string").alias(COL_ITEM),
        title.alias(COL_TITLE),
        F.lit(None).cast("int").alias(COL_YEAR),  # validation takes it from a "Title (1995)" suffix
        F.when(ok, as_list(icols.genres, tags=False)).alias(COL_GENRES),
        F.when(ok, as_list(icols.tags, tags=True)).alias(COL_TAGS),
        corrupt.alias(COL_CORRUPT),
    )
    return conform(items, RAW_ITEMS_SCHEMA)


def _open(
    spark: SparkSession, cfg: GenericConfig, path: str, fmt: str, key: str
) -> tuple[DataFrame, list[str]]:
    """The file as a frame with the user's column names, and those names (in file order).

    CSV columns come out as strings plus ``_corrupt_record``; Parquet columns keep their types.
    A path that does not exist raises ``FileNotFoundError`` naming the config ``key``.
    """
    try:
        if fmt == "parquet":
            frame = spark.read.parquet(path)
            return frame, list(frame.columns)
        lines = read_lines(spark, path, cfg.encoding)
    except AnalysisException as exc:
        if _condition(exc) == "PATH_NOT_FOUND":
            raise FileNotFoundError(f"{key}: {path} does not exist") from exc
        raise
    head = first_line(lines, path)
    tokens = split_header(head, cfg.sep)
    _check_separator(head, tokens, cfg.sep, path)
    names = tokens if cfg.header else [f"_c{i}" for i in range(len(tokens))]
    if cfg.header:
        lines = lines.where(F.col(LINE) != head)  # every part file repeats the header
    parsed = parse_delimited(lines, len(names), cfg.sep)
    # Keep the first occurrence of a repeated name; positions, not names, address the fields.
    first_index = {name: i for i, name in reversed(list(enumerate(names)))}
    frame = parsed.select(
        *(F.col(f"_f{i}").alias(name) for name, i in first_index.items()),
        F.col(COL_CORRUPT),
    )
    return frame, names


_SEPARATORS = (",", ";", "\t", "|")


def _check_separator(head: str, tokens: list[str], sep: str, path: str) -> None:
    """A first line that does not split on ``sep`` but holds another usual separator: a wrong setting.

    Every mapping needs at least a user and an item column, so a one-field file can never be read.
    """
    others = [s for s in _SEPARATORS if s != sep and s in head]
    if len(tokens) == 1 and others:
        raise ValueError(
            f"{path}: its first line has one field when split on ingest.generic.sep={sep!r} but contains "
            f"{others[0]!r}: set ingest.generic.sep to the file's separator (first line: {head[:80]!r})"
        )


def _condition(exc: AnalysisException) -> str | None:
    get = getattr(exc, "getCondition", None) or exc.getErrorClass
    return get()


def _require(mapping: dict[str, str | None], found: list[str], what: str) -> None:
    for source in mapping.values():
        if source is not None and source not in found:
            raise ValueError(f"{what} is missing column {source!r}; columns found: {', '.join(found)}")
