"""MovieLens: layout detection, the three layouts parsed from hand-written files, and download."""

from __future__ import annotations

import csv
import hashlib
import http.server
import io
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual, assertSchemaEqual

from watchnext.config import MovieLensConfig
from watchnext.constants import COL_CORRUPT, COL_ITEM, COL_USER
from watchnext.ingest.movielens import (
    DATASETS,
    MARKER,
    DownloadError,
    detect_layout,
    download_movielens,
    movielens_source,
    read_movielens,
)
from watchnext.ingest.raw import EPOCH_SECONDS, RAW_INTERACTIONS_SCHEMA, RAW_ITEMS_SCHEMA, RawSource

LATIN1 = "ISO-8859-1"


def write(path: Path, lines: list[str], encoding: str = "utf-8") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + "\n" for line in lines).encode(encoding))


def assert_source(spark: SparkSession, src: RawSource, interactions: list, items: list) -> None:
    assertSchemaEqual(src.interactions.schema, RAW_INTERACTIONS_SCHEMA, ignoreNullable=False)
    assert src.items is not None
    assertSchemaEqual(src.items.schema, RAW_ITEMS_SCHEMA, ignoreNullable=False)
    assertDataFrameEqual(src.interactions, spark.createDataFrame(interactions, RAW_INTERACTIONS_SCHEMA))
    assertDataFrameEqual(src.items, spark.createDataFrame(items, RAW_ITEMS_SCHEMA))
    assert src.timestamp_format == EPOCH_SECONDS


# ------------------------------------------------------------------------------------------- detection
@pytest.mark.parametrize(
    ("files", "layout"),
    [
        (["u.data", "u.item", "u.user"], "ml-100k"),
        (["ratings.dat", "movies.dat", "users.dat"], "ml-1m"),
        (["ratings.dat", "movies.dat", "tags.dat"], "ml-1m"),  # ml-10m
        (["ratings.csv", "movies.csv", "tags.csv", "links.csv"], "ml-latest"),
        (["ratings.csv", "movies.csv"], "ml-latest"),
    ],
)
def test_detect_layout(tmp_path: Path, files: list[str], layout: str) -> None:
    for f in files:
        (tmp_path / f).touch()
    assert detect_layout(tmp_path) == layout
    assert detect_layout(str(tmp_path)) == layout


def test_detect_layout_names_the_folder_and_the_files_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").touch()  # movies.csv missing
    with pytest.raises(ValueError) as err:
        detect_layout(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg
    for name in ("u.data", "u.item", "ratings.dat", "movies.dat", "ratings.csv", "movies.csv"):
        assert name in msg


def test_detect_layout_hints_at_a_subfolder(tmp_path: Path) -> None:
    sub = tmp_path / "ml-latest-small"
    sub.mkdir()
    (sub / "ratings.csv").touch()
    (sub / "movies.csv").touch()
    with pytest.raises(ValueError, match="subfolder .*ml-latest-small looks like one"):
        detect_layout(tmp_path)


def test_detect_layout_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        detect_layout(tmp_path / "nope")


# ------------------------------------------------------------------------------------------ ml-100k
FLAGS_TOY = "0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0"  # Animation, Children's, Comedy
FLAGS_MIS = "0|0|0|0|0|0|0|0|1|0|0|0|1|0|0|0|0|1|0"  # Drama, Musical, War
FLAGS_UNKNOWN = "1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0"


@pytest.mark.spark
def test_read_ml_100k(spark: SparkSession, tmp_path: Path) -> None:
    write(
        tmp_path / "u.data",
        [
            "196\t242\t3\t881250949",
            "186\t302\t3\t891717742",
            "22\t377\t1\t878887116\t9",  # one field too many
            "244\t51",  # too few
        ],
    )
    write(
        tmp_path / "u.item",
        [
            f"1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|{FLAGS_TOY}",
            f'2|Misérables, Les (1995)|07-Apr-1995||http://x/"quoted"|{FLAGS_MIS}',
            f"267|unknown||||{FLAGS_UNKNOWN}",
            "4|Truncated (1995)|01-Jan-1995|",  # malformed
            "5|Bad flag (1996)|01-Jan-1996||u|0|0|2|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0",  # flag "2"
        ],
        encoding=LATIN1,
    )
    src = read_movielens(spark, tmp_path)
    assert src.name == "ml-100k"
    assert_source(
        spark,
        src,
        interactions=[
            ("196", "242", "3", "881250949", None),
            ("186", "302", "3", "891717742", None),
            (None, None, None, None, "22\t377\t1\t878887116\t9"),
            (None, None, None, None, "244\t51"),
        ],
        items=[
            ("1", "Toy Story (1995)", 1995, ["Animation", "Children", "Comedy"], [], None),
            ("2", "Misérables, Les (1995)", 1995, ["Drama", "Musical", "War"], [], None),
            ("267", "unknown", None, [], [], None),
            (None, None, None, None, None, "4|Truncated (1995)|01-Jan-1995|"),
            (
                None,
                None,
                None,
                None,
                None,
                "5|Bad flag (1996)|01-Jan-1996||u|0|0|2|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0",
            ),
        ],
    )


# -------------------------------------------------------------------------------------------- ml-1m
@pytest.mark.spark
def test_read_ml_1m(spark: SparkSession, tmp_path: Path) -> None:
    write(
        tmp_path / "ratings.dat",
        [
            "1::1193::5::978300760",
            "1::661::3::978302109",
            "2::3::4",  # too few
            "3::4::5::6::7",  # too many
        ],
        encoding=LATIN1,
    )
    write(
        tmp_path / "movies.dat",
        [
            "1::Toy Story (1995)::Animation|Children's|Comedy",
            "73::Misérables, Les (1995)::Drama|Musical",
            '2228::"Great Performances" Cats (1998)::Musical',  # a bare quote is just a character
            "1196::Star Wars: Episode V - The Empire Strikes Back (1980)::Action|Sci-Fi",
            "99::Broken (1999)",  # malformed
        ],
        encoding=LATIN1,
    )
    src = read_movielens(spark, str(tmp_path))
    assert src.name == "ml-1m"
    assert_source(
        spark,
        src,
        interactions=[
            ("1", "1193", "5", "978300760", None),
            ("1", "661", "3", "978302109", None),
            (None, None, None, None, "2::3::4"),
            (None, None, None, None, "3::4::5::6::7"),
        ],
        items=[
            ("1", "Toy Story (1995)", None, ["Animation", "Children", "Comedy"], [], None),
            ("73", "Misérables, Les (1995)", None, ["Drama", "Musical"], [], None),
            ("2228", '"Great Performances" Cats (1998)', None, ["Musical"], [], None),
            (
                "1196",
                "Star Wars: Episode V - The Empire Strikes Back (1980)",
                None,
                ["Action", "Sci-Fi"],
                [],
                None,
            ),
            (None, None, None, None, None, "99::Broken (1999)"),
        ],
    )


@pytest.mark.spark
def test_read_ml_10m_reads_tags_dat(spark: SparkSession, tmp_path: Path) -> None:
    write(tmp_path / "ratings.dat", ["1::122::5::838985046", "1::185::4.5::838983525"])
    write(
        tmp_path / "movies.dat",
        ["122::Boomerang (1992)::Comedy|Romance", "185::Net, The (1995)::(no genres listed)"],
    )
    write(tmp_path / "tags.dat", ["15::122::Eddie Murphy::1215184630", "20::122::eddie murphy ::1215184631"])
    src = read_movielens(spark, tmp_path, name="ml-10m")
    assert src.name == "ml-10m"
    assert_source(
        spark,
        src,
        interactions=[("1", "122", "5", "838985046", None), ("1", "185", "4.5", "838983525", None)],
        items=[
            ("122", "Boomerang (1992)", None, ["Comedy", "Romance"], ["eddie murphy"], None),
            ("185", "Net, The (1995)", None, [], [], None),
        ],
    )


# ---------------------------------------------------------------------------------------- ml-latest
def write_latest(folder: Path) -> None:
    write(
        folder / "ratings.csv",
        [
            "userId,movieId,rating,timestamp",
            "1,1,4.0,964982703",
            "1,11,4.5,964981247",
            "2,7789,5.0",  # too few
        ],
    )
    write(
        folder / "movies.csv",
        [
            "movieId,title,genres",
            "1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy",
            '11,"American President, The (1995)",Comedy|Drama|Romance',
            '73,"Misérables, Les (1995)",Drama|War',
            '7789,"11\'09""01 - September 11 (2002)",Drama',
            "114335,La cravate (1957),(no genres listed)",
            '5,"Unclosed (1995),Comedy',  # broken quoting
        ],
    )
    write(
        folder / "tags.csv",
        [
            "userId,movieId,tag,timestamp",
            "2,1,Pixar,1445714994",
            "3,1, pixar ,1445714995",
            "4,1,fun,1445714996",
            '5,11,"politics, US",1445714997',
            '567,7789,"""artsy""",1525285878',
            "6,999,orphan,1445714998",  # no such movie: dropped
            "7,1,too,many,1445714999",  # malformed
        ],
    )


@pytest.mark.spark
def test_read_ml_latest(spark: SparkSession, tmp_path: Path) -> None:
    write_latest(tmp_path)
    src = read_movielens(spark, tmp_path)
    assert src.name == "ml-latest"
    assert_source(
        spark,
        src,
        interactions=[
            ("1", "1", "4.0", "964982703", None),
            ("1", "11", "4.5", "964981247", None),
            (None, None, None, None, "2,7789,5.0"),
        ],
        items=[
            (
                "1",
                "Toy Story (1995)",
                None,
                ["Adventure", "Animation", "Children", "Comedy", "Fantasy"],
                ["fun", "pixar"],
                None,
            ),
            (
                "11",
                "American President, The (1995)",
                None,
                ["Comedy", "Drama", "Romance"],
                ["politics, us"],
                None,
            ),
            ("73", "Misérables, Les (1995)", None, ["Drama", "War"], [], None),
            ("7789", "11'09\"01 - September 11 (2002)", None, ["Drama"], ['"artsy"'], None),
            ("114335", "La cravate (1957)", None, [], [], None),
            (None, None, None, None, None, '5,"Unclosed (1995),Comedy'),
            # a malformed tag line cannot sit on a movie row: it is kept as a corrupt item row
            (None, None, None, None, None, "7,1,too,many,1445714999"),
        ],
    )


@pytest.mark.spark
def test_read_ml_latest_from_spark_part_folders(spark: SparkSession, tmp_path: Path) -> None:
    """ratings.csv / movies.csv as folders of part files, each with its header (how Spark writes CSV)."""
    write(
        tmp_path / "ratings.csv" / "part-00000.csv", ["userId,movieId,rating,timestamp", "1,1,4.0,964982703"]
    )
    write(
        tmp_path / "ratings.csv" / "part-00001.csv", ["userId,movieId,rating,timestamp", "2,1,3.5,964982704"]
    )
    write(tmp_path / "ratings.csv" / "_SUCCESS", [])
    write(tmp_path / "movies.csv" / "part-00000.csv", ["movieId,title,genres", "1,Toy Story (1995),Comedy"])
    assert detect_layout(tmp_path) == "ml-latest"
    assert_source(
        spark,
        read_movielens(spark, tmp_path),
        interactions=[("1", "1", "4.0", "964982703", None), ("2", "1", "3.5", "964982704", None)],
        items=[("1", "Toy Story (1995)", None, ["Comedy"], [], None)],
    )


@pytest.mark.spark
def test_corrupt_flag_survives_column_pruning(spark: SparkSession, tmp_path: Path) -> None:
    """spark.read.csv forgets the malformed flag once a query prunes a data column; our reader must not."""
    write_latest(tmp_path)
    src = read_movielens(spark, tmp_path)
    assertDataFrameEqual(
        src.interactions.select(COL_USER, COL_CORRUPT).where(f"{COL_CORRUPT} is not null"),
        [(None, "2,7789,5.0")],
    )
    assert src.items is not None
    assert src.items.where(f"{COL_CORRUPT} is not null").select(COL_ITEM).count() == 2


@pytest.mark.spark
def test_ml_latest_header_is_checked(spark: SparkSession, tmp_path: Path) -> None:
    write_latest(tmp_path)
    write(tmp_path / "ratings.csv", ["movieId,userId,rating,timestamp", "1,1,4.0,964982703"])
    with pytest.raises(
        ValueError, match=r"ratings.csv has header movieId,userId,rating,timestamp; expected userId"
    ):
        read_movielens(spark, tmp_path)


@pytest.mark.spark
def test_read_real_ml_latest_small_if_present(spark: SparkSession) -> None:
    """The shared copy of ml-latest-small parses without a corrupt line and agrees with Python's csv."""
    folder = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "ml-latest-small"
    if not (folder / "ratings.csv").is_file():
        pytest.skip(f"no ml-latest-small at {folder}")
    with (folder / "movies.csv").open(encoding="utf-8", newline="") as f:
        movies = [(row[0], row[1]) for row in list(csv.reader(f))[1:]]
    with (folder / "ratings.csv").open(encoding="utf-8", newline="") as f:
        n_ratings = len(list(csv.reader(f))) - 1
    src = read_movielens(spark, folder)
    assert src.items is not None
    assert src.interactions.where(f"{COL_CORRUPT} is not null").count() == 0
    assert src.items.where(f"{COL_CORRUPT} is not null").count() == 0
    assert src.interactions.count() == n_ratings
    assertDataFrameEqual(src.items.select(COL_ITEM, "title"), movies)


# ----------------------------------------------------------------------------------------- download
@dataclass
class FakeGroupLens:
    base_url: str
    files: dict[str, bytes] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)


@pytest.fixture()
def grouplens(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeGroupLens]:
    """A local HTTP server standing in for files.grouplens.org; records every request path."""
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "*")
    state = FakeGroupLens(base_url="")

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            state.requests.append(self.path)
            body = state.files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_address[1]}/datasets/movielens"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def make_zip(top: str, files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in files.items():
            zf.writestr(f"{top}/{name}", text)
    return buf.getvalue()


SMALL = {
    "ratings.csv": "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n",
    "movies.csv": "movieId,title,genres\n1,Toy Story (1995),Animation\n",
    "README.txt": "test\n",
}


def serve(gl: FakeGroupLens, name: str, body: bytes, md5_text: str | None) -> str:
    prefix = "/datasets/movielens"
    gl.files[f"{prefix}/{name}.zip"] = body
    if md5_text is not None:
        gl.files[f"{prefix}/{name}.zip.md5"] = md5_text.encode()
    return hashlib.md5(body).hexdigest()


def test_download_verifies_extracts_and_then_uses_the_cache(grouplens: FakeGroupLens, tmp_path: Path) -> None:
    body = make_zip("ml-latest-small", SMALL)
    md5 = hashlib.md5(body).hexdigest()
    serve(grouplens, "ml-latest-small", body, f"MD5 (ml-latest-small.zip) = {md5}\n")  # BSD style
    cache = tmp_path / "cache"

    folder = download_movielens("ml-latest-small", cache, base_url=grouplens.base_url)
    assert folder == cache / "ml-latest-small" / "ml-latest-small"
    assert (folder / "ratings.csv").read_text() == SMALL["ratings.csv"]
    assert detect_layout(folder) == "ml-latest"
    assert (cache / "ml-latest-small" / MARKER).is_file()
    assert grouplens.requests == [
        "/datasets/movielens/ml-latest-small.zip.md5",
        "/datasets/movielens/ml-latest-small.zip",
    ]
    assert not list(cache.glob(".*"))  # no temporary files or folders left behind

    again = download_movielens("ml-latest-small", cache, base_url=grouplens.base_url)
    assert again == folder
    assert len(grouplens.requests) == 2  # no network IO at all


def test_download_finds_a_differently_named_top_folder(grouplens: FakeGroupLens, tmp_path: Path) -> None:
    body = make_zip(
        "ml-10M100K", {"ratings.dat": "1::122::5::838985046\n", "movies.dat": "122::B (1992)::Comedy\n"}
    )
    md5 = serve(grouplens, "ml-10m", body, None)
    grouplens.files["/datasets/movielens/ml-10m.zip.md5"] = f"{md5}  ml-10m.zip\n".encode()  # GNU style
    folder = download_movielens("ml-10m", tmp_path, base_url=grouplens.base_url)
    assert folder == tmp_path / "ml-10m" / "ml-10M100K"
    assert detect_layout(folder) == "ml-1m"


def test_checksum_mismatch_raises_and_leaves_nothing(grouplens: FakeGroupLens, tmp_path: Path) -> None:
    body = make_zip("ml-latest-small", SMALL)
    actual = hashlib.md5(body).hexdigest()
    wrong = "0" * 32
    serve(grouplens, "ml-latest-small", body, f"MD5 (ml-latest-small.zip) = {wrong}\n")
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match="checksum mismatch") as err:
        download_movielens("ml-latest-small", cache, base_url=grouplens.base_url)
    assert wrong in str(err.value) and actual in str(err.value)
    assert list(cache.rglob("*")) == []  # no partial download, no zip, no folder


def test_expected_md5_overrides_the_published_one(grouplens: FakeGroupLens, tmp_path: Path) -> None:
    body = make_zip("ml-latest-small", SMALL)
    md5 = serve(grouplens, "ml-latest-small", body, "MD5 (ml-latest-small.zip) = " + "f" * 32)
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download_movielens("ml-latest-small", tmp_path, base_url=grouplens.base_url, expected_md5="a" * 32)
    grouplens.requests.clear()
    folder = download_movielens(
        "ml-latest-small", tmp_path, base_url=grouplens.base_url, expected_md5=md5.upper()
    )
    assert detect_layout(folder) == "ml-latest"
    assert grouplens.requests == ["/datasets/movielens/ml-latest-small.zip"]  # the .md5 file is not fetched
    # The cache answers for the same checksum, or for none, without network IO.
    download_movielens("ml-latest-small", tmp_path, base_url=grouplens.base_url, expected_md5=md5)
    download_movielens("ml-latest-small", tmp_path, base_url=grouplens.base_url)
    assert len(grouplens.requests) == 1


def test_missing_checksum_file_is_a_clear_error(grouplens: FakeGroupLens, tmp_path: Path) -> None:
    serve(grouplens, "ml-100k", make_zip("ml-100k", {"u.data": "", "u.item": ""}), None)
    with pytest.raises(DownloadError, match=r"could not fetch the checksum .*ml-100k\.zip\.md5"):
        download_movielens("ml-100k", tmp_path, base_url=grouplens.base_url)
    assert list(tmp_path.iterdir()) == []


def test_unknown_dataset_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown MovieLens dataset 'ml-5m'") as err:
        download_movielens("ml-5m", tmp_path)
    for name in DATASETS:
        assert name in str(err.value)


def test_dataset_urls_are_grouplens_zips() -> None:
    assert set(DATASETS) == {
        "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small", "ml-latest",
    }  # fmt: skip
    assert DATASETS["ml-25m"] == "https://files.grouplens.org/datasets/movielens/ml-25m.zip"


# ------------------------------------------------------------------------------------------- source
@pytest.mark.spark
def test_movielens_source_by_path_and_by_name(
    spark: SparkSession, grouplens: FakeGroupLens, tmp_path: Path
) -> None:
    body = make_zip("ml-latest-small", SMALL)
    serve(grouplens, "ml-latest-small", body, f"{hashlib.md5(body).hexdigest()}  ml-latest-small.zip")
    expected = spark.createDataFrame([("1", "1", "4.0", "964982703", None)], RAW_INTERACTIONS_SCHEMA)

    by_name = movielens_source(
        spark, MovieLensConfig(name="ml-latest-small", base_url=grouplens.base_url), tmp_path / "cache"
    )
    assert by_name.name == "ml-latest-small"
    assertDataFrameEqual(by_name.interactions, expected)

    folder = tmp_path / "cache" / "ml-latest-small" / "ml-latest-small"
    by_path = movielens_source(spark, MovieLensConfig(path=str(folder), name="ml-25m"), tmp_path / "unused")
    assert by_path.name == "ml-latest"
    assertDataFrameEqual(by_path.interactions, expected)
    assert not (tmp_path / "unused").exists()


def test_movielens_source_needs_path_or_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="movielens.path .* or ingest.movielens.name"):
        movielens_source(None, MovieLensConfig(), tmp_path)  # type: ignore[arg-type]
