"""Generic CSV/Parquet reader: column mapping onto the raw contract, implicit events, clear errors."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual, assertSchemaEqual

from watchnext.config import GenericColumns, GenericConfig, GenericItemColumns
from watchnext.constants import COL_CORRUPT, COL_USER
from watchnext.ingest.generic import read_generic
from watchnext.ingest.raw import EPOCH_MILLIS, RAW_INTERACTIONS_SCHEMA, RAW_ITEMS_SCHEMA, RawSource
from watchnext.ingest.validate import NO_TIMESTAMP

pytestmark = pytest.mark.spark


def write(path: Path, lines: list[str], encoding: str = "utf-8") -> str:
    path.write_bytes("".join(line + "\n" for line in lines).encode(encoding))
    return str(path)


def check(spark: SparkSession, src: RawSource, interactions: list, items: list | None = None) -> None:
    assertSchemaEqual(src.interactions.schema, RAW_INTERACTIONS_SCHEMA, ignoreNullable=False)
    assertDataFrameEqual(src.interactions, spark.createDataFrame(interactions, RAW_INTERACTIONS_SCHEMA))
    if items is None:
        assert src.items is None
    else:
        assert src.items is not None
        assertSchemaEqual(src.items.schema, RAW_ITEMS_SCHEMA, ignoreNullable=False)
        assertDataFrameEqual(src.items, spark.createDataFrame(items, RAW_ITEMS_SCHEMA))


def test_csv_with_own_column_names_separator_and_encoding(spark: SparkSession, tmp_path: Path) -> None:
    events = write(
        tmp_path / "events.csv",
        [
            "when;customer;score;sku;note",
            '2024-01-02 10:00:00;c1;4.5;A-1;"fine; really"',
            "2024-01-03 11:30:00;c2;3;B-2;",
            "2024-01-04 09:00:00;c3;5",  # too few fields
            "2024-01-05 09:00:00;c4;5;A-1;x;y",  # too many
        ],
        encoding="ISO-8859-1",
    )
    catalog = write(
        tmp_path / "catalog.csv",
        [
            "sku;name;kind;labels",
            "A-1;Misérables, Les (1995);Drama|Musical;Paris| hugo |paris",
            "B-2;Plain;;",
            "C-3;Broken",  # too few fields
        ],
        encoding="ISO-8859-1",
    )
    cfg = GenericConfig(
        path=events,
        sep=";",
        encoding="ISO-8859-1",
        columns=GenericColumns(user="customer", item="sku", rating="score", timestamp="when"),
        timestamp_format="yyyy-MM-dd HH:mm:ss",
        items_path=catalog,
        item_columns=GenericItemColumns(item="sku", title="name", genres="kind", tags="labels"),
    )
    src = read_generic(spark, cfg, "explicit")
    assert src.name == "generic-csv"
    assert src.timestamp_format == "yyyy-MM-dd HH:mm:ss"
    check(
        spark,
        src,
        interactions=[
            ("c1", "A-1", "4.5", "2024-01-02 10:00:00", None),
            ("c2", "B-2", "3", "2024-01-03 11:30:00", None),
            (None, None, None, None, "2024-01-04 09:00:00;c3;5"),
            (None, None, None, None, "2024-01-05 09:00:00;c4;5;A-1;x;y"),
        ],
        items=[
            ("A-1", "Misérables, Les (1995)", None, ["Drama", "Musical"], ["hugo", "paris"], None),
            ("B-2", "Plain", None, [], [], None),
            (None, None, None, None, None, "C-3;Broken"),
        ],
    )
    # The malformed flag does not depend on which columns a later query reads.
    assertDataFrameEqual(
        src.interactions.select(COL_USER, COL_CORRUPT).where(f"{COL_CORRUPT} is not null"),
        [(None, "2024-01-04 09:00:00;c3;5"), (None, "2024-01-05 09:00:00;c4;5;A-1;x;y")],
    )


def test_csv_without_header_uses_positions(spark: SparkSession, tmp_path: Path) -> None:
    path = write(tmp_path / "r.tsv", ["1\t10\t4.0\t1700000000", "2\t20\t3.5\t1700000100"])
    cfg = GenericConfig(
        path=path,
        sep="\t",
        header=False,
        columns=GenericColumns(user="_c0", item="_c1", rating="_c2", timestamp="_c3"),
    )
    src = read_generic(spark, cfg, "explicit")
    assert src.timestamp_format == "epoch_seconds"
    check(spark, src, [("1", "10", "4.0", "1700000000", None), ("2", "20", "3.5", "1700000100", None)])


def test_implicit_events_without_rating_or_timestamp(spark: SparkSession, tmp_path: Path) -> None:
    path = write(tmp_path / "plays.csv", ["user_id,item_id", "u1,i1", "u1,i2", "u2,i1"])
    cfg = GenericConfig(path=path, columns=GenericColumns(rating=None, timestamp=None))
    src = read_generic(spark, cfg, "implicit")
    assert src.timestamp_format == NO_TIMESTAMP
    check(
        spark,
        src,
        [("u1", "i1", None, None, None), ("u1", "i2", None, None, None), ("u2", "i1", None, None, None)],
    )


def test_implicit_events_keep_a_weight_column(spark: SparkSession, tmp_path: Path) -> None:
    path = write(tmp_path / "plays.csv", ["user_id,item_id,plays,timestamp", "u1,i1,3,1700000000"])
    cfg = GenericConfig(path=path, columns=GenericColumns(rating="plays"))
    check(spark, read_generic(spark, cfg, "implicit"), [("u1", "i1", "3", "1700000000", None)])


def test_parquet_columns_are_cast_to_strings(spark: SparkSession, tmp_path: Path) -> None:
    when = dt.datetime(2024, 1, 2, 10, 0, 0, 123000)  # UTC wall time in a UTC-typed column
    pq.write_table(
        pa.table(
            {
                "uid": pa.array([1, 2], pa.int64()),
                "movie": pa.array(["10", "20"]),
                "stars": pa.array([4.5, 3.0], pa.float64()),
                "at": pa.array([when, None], pa.timestamp("us", tz="UTC")),
                "extra": pa.array(["x", "y"]),
            }
        ),
        tmp_path / "events.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "movie": pa.array(["10", "20"]),
                "genre_list": pa.array([["Drama", " Comedy "], []], pa.list_(pa.string())),
            }
        ),
        tmp_path / "items.parquet",
    )
    cfg = GenericConfig(
        path=str(tmp_path / "events.parquet"),
        format="parquet",
        columns=GenericColumns(user="uid", item="movie", rating="stars", timestamp="at"),
        items_path=str(tmp_path / "items.parquet"),
        items_format="parquet",
        item_columns=GenericItemColumns(item="movie", title=None, genres="genre_list", tags=None),
    )
    src = read_generic(spark, cfg, "explicit")
    assert src.name == "generic-parquet"
    assert src.timestamp_format == EPOCH_MILLIS  # a typed timestamp travels as epoch milliseconds
    millis = "1704189600123"  # 2024-01-02T10:00:00.123Z
    check(
        spark,
        src,
        interactions=[("1", "10", "4.5", millis, None), ("2", "20", "3.0", None, None)],
        items=[("10", None, None, ["Drama", "Comedy"], [], None), ("20", None, None, [], [], None)],
    )


def test_missing_column_is_named_with_the_columns_found(spark: SparkSession, tmp_path: Path) -> None:
    path = write(tmp_path / "r.csv", ["user,item_id,rating,timestamp", "1,2,3,4"])
    cfg = GenericConfig(path=path, columns=GenericColumns(user="xyz"))
    with pytest.raises(ValueError) as err:
        read_generic(spark, cfg, "explicit")
    assert str(err.value) == (
        f"interactions file file://{path} is missing column 'xyz'; "  # the config made the path absolute
        "columns found: user, item_id, rating, timestamp"
    )


def test_missing_column_in_parquet_and_items(spark: SparkSession, tmp_path: Path) -> None:
    pq.write_table(pa.table({"user_id": ["1"], "item_id": ["2"], "rating": ["3"]}), tmp_path / "e.parquet")
    cfg = GenericConfig(path=str(tmp_path / "e.parquet"), format="parquet")
    with pytest.raises(ValueError, match=r"interactions file .*e\.parquet is missing column 'timestamp'"):
        read_generic(spark, cfg, "explicit")

    events = write(tmp_path / "e.csv", ["user_id,item_id,rating,timestamp", "1,2,3,4"])
    items = write(tmp_path / "i.csv", ["item_id,name", "2,x"])
    cfg = GenericConfig(path=events, items_path=items)
    with pytest.raises(
        ValueError, match=r"items file .*i\.csv is missing column 'title'; columns found: item_id, name"
    ):
        read_generic(spark, cfg, "explicit")


def test_explicit_feedback_needs_a_rating_column(spark: SparkSession, tmp_path: Path) -> None:
    path = write(tmp_path / "plays.csv", ["user_id,item_id,timestamp", "u1,i1,1"])
    cfg = GenericConfig(path=path, columns=GenericColumns(rating=None))
    with pytest.raises(ValueError, match="explicit feedback needs a rating column"):
        read_generic(spark, cfg, "explicit")


def test_empty_file_is_a_clear_error(spark: SparkSession, tmp_path: Path) -> None:
    path = write(tmp_path / "empty.csv", [])
    with pytest.raises(ValueError, match="empty.csv is empty"):
        read_generic(spark, GenericConfig(path=path), "explicit")
