"""Validation: every raw row is either valid or a reject with the documented reason."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from watchnext.config import ValidationConfig
from watchnext.ingest.raw import RAW_INTERACTIONS_SCHEMA, RAW_ITEMS_SCHEMA
from watchnext.ingest.validate import (
    INTERACTIONS_SCHEMA,
    ITEMS_SCHEMA,
    REJECTS_SCHEMA,
    validate_interactions,
    validate_items,
)

pytestmark = pytest.mark.spark

RUN = dt.date(2024, 6, 1)
T0 = 1_700_000_000  # 2023-11-14 22:13:20 UTC


def ts(epoch: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).replace(tzinfo=None)


def rec(u, i, r, t) -> str:
    return json.dumps({"user_id": u, "item_id": i, "rating": r, "timestamp": t}, separators=(",", ":"))


def test_interactions_bad_rows_land_in_rejects_with_reasons(spark: SparkSession) -> None:
    rows = [
        # valid
        ("1", "10", "4.0", str(T0), None),
        (" 2 ", "010", "3.5", str(T0 + 1), None),  # trimmed, "010" normalised to "10"
        # duplicates: the later event wins, the earlier is rejected
        ("3", "10", "2.0", str(T0), None),
        ("3", "10", "5.0", str(T0 + 60), None),
        # bad rows, one per kind
        (None, None, None, None, "1,2,3,4,5,6"),  # malformed line
        ("", "10", "4.0", str(T0), None),  # missing user_id
        ("4", None, "4.0", str(T0), None),  # missing item_id
        ("u5", "10", "4.0", str(T0), None),  # non-numeric user_id
        ("5", "x10", "4.0", str(T0), None),  # non-numeric item_id
        ("99999999999999999999", "10", "4.0", str(T0), None),  # beyond 64-bit
        ("6", "10", None, str(T0), None),  # missing rating
        ("7", "10", "four", str(T0), None),  # rating not a number
        ("8", "10", "NaN", str(T0), None),  # NaN
        ("9", "10", "7.5", str(T0), None),  # out of range
        ("10", "10", "4.0", None, None),  # missing timestamp
        ("11", "10", "4.0", "yesterday", None),  # unparseable
        ("12", "10", "4.0", "0", None),  # too old
        ("13", "10", "4.0", str(2_000_000_000), None),  # in the future (2033)
        ("14", "77", "4.0", str(T0), None),  # unknown item
    ]
    raw = spark.createDataFrame(rows, RAW_INTERACTIONS_SCHEMA)
    items = spark.createDataFrame([("10",), ("11",)], "item_id string")
    out = validate_interactions(
        raw,
        rules=ValidationConfig(),
        feedback="explicit",
        timestamp_format="epoch_seconds",
        run_date=RUN,
        known_items=items,
    )
    expected_valid = spark.createDataFrame(
        [("1", "10", 4.0, ts(T0)), ("2", "10", 3.5, ts(T0 + 1)), ("3", "10", 5.0, ts(T0 + 60))],
        INTERACTIONS_SCHEMA,
    )
    assertDataFrameEqual(out.valid, expected_valid)
    expected_rejects = spark.createDataFrame(
        [
            ("interactions", "duplicate (user_id, item_id)", rec("3", "10", "2.0", str(T0)), RUN),
            ("interactions", "malformed line", "1,2,3,4,5,6", RUN),
            ("interactions", "missing user_id", rec("", "10", "4.0", str(T0)), RUN),
            (
                "interactions",
                "missing item_id",
                json.dumps({"user_id": "4", "rating": "4.0", "timestamp": str(T0)}, separators=(",", ":")),
                RUN,
            ),
            ("interactions", "non-numeric user_id", rec("u5", "10", "4.0", str(T0)), RUN),
            ("interactions", "non-numeric item_id", rec("5", "x10", "4.0", str(T0)), RUN),
            ("interactions", "user_id out of range", rec("99999999999999999999", "10", "4.0", str(T0)), RUN),
            (
                "interactions",
                "missing rating",
                json.dumps({"user_id": "6", "item_id": "10", "timestamp": str(T0)}, separators=(",", ":")),
                RUN,
            ),
            ("interactions", "rating not a number", rec("7", "10", "four", str(T0)), RUN),
            ("interactions", "rating is NaN", rec("8", "10", "NaN", str(T0)), RUN),
            ("interactions", "rating out of range [0.5, 5]", rec("9", "10", "7.5", str(T0)), RUN),
            (
                "interactions",
                "missing timestamp",
                json.dumps({"user_id": "10", "item_id": "10", "rating": "4.0"}, separators=(",", ":")),
                RUN,
            ),
            ("interactions", "unparseable timestamp", rec("11", "10", "4.0", "yesterday"), RUN),
            ("interactions", "timestamp too old", rec("12", "10", "4.0", "0"), RUN),
            ("interactions", "timestamp in the future", rec("13", "10", "4.0", "2000000000"), RUN),
            ("interactions", "unknown item_id", rec("14", "77", "4.0", str(T0)), RUN),
        ],
        REJECTS_SCHEMA,
    )
    assertDataFrameEqual(out.rejects, expected_rejects)


def test_implicit_events_are_summed_not_rejected(spark: SparkSession) -> None:
    raw = spark.createDataFrame(
        [
            ("1", "10", None, str(T0), None),
            ("1", "10", None, str(T0 + 5), None),
            ("1", "11", "2.5", str(T0), None),
            ("2", "10", "-1", str(T0), None),
        ],
        RAW_INTERACTIONS_SCHEMA,
    )
    out = validate_interactions(
        raw, rules=ValidationConfig(), feedback="implicit", timestamp_format="epoch_seconds", run_date=RUN
    )
    assertDataFrameEqual(
        out.valid,
        spark.createDataFrame([("1", "10", 2.0, ts(T0 + 5)), ("1", "11", 2.5, ts(T0))], INTERACTIONS_SCHEMA),
    )
    assertDataFrameEqual(
        out.rejects,
        spark.createDataFrame(
            [("interactions", "non-positive weight", rec("2", "10", "-1", str(T0)), RUN)], REJECTS_SCHEMA
        ),
    )


def test_pattern_timestamps_and_string_ids(spark: SparkSession) -> None:
    raw = spark.createDataFrame(
        [("alice", "m-1", "5", "2024-05-30 10:00:00", None), ("bob", "m-1", "1", "30/05/2024", None)],
        RAW_INTERACTIONS_SCHEMA,
    )
    out = validate_interactions(
        raw,
        rules=ValidationConfig(numeric_ids=False),
        feedback="explicit",
        timestamp_format="yyyy-MM-dd HH:mm:ss",
        run_date=RUN,
    )
    assertDataFrameEqual(
        out.valid,
        spark.createDataFrame([("alice", "m-1", 5.0, dt.datetime(2024, 5, 30, 10))], INTERACTIONS_SCHEMA),
    )
    assert [r.reason for r in out.rejects.collect()] == ["unparseable timestamp"]


def test_items_validation(spark: SparkSession) -> None:
    raw = spark.createDataFrame(
        [
            ("1", "Toy Story (1995)", None, ["Animation", "Comedy"], ["pixar"], None),
            ("2", "Heat", 1995, None, None, None),
            ("1", "Toy Story again (1995)", None, [], [], None),  # duplicate id: first row wins
            (None, "No id", None, [], [], None),
            ("abc", "Bad id", None, [], [], None),
            (None, None, None, None, None, "broken|line"),
        ],
        RAW_ITEMS_SCHEMA,
    )
    out = validate_items(raw, rules=ValidationConfig(), run_date=RUN)
    assertDataFrameEqual(
        out.valid,
        spark.createDataFrame(
            [
                ("1", "Toy Story (1995)", 1995, ["Animation", "Comedy"], ["pixar"]),
                ("2", "Heat", 1995, [], []),
            ],
            ITEMS_SCHEMA,
        ),
    )
    reasons = sorted(r.reason for r in out.rejects.collect())
    assert reasons == ["duplicate item_id", "malformed line", "missing item_id", "non-numeric item_id"]
