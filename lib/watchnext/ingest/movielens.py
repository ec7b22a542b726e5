"""MovieLens: recognise a folder's layout, read it into a :class:`RawSource`, or download it by name.

Layouts (files as GroupLens ships them; ids, ratings and epoch-second timestamps stay strings):

* ``ml-100k``: ``u.data`` (tab-separated) and ``u.item`` (``|``-separated, 19 genre flags), latin-1.
* ``ml-1m``: ``ratings.dat`` / ``movies.dat`` (``::``-separated), latin-1; also ml-10m, whose
  ``tags.dat`` is read when present.
* ``ml-latest``: ``ratings.csv`` / ``movies.csv`` / ``tags.csv`` with headers, UTF-8 (ml-latest-small,
  ml-latest, ml-20m, ml-25m, ml-32m).

A "file" may also be a folder of part files as Spark writes it (each part with its own header).

A line with the wrong number of fields keeps its text in ``_corrupt_record`` with all other columns
null; validation turns it into a reject. Genre names follow ml-latest's vocabulary ("Children", and
"(no genres listed)" is an empty list).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from watchnext.config import MovieLensConfig
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
from watchnext.ingest.generic import (
    LINE,
    conform,
    empty_list,
    first_line,
    parse_delimited,
    read_lines,
    split_header,
    split_list,
)
from watchnext.ingest.raw import EPOCH_SECONDS, RAW_INTERACTIONS_SCHEMA, RAW_ITEMS_SCHEMA, RawSource

log = logging.getLogger(__name__)

ML_100K, ML_1M, ML_LATEST = "ml-100k", "ml-1m", "ml-latest"
LAYOUT_FILES: dict[str, tuple[str, str]] = {
    ML_100K: ("u.data", "u.item"),
    ML_1M: ("ratings.dat", "movies.dat"),
    ML_LATEST: ("ratings.csv", "movies.csv"),
}
LAYOUT_ENCODING = {ML_100K: "ISO-8859-1", ML_1M: "ISO-8859-1", ML_LATEST: "UTF-8"}

# u.item's genre flags, in file order; "unknown" is read but never listed as a genre.
ML_100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRES = "(no genres listed)"
_GENRE_ALIASES = {"Children's": "Children"}  # ml-1m's spelling -> ml-latest's

_LATEST_HEADERS = {
    "ratings.csv": ["userId", "movieId", "rating", "timestamp"],
    "movies.csv": ["movieId", "title", "genres"],
    "tags.csv": ["userId", "movieId", "tag", "timestamp"],
}

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens"
DATASETS: dict[str, str] = {
    name: f"{DEFAULT_BASE_URL}/{name}.zip"
    for name in ("ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest-small", "ml-latest")
}
MARKER = ".watchnext-download.json"  # written into the extracted folder once the zip's md5 is verified
_CHUNK = 1 << 20
_TIMEOUT_S = 60


class DownloadError(RuntimeError):
    """A dataset could not be downloaded or did not verify."""


# ------------------------------------------------------------------------------------------ layout
def detect_layout(path: str | os.PathLike[str]) -> str:
    """``"ml-100k"``, ``"ml-1m"`` or ``"ml-latest"`` from the files in the local folder ``path``."""
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"MovieLens folder {folder} does not exist or is not a folder")
    for layout, files in LAYOUT_FILES.items():
        if all((folder / f).exists() for f in files):
            return layout
    looked_for = "; ".join(f"{' + '.join(files)} ({layout})" for layout, files in LAYOUT_FILES.items())
    hint = ""
    subdirs = [d for d in sorted(folder.iterdir()) if d.is_dir()]
    for sub in subdirs:
        if any(all((sub / f).exists() for f in files) for files in LAYOUT_FILES.values()):
            hint = f"; its subfolder {sub} looks like one"
            break
    raise ValueError(f"{folder} is not a MovieLens folder: looked for {looked_for}{hint}")


# -------------------------------------------------------------------------------------------- read
def read_movielens(
    spark: SparkSession,
    path: str | os.PathLike[str],
    name: str | None = None,
    encoding: str | None = None,
) -> RawSource:
    """Read the MovieLens folder ``path`` (any supported layout) into a :class:`RawSource`.

    ``name`` labels the source (default: the layout); ``encoding`` overrides the layout's
    (latin-1 for ml-100k/ml-1m, UTF-8 for ml-latest).
    """
    layout = detect_layout(path)
    folder = Path(path)
    enc = encoding or LAYOUT_ENCODING[layout]
    log.info("reading MovieLens %s layout from %s (%s)", layout, folder, enc)
    if layout == ML_100K:
        interactions, items = _read_100k(spark, folder, enc)
    elif layout == ML_1M:
        interactions, items = _read_1m(spark, folder, enc)
    else:
        interactions, items = _read_latest(spark, folder, enc)
    return RawSource(
        name=name or layout,
        interactions=conform(interactions, RAW_INTERACTIONS_SCHEMA),
        items=conform(items, RAW_ITEMS_SCHEMA),
        timestamp_format=EPOCH_SECONDS,
    )


def _lines(spark: SparkSession, file: Path, encoding: str, header: list[str] | None = None) -> DataFrame:
    lines = read_lines(spark, str(file), encoding)
    if header is not None:
        head = first_line(lines, str(file))
        found = split_header(head, ",")
        if found != header:
            raise ValueError(f"{file} has header {','.join(found)}; expected {','.join(header)}")
        lines = lines.where(F.col(LINE) != head)
    return lines


def _interactions(parsed: DataFrame) -> DataFrame:
    """user, item, rating, timestamp in fields 0-3."""
    return parsed.select(
        F.col("_f0").alias(COL_USER),
        F.col("_f1").alias(COL_ITEM),
        F.col("_f2").alias(COL_RATING),
        F.col("_f3").alias(COL_TIMESTAMP),
        F.col(COL_CORRUPT),
    )


def _genre_list(genres: Column) -> Column:
    """A ``|``-separated genre string as a list in ml-latest's vocabulary."""
    renamed = genres
    for old, new in _GENRE_ALIASES.items():
        renamed = F.regexp_replace(renamed, re.escape(old), new)
    return F.array_remove(split_list(renamed, "|"), NO_GENRES)


def _tags(parsed_tags: DataFrame) -> tuple[DataFrame, DataFrame]:
    """Per item the sorted distinct lower-cased tags, and the tag lines that could not be split."""
    tag = F.lower(F.trim(F.col("_f2")))
    per_item = (
        parsed_tags.where(F.col(COL_CORRUPT).isNull() & (tag != ""))
        .groupBy(F.col("_f1").alias(COL_ITEM))
        .agg(F.array_sort(F.collect_set(tag)).alias(COL_TAGS))
    )
    bad = parsed_tags.where(F.col(COL_CORRUPT).isNotNull()).select(COL_CORRUPT)
    return per_item, bad


def _items(movies: DataFrame, tags: tuple[DataFrame, DataFrame] | None) -> DataFrame:
    """Join tag lists onto ``movies`` (item, title, year, genres, _corrupt_record).

    A malformed tag line cannot belong to an item row, so it becomes a corrupt item row of its own:
    it reaches the rejects rather than vanishing.
    """
    ok = F.col(COL_CORRUPT).isNull()
    if tags is None:
        return movies.withColumn(COL_TAGS, F.when(ok, empty_list()))
    per_item, bad = tags
    joined = movies.join(per_item, on=COL_ITEM, how="left").select(
        COL_ITEM,
        COL_TITLE,
        COL_YEAR,
        COL_GENRES,
        F.when(ok, F.coalesce(F.col(COL_TAGS), empty_list())).alias(COL_TAGS),
        COL_CORRUPT,
    )
    orphans = bad.select(
        *(F.lit(None).alias(c) for c in (COL_ITEM, COL_TITLE, COL_YEAR, COL_GENRES, COL_TAGS)),
        COL_CORRUPT,
    )
    return joined.unionByName(conform(orphans, RAW_ITEMS_SCHEMA))


def _read_100k(spark: SparkSession, folder: Path, enc: str) -> tuple[DataFrame, DataFrame]:
    ratings = parse_delimited(_lines(spark, folder / "u.data", enc), 4, "\t", quote="")
    n_fields = 5 + len(ML_100K_GENRES)
    movies = parse_delimited(_lines(spark, folder / "u.item", enc), n_fields, "|", quote="")
    flags = [F.col(f"_f{5 + i}") for i in range(len(ML_100K_GENRES))]
    # The flags are consumed here, so a flag other than 0/1 would silently lose a genre: flag the line.
    flags_ok = F.concat_ws("", *flags).rlike(f"^[01]{{{len(flags)}}}$")
    movies = movies.withColumn(COL_CORRUPT, F.coalesce(F.col(COL_CORRUPT), F.when(~flags_ok, F.col(LINE))))
    ok = F.col(COL_CORRUPT).isNull()
    named = zip(ML_100K_GENRES, flags, strict=True)
    genres = F.array_compact(F.array(*(F.when(flag == "1", F.lit(g)) for g, flag in named if g != "unknown")))
    year = F.regexp_extract(F.col("_f2"), r"(\d{4})$", 1)  # release date like 01-Jan-1995
    items = movies.select(
        F.when(ok, F.col("_f0")).alias(COL_ITEM),
        F.when(ok, F.col("_f1")).alias(COL_TITLE),
        F.when(ok & (year != ""), year.cast("int")).alias(COL_YEAR),
        F.when(ok, genres).alias(COL_GENRES),
        F.col(COL_CORRUPT),
    )
    return _interactions(ratings), _items(items, None)


def _movies(parsed: DataFrame) -> DataFrame:
    """movieId, title, genres in fields 0-2 (the .dat and .csv movie files)."""
    ok = F.col(COL_CORRUPT).isNull()
    return parsed.select(
        F.col("_f0").alias(COL_ITEM),
        F.col("_f1").alias(COL_TITLE),
        F.lit(None).cast("int").alias(COL_YEAR),  # validation parses "Title (1995)"
        F.when(ok, _genre_list(F.col("_f2"))).alias(COL_GENRES),
        F.col(COL_CORRUPT),
    )


def _read_1m(spark: SparkSession, folder: Path, enc: str) -> tuple[DataFrame, DataFrame]:
    ratings = parse_delimited(_lines(spark, folder / "ratings.dat", enc), 4, "::", quote="")
    movies = parse_delimited(_lines(spark, folder / "movies.dat", enc), 3, "::", quote="")
    tags = None
    if (folder / "tags.dat").exists():  # ml-10m
        tags = _tags(parse_delimited(_lines(spark, folder / "tags.dat", enc), 4, "::", quote=""))
    return _interactions(ratings), _items(_movies(movies), tags)


def _read_latest(spark: SparkSession, folder: Path, enc: str) -> tuple[DataFrame, DataFrame]:
    def parse(file: str) -> DataFrame:
        header = _LATEST_HEADERS[file]
        return parse_delimited(_lines(spark, folder / file, enc, header), len(header), ",")

    tags = _tags(parse("tags.csv")) if (folder / "tags.csv").exists() else None
    return _interactions(parse("ratings.csv")), _items(_movies(parse("movies.csv")), tags)


# ---------------------------------------------------------------------------------------- download
def dataset_url(name: str, base_url: str = DEFAULT_BASE_URL) -> str:
    """The zip URL of the dataset ``name`` under ``base_url``."""
    if name not in DATASETS:
        raise ValueError(f"unknown MovieLens dataset {name!r}; known: {', '.join(DATASETS)}")
    return f"{base_url.rstrip('/')}/{name}.zip"


def download_movielens(
    name: str,
    cache_dir: str | os.PathLike[str],
    base_url: str = DEFAULT_BASE_URL,
    expected_md5: str | None = None,
) -> Path:
    """Download, verify and extract the dataset ``name`` under ``cache_dir/<name>/``.

    Returns the folder holding the data files (the zip's top folder, e.g. ``ml-10M100K``). The MD5
    is ``expected_md5`` if given, else the one GroupLens publishes at ``<zip url>.md5``. Once a
    download is verified, later calls read only the local marker (no network) unless
    ``expected_md5`` names a different checksum.
    """
    url = dataset_url(name, base_url)
    cache = Path(cache_dir)
    target = cache / name
    wanted = expected_md5.strip().lower() if expected_md5 else None
    cached = _cached(target, wanted)
    if cached is not None:
        log.info("MovieLens %s: using the verified copy in %s", name, cached)
        return cached

    md5 = wanted or _published_md5(url)
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"{name}.zip"
    if archive.is_file() and _file_md5(archive) == md5:
        log.info("MovieLens %s: %s already verified", name, archive)
    else:
        _download(url, archive, md5)
    _extract(archive, target, {"name": name, "url": url, "md5": md5})
    return _data_folder(target)


def _cached(target: Path, wanted: str | None) -> Path | None:
    marker = target / MARKER
    if not marker.is_file():
        return None
    try:
        recorded = json.loads(marker.read_text())["md5"]
        folder = _data_folder(target)
    except (ValueError, KeyError, OSError):
        return None
    if wanted is not None and recorded != wanted:
        log.info(
            "%s was verified against md5 %s, not the expected %s: downloading again", target, recorded, wanted
        )
        return None
    return folder


def _data_folder(target: Path) -> Path:
    """``target`` or its one subfolder that holds a MovieLens layout."""
    candidates = [target, *(d for d in sorted(target.iterdir()) if d.is_dir())]
    for folder in candidates:
        try:
            detect_layout(folder)
        except ValueError:
            continue
        return folder
    raise ValueError(f"{target} holds no MovieLens layout (neither it nor a subfolder)")


def _published_md5(url: str) -> str:
    md5_url = url + ".md5"
    try:
        with urllib.request.urlopen(md5_url, timeout=_TIMEOUT_S) as resp:
            text = resp.read(4096).decode("ascii", errors="replace")
    except (urllib.error.URLError, OSError) as exc:
        raise DownloadError(
            f"could not fetch the checksum {md5_url}: {exc}; pass expected_md5 "
            "(ingest.movielens.expected_md5) or point ingest.movielens.path at a local copy"
        ) from exc
    # GroupLens writes BSD style ("MD5 (ml-25m.zip) = <hex>"); GNU style ("<hex>  file") parses too.
    match = re.search(r"\b[0-9a-fA-F]{32}\b", text)
    if not match:
        raise DownloadError(f"no MD5 digest in {md5_url}: {text[:200]!r}")
    return match.group(0).lower()


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _download(url: str, dest: Path, md5: str) -> None:
    """Stream ``url`` into a temporary file beside ``dest``; rename it to ``dest`` once the MD5 matches."""
    log.info("downloading %s", url)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=_TIMEOUT_S) as resp:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
        actual = digest.hexdigest()
        if actual != md5:
            raise DownloadError(
                f"checksum mismatch for {url}: expected md5 {md5}, got {actual}; the download was removed"
            )
        os.replace(tmp, dest)
    except urllib.error.URLError as exc:
        tmp.unlink(missing_ok=True)
        raise DownloadError(
            f"could not download {url}: {exc.reason}; point ingest.movielens.path at a local copy"
        ) from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("downloaded %s (%.1f MB, md5 ok)", dest, dest.stat().st_size / 1e6)


def _extract(archive: Path, target: Path, record: dict[str, str]) -> None:
    """Unzip ``archive`` into a temporary folder, write the marker, and move it to ``target``."""
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".extracting"))
    try:
        with zipfile.ZipFile(archive) as zf:
            root = tmp.resolve()
            for member in zf.namelist():
                if not (root / member).resolve().is_relative_to(root):
                    raise DownloadError(f"{archive} has an entry outside its folder: {member!r}")
            zf.extractall(tmp)
        (tmp / MARKER).write_text(json.dumps(record))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("extracted %s into %s", archive.name, target)


# ---------------------------------------------------------------------------------------- source
def movielens_source(
    spark: SparkSession, cfg: MovieLensConfig, cache_dir: str | os.PathLike[str]
) -> RawSource:
    """Read ``cfg.path`` if set, else download ``cfg.name`` into ``cache_dir`` and read that."""
    if cfg.path:
        if cfg.name:
            log.info("movielens.path is set; ignoring movielens.name=%s", cfg.name)
        return read_movielens(spark, cfg.path)
    if not cfg.name:
        raise ValueError("set ingest.movielens.path (a local folder) or ingest.movielens.name (to download)")
    folder = download_movielens(cfg.name, cache_dir, base_url=cfg.base_url, expected_md5=cfg.expected_md5)
    return read_movielens(spark, folder, name=cfg.name)
