"""The bad-input catalogue: every kind of bad input either stops ingest with an error that names the
problem (and then nothing is written: every table keeps its version) or lands in ``rejects`` with its
reason while the good rows go through.

Each test feeds files through the configured reader (``ingest.source`` + paths, as a user would) and
compares whole tables. Row rules in isolation are in test_validate.py, the readers in test_generic.py
and test_movielens.py; downstream handling of a one-interaction user is in test_recommend_stage.py.

===============================  ==========================================================  ======
kind                             behaviour                                                   how
===============================  ==========================================================  ======
empty file                       "<file> is empty"                                           error
header-only file                 "has no interaction rows (an empty file, or a header ...)"  error
wrong separator (with header)    "one field when split on ingest.generic.sep=',' ..."        error
wrong separator (no header)      same                                                        error
wrong separator (MovieLens)      "all N interaction rows were rejected (malformed line: N)"  error
non-numeric ids                  non-numeric user_id / item_id                               reject
ids beyond int range             kept (string ids, int index); beyond 64 bits: out of range  both
ratings out of range             "rating out of range [0.5, 5]" (Infinity too)               reject
NaN ratings                      "rating is NaN" (CSV "NaN"/"nan", Parquet NaN)              reject
duplicate (user, item, ts)       "duplicate (user_id, item_id)"; the higher rating wins      reject
unknown item                     "unknown item_id"                                           reject
latin-1 titles                   read right when declared; read as UTF-8: encoding error     error
user with one interaction        kept; in train, never in test                               kept
single-item catalogue            ingested; then als (and every stage that splits for         error
                                 evaluation): "the evaluation split leaves no test
                                 interaction ... a single-item catalogue has nothing to rank"
missing path                     "ingest.generic.path: <path> does not exist" (and others)   error
===============================  ==========================================================  ======
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from support.common import local_overrides
from watchnext import tables
from watchnext.config import Config, load_config
from watchnext.constants import (
    TABLE_INTERACTIONS,
    TABLE_ITEM_INDEX,
    TABLE_ITEMS,
    TABLE_REJECTS,
    TABLE_USER_INDEX,
)
from watchnext.evaluation import protocol
from watchnext.evaluation.protocol import EmptyTestError
from watchnext.ingest.validate import REJECTS_SCHEMA
from watchnext.stages import ingest
from watchnext.stages.ingest import NoInteractionsError

pytestmark = [pytest.mark.spark, pytest.mark.delta]

RUN = dt.date(2024, 6, 1)
T0 = 1_700_000_000
HEADER = "user_id,item_id,rating,timestamp"
ITEMS = ["item_id,title,genres", "10,Heat (1995),Crime|Drama", "20,Up (2009),Animation"]
GOOD = ["1,10,4.0,1700000000", "2,20,3.5,1700000001"]
WRITTEN = (TABLE_INTERACTIONS, TABLE_ITEMS, TABLE_REJECTS, TABLE_USER_INDEX, TABLE_ITEM_INDEX)
INTERACTIONS = "user_id string, item_id string, rating double"


def write(path: Path, lines: list[str], encoding: str = "utf-8") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + "\n" for line in lines).encode(encoding))
    return str(path)


def generic(
    cfg: Config, tmp_path: Path, ratings: list[str], *overrides: str, items: list[str] = ITEMS
) -> Config:
    """``cfg`` reading ``ratings`` (header included) and ``items`` as generic CSV files."""
    return cfg.with_overrides(
        "ingest.source=generic",
        f"ingest.generic.path={write(tmp_path / 'in' / 'ratings.csv', ratings)}",
        f"ingest.generic.items_path={write(tmp_path / 'in' / 'items.csv', items)}",
        *overrides,
    )


def record(u: str | None, i: str | None, r: str | None, t: str | None) -> str:
    fields = {"user_id": u, "item_id": i, "rating": r, "timestamp": t}
    return json.dumps({k: v for k, v in fields.items() if v is not None}, separators=(",", ":"))


def rejects(spark: SparkSession, rows: list[tuple[str, str]], dataset: str = "interactions") -> DataFrame:
    return spark.createDataFrame([(dataset, reason, rec, RUN) for reason, rec in rows], REJECTS_SCHEMA)


def read(spark: SparkSession, cfg: Config, table: str) -> DataFrame:
    return tables.read_run_date(spark, cfg.table_path(table), RUN)


def interactions(spark: SparkSession, cfg: Config) -> DataFrame:
    return read(spark, cfg, TABLE_INTERACTIONS).select("user_id", "item_id", "rating")


def versions(spark: SparkSession, cfg: Config) -> dict[str, int | None]:
    """The current version of every table ingest writes (None: no table)."""
    out: dict[str, int | None] = {}
    for t in WRITTEN:
        path = cfg.table_path(t)
        out[t] = (
            DeltaTable.forPath(spark, path).history(1).first().version if tables.exists(spark, path) else None
        )
    return out


# ------------------------------------------------------------------------------- errors: the file
def test_empty_file(spark: SparkSession, cfg: Config, tmp_path: Path) -> None:
    folder = tmp_path / "ml"
    write(folder / "ratings.csv", [])
    write(folder / "movies.csv", ["movieId,title,genres", "10,Heat (1995),Crime"])
    c = cfg.with_overrides("ingest.source=movielens", f"ingest.movielens.path={folder}")
    with pytest.raises(ValueError, match=r"ratings\.csv is empty"):
        ingest.run(spark, c, RUN)
    assert versions(spark, c) == dict.fromkeys(WRITTEN)


@pytest.mark.parametrize(
    ("lines", "overrides"),
    [
        pytest.param(["user_id;item_id;rating;timestamp", "1;10;4.0;1700000000"], [], id="header"),
        pytest.param(
            ["1;10;4.0;1700000000", "2;20;3.5;1700000001"], ["ingest.generic.header=false"], id="no-header"
        ),
    ],
)
def test_wrong_separator_in_a_generic_file(
    spark: SparkSession, cfg: Config, tmp_path: Path, lines: list[str], overrides: list[str]
) -> None:
    if overrides:
        overrides = [
            *overrides,
            "ingest.generic.columns.user=_c0",
            "ingest.generic.columns.item=_c1",
            "ingest.generic.columns.rating=_c2",
            "ingest.generic.columns.timestamp=_c3",
        ]
    c = generic(cfg, tmp_path, lines, *overrides)
    with pytest.raises(
        ValueError, match=r"one field when split on ingest\.generic\.sep=',' but contains ';'"
    ):
        ingest.run(spark, c, RUN)
    assert versions(spark, c) == dict.fromkeys(WRITTEN)


def test_wrong_separator_in_a_movielens_file(spark: SparkSession, cfg: Config, tmp_path: Path) -> None:
    # ml-1m is '::'-separated; this copy was re-saved with tabs: every line is malformed
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", ["1\t10\t4\t978300760", "2\t10\t3\t978300761"], "ISO-8859-1")
    write(folder / "movies.dat", ["10::Heat (1995)::Crime"], "ISO-8859-1")
    c = cfg.with_overrides("ingest.source=movielens", f"ingest.movielens.path={folder}")
    with pytest.raises(
        NoInteractionsError,
        match=r"all 2 interaction rows were rejected \(malformed line: 2\) \(every line malformed: is the "
        r"separator right",
    ):
        ingest.run(spark, c, RUN)
    assert versions(spark, c) == dict.fromkeys(WRITTEN)


def test_missing_path(spark: SparkSession, cfg: Config, tmp_path: Path) -> None:
    nowhere = tmp_path / "nowhere"
    c = generic(cfg, tmp_path, [HEADER, *GOOD])
    cases = [
        (c.with_overrides(f"ingest.generic.path={nowhere}.csv"), FileNotFoundError, "ingest.generic.path: "),
        (
            c.with_overrides(f"ingest.generic.items_path={nowhere}.csv"),
            FileNotFoundError,
            "ingest.generic.items_path: ",
        ),
        (
            c.with_overrides("ingest.generic.format=parquet", f"ingest.generic.path={nowhere}.parquet"),
            FileNotFoundError,
            "ingest.generic.path: ",
        ),
        (
            c.with_overrides("ingest.source=movielens", f"ingest.movielens.path={nowhere}"),
            ValueError,
            "MovieLens folder ",
        ),
    ]
    for bad, exc, prefix in cases:
        with pytest.raises(exc) as err:
            ingest.run(spark, bad, RUN)
        assert str(err.value).startswith(prefix) and str(nowhere) in str(err.value), str(err.value)
        assert "does not exist" in str(err.value)
    assert versions(spark, c) == dict.fromkeys(WRITTEN)


# --------------------------------------------------------------------------- rows: one file, every kind
# One ingest of one file holding every row-level kind (each kind with users of its own), so the
# catalogue costs one run of the stage; each test checks its kind's slice of the tables.
BIG, BIGGEST, TOO_BIG = "2147483648", "9223372036854775807", "9223372036854775808"
OUT_OF_RANGE = ["5.5", "0", "-1", "Infinity"]
ROWS = {
    "good": GOOD,
    "non-numeric ids": [f"u3,10,4.0,{T0}", f"3,x10,4.0,{T0}", f"3,1e3,4,{T0}"],
    # ids are strings with an int index of their own: a 64-bit id is fine, beyond 64 bits it is not
    "ids beyond int range": [f"{BIG},10,4.0,{T0}", f"{BIGGEST},20,2.0,{T0}", f"{TOO_BIG},10,4.0,{T0}"],
    "ratings out of range": [f"40,10,0.5,{T0}", f"41,10,5,{T0}"]  # the bounds are valid
    + [f"{42 + k},10,{r},{T0}" for k, r in enumerate(OUT_OF_RANGE)],
    "NaN": [f"50,10,NaN,{T0}", f"51,10,nan,{T0}"],
    "duplicates": [
        f"60,10,4.0,{T0}",
        f"60,10,4.0,{T0}",  # the same event twice
        f"61,10,3.0,{T0}",
        f"61,10,5.0,{T0}",  # same user, item and time, another rating: the higher one wins
        f"62,10,2.0,{T0}",
        f"62,10,4.5,{T0 + 5}",  # a later event of the pair wins
    ],
    "unknown item": [f"70,30,4.0,{T0}"],
    # user 80 has one interaction; users 81 and 82 have four, so the split has a test set
    "one interaction": [f"80,20,3.0,{T0}"]
    + [f"{u},{i},4.0,{T0 + i}" for u in (81, 82) for i in (10, 11, 12, 13)],
}
DUP = "duplicate (user_id, item_id)"
EXPECTED_REJECTS = {
    "non-numeric ids": [
        ("non-numeric user_id", record("u3", "10", "4.0", str(T0))),
        ("non-numeric item_id", record("3", "x10", "4.0", str(T0))),
        ("non-numeric item_id", record("3", "1e3", "4", str(T0))),
    ],
    "ids beyond int range": [("user_id out of range", record(TOO_BIG, "10", "4.0", str(T0)))],
    "ratings out of range": [
        ("rating out of range [0.5, 5]", record(str(42 + k), "10", r, str(T0)))
        for k, r in enumerate(OUT_OF_RANGE)
    ],
    "NaN": [
        ("rating is NaN", record("50", "10", "NaN", str(T0))),
        ("rating is NaN", record("51", "10", "nan", str(T0))),
    ],
    "duplicates": [
        (DUP, record("60", "10", "4.0", str(T0))),
        (DUP, record("61", "10", "3.0", str(T0))),
        (DUP, record("62", "10", "2.0", str(T0))),
    ],
    "unknown item": [("unknown item_id", record("70", "30", "4.0", str(T0)))],
}
EXPECTED_VALID = {
    "good": [("1", "10", 4.0), ("2", "20", 3.5)],
    "ids beyond int range": [(BIG, "10", 4.0), (BIGGEST, "20", 2.0)],
    "ratings out of range": [("40", "10", 0.5), ("41", "10", 5.0)],
    "duplicates": [("60", "10", 4.0), ("61", "10", 5.0), ("62", "10", 4.5)],
    "one interaction": [("80", "20", 3.0)]
    + [(u, str(i), 4.0) for u in ("81", "82") for i in (10, 11, 12, 13)],
}


@pytest.fixture(scope="module")
def mixed(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Config:
    tmp = tmp_path_factory.mktemp("bad_rows")
    lines = [HEADER, *(line for rows in ROWS.values() for line in rows)]
    items = [*ITEMS, *(f"{i},Film {i} (2000),Drama" for i in (11, 12, 13))]
    c = generic(load_config(env="local", overrides=local_overrides(tmp)), tmp, lines, items=items)
    ingest.run(spark, c, RUN)
    return c


def _rejects_of(spark: SparkSession, c: Config, kind: str) -> tuple[DataFrame, DataFrame]:
    reasons = {reason for reason, _ in EXPECTED_REJECTS[kind]}
    got = read(spark, c, TABLE_REJECTS).where(F.col("reason").isin(*reasons))
    return got, rejects(spark, EXPECTED_REJECTS[kind])


def _valid_of(spark: SparkSession, c: Config, kind: str) -> tuple[DataFrame, DataFrame]:
    users = sorted({u for u, _, _ in EXPECTED_VALID[kind]})
    got = interactions(spark, c).where(F.col("user_id").isin(*users))
    return got, spark.createDataFrame(EXPECTED_VALID[kind], INTERACTIONS)


def test_every_row_is_valid_or_rejected_with_its_reason(spark: SparkSession, mixed: Config) -> None:
    assertDataFrameEqual(
        read(spark, mixed, TABLE_REJECTS),
        rejects(spark, [r for rows in EXPECTED_REJECTS.values() for r in rows]),
    )
    assertDataFrameEqual(
        interactions(spark, mixed),
        spark.createDataFrame([r for rows in EXPECTED_VALID.values() for r in rows], INTERACTIONS),
    )


def test_header_only_file_changes_nothing(spark: SparkSession, mixed: Config, tmp_path: Path) -> None:
    before = versions(spark, mixed)
    c = generic(mixed, tmp_path, [HEADER])
    with pytest.raises(NoInteractionsError, match=r"has no interaction rows \(an empty file, or a header"):
        ingest.run(spark, c, RUN)
    assert versions(spark, c) == before
    test_every_row_is_valid_or_rejected_with_its_reason(spark, mixed)


def test_non_numeric_ids(spark: SparkSession, mixed: Config) -> None:
    assertDataFrameEqual(*_rejects_of(spark, mixed, "non-numeric ids"))


def test_ids_beyond_int_range(spark: SparkSession, mixed: Config) -> None:
    assertDataFrameEqual(*_rejects_of(spark, mixed, "ids beyond int range"))
    assertDataFrameEqual(*_valid_of(spark, mixed, "ids beyond int range"))
    # every valid user got an int index: shorter ids first, then in order
    valid_users = sorted(
        {u for rows in EXPECTED_VALID.values() for u, _, _ in rows}, key=lambda u: (len(u), u)
    )
    assertDataFrameEqual(
        tables.read(spark, mixed.table_path(TABLE_USER_INDEX)),
        [(u, k, RUN) for k, u in enumerate(valid_users)],
        "user_id string, user_idx int, first_seen date",
    )
    assert valid_users[-2:] == [BIG, BIGGEST]


def test_ratings_out_of_range(spark: SparkSession, mixed: Config) -> None:
    assertDataFrameEqual(*_rejects_of(spark, mixed, "ratings out of range"))
    assertDataFrameEqual(*_valid_of(spark, mixed, "ratings out of range"))


def test_nan_ratings(spark: SparkSession, mixed: Config) -> None:
    assertDataFrameEqual(*_rejects_of(spark, mixed, "NaN"))


def test_duplicate_user_item_timestamp(spark: SparkSession, mixed: Config) -> None:
    assertDataFrameEqual(*_rejects_of(spark, mixed, "duplicates"))
    assertDataFrameEqual(*_valid_of(spark, mixed, "duplicates"))


def test_unknown_item(spark: SparkSession, mixed: Config) -> None:
    assertDataFrameEqual(*_rejects_of(spark, mixed, "unknown item"))


def test_user_with_one_interaction(spark: SparkSession, mixed: Config) -> None:
    """Kept; the evaluation split keeps the only interaction in train (a test row could not be scored)."""
    assertDataFrameEqual(*_valid_of(spark, mixed, "one interaction"))
    inter = read(spark, mixed, TABLE_INTERACTIONS)
    train, test = protocol.split(inter, mixed.evaluation)
    one = inter.where("user_id = '80'").select("user_idx", "item_idx")
    assertDataFrameEqual(train.join(one.select("user_idx"), "user_idx").select("user_idx", "item_idx"), one)
    assert test.join(one.select("user_idx"), "user_idx").isEmpty()
    assert not test.isEmpty()


def test_single_item_catalogue(spark: SparkSession, cfg: Config, tmp_path: Path) -> None:
    """Valid rows, so ingest takes them; the model stages then say why they cannot work."""
    from watchnext.stages import als

    ratings = [HEADER, *(f"{u},10,{1 + u % 5}.0,{T0 + u}" for u in range(1, 31))]
    c = generic(cfg, tmp_path, ratings, items=["item_id,title,genres", "10,Heat (1995),Crime|Drama"])
    ingest.run(spark, c, RUN)
    assertDataFrameEqual(
        read(spark, c, TABLE_ITEMS).select("item_id", "item_idx"), [("10", 0)], "item_id string, item_idx int"
    )
    assert read(spark, c, TABLE_INTERACTIONS).count() == 30
    # als (and ncf, similarities, recommend, evaluate: every stage that splits for evaluation)
    with pytest.raises(
        EmptyTestError,
        match=r"leaves no test interaction in 30 interactions of 30 users over 1 item: "
        r"no model can be scored \(a single-item catalogue has nothing to rank\)",
    ):
        als.run(spark, c, RUN)
    assert not tables.exists(spark, c.table_path("user_factors"))


def test_nan_ratings_in_parquet(spark: SparkSession, cfg: Config, tmp_path: Path) -> None:
    path = tmp_path / "ratings.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 2, 3], pa.int64()),
                "item_id": pa.array([10, 20, 10], pa.int64()),
                "rating": pa.array([4.0, float("nan"), 3.0], pa.float64()),
                "timestamp": pa.array([T0, T0, T0], pa.int64()),
            }
        ),
        path,
    )
    c = cfg.with_overrides(
        "ingest.source=generic", "ingest.generic.format=parquet", f"ingest.generic.path={path}"
    )
    ingest.run(spark, c, RUN)
    assertDataFrameEqual(interactions(spark, c), [("1", "10", 4.0), ("3", "10", 3.0)], INTERACTIONS)
    assertDataFrameEqual(
        read(spark, c, TABLE_REJECTS), rejects(spark, [("rating is NaN", record("2", "20", "NaN", str(T0)))])
    )


# ------------------------------------------------------------------------------- text encoding
LATIN1_ITEMS = [
    "item_id,title,genres",
    '10,"Misérables, Les (1995)",Drama|Musical',
    "20,Amélie (2001),Comedy",
]


def _latin1(cfg: Config, tmp_path: Path, *overrides: str) -> Config:
    items = write(tmp_path / "in" / "items.csv", LATIN1_ITEMS, "ISO-8859-1")
    return cfg.with_overrides(
        "ingest.source=generic",
        f"ingest.generic.path={write(tmp_path / 'in' / 'ratings.csv', [HEADER, *GOOD])}",
        f"ingest.generic.items_path={items}",
        *overrides,
    )


def test_latin1_titles_declared(spark: SparkSession, cfg: Config, tmp_path: Path) -> None:
    c = _latin1(cfg, tmp_path, "ingest.generic.encoding=ISO-8859-1")
    ingest.run(spark, c, RUN)
    assertDataFrameEqual(
        read(spark, c, TABLE_ITEMS).select("item_id", "title", "year", "genres"),
        [
            ("10", "Misérables, Les (1995)", 1995, ["Drama", "Musical"]),
            ("20", "Amélie (2001)", 2001, ["Comedy"]),
        ],
        "item_id string, title string, year int, genres array<string>",
    )


def test_latin1_titles_read_as_utf8(spark: SparkSession, cfg: Config, tmp_path: Path) -> None:
    c = _latin1(cfg, tmp_path)  # the default encoding, UTF-8
    with pytest.raises(
        ValueError,
        match=r"2 item rows hold bytes that are not valid in the file's encoding .*ingest\.generic\.encoding",
    ):
        ingest.run(spark, c, RUN)
    assert versions(spark, c) == dict.fromkeys(WRITTEN)


# ------------------------------------------------------------------------------- valid but thin
