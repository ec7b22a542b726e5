"""Content features on a hand-made catalogue: each block against hand-written or numpy values, the
block weighting (cosine = weighted combination of block cosines), norms, title cleaning, year buckets,
dropped blocks, a saved and reloaded model, and input checks."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
from pyspark.ml import PipelineModel
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from watchnext.config import ContentConfig
from watchnext.constants import COL_FEATURES, COL_ITEM
from watchnext.features import ContentFeatures, fit_content_features, transform_content

pytestmark = [pytest.mark.spark]

ITEMS_DDL = "item_id string, item_idx int, title string, year int, genres array<string>, tags array<string>"
ROWS = [
    ("1", 0, "Toy Story (1995)", 1995, ["Animation", "Children", "Comedy"],
     ["pixar", " Pixar", "toys", "funny"]),
    ("2", 1, "Toy Story 2 (1999)", 1999, ["Animation", "Children", "Comedy"], ["pixar", "sequel", "Funny "]),
    ("3", 2, "Heat (1995)", 1995, ["Action", "Crime", "Thriller"], ["classic", "funny", "pacino"]),
    ("4", 3, "Princess Bride, The (1987)", 1987, ["Action", "Adventure", "Comedy", "Romance"],
     ["classic", "fairy tale"]),
    ("5", 4, "American President, The (1995)", None, ["(no genres listed)"], []),
    ("6", 5, None, None, [], []),  # no content at all
]  # fmt: skip
ONLY = {"genre_weight": 0.0, "tag_weight": 0.0, "title_weight": 0.0, "year_weight": 0.0}
VEC_DDL = "item_id string, v array<double>"


@pytest.fixture(scope="module")
def items(spark: SparkSession) -> DataFrame:
    return spark.createDataFrame(ROWS, ITEMS_DDL)


def only(block: str, **kw: float | int) -> ContentConfig:
    """A config with a single block of weight 1."""
    return ContentConfig(**{**ONLY, f"{block}_weight": 1.0, **kw})


def vectors(cf: ContentFeatures | DataFrame) -> DataFrame:
    df = cf.features if isinstance(cf, ContentFeatures) else cf
    return df.select(COL_ITEM, vector_to_array(F.col(COL_FEATURES)).alias("v"))


def as_numpy(cf: ContentFeatures) -> dict[str, np.ndarray]:
    return {r[COL_ITEM]: np.asarray(r["v"]) for r in vectors(cf).collect()}


def expected(spark: SparkSession, rows: dict[str, list[float]]) -> DataFrame:
    return spark.createDataFrame([(k, [float(x) for x in v]) for k, v in rows.items()], VEC_DDL)


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v] if n else [0.0] * len(v)


# --- blocks -----------------------------------------------------------------------------------------


def test_genre_block_is_exact_multi_hot(spark: SparkSession, items: DataFrame) -> None:
    cf = fit_content_features(items, only("genre"))
    vocab = ["Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Romance", "Thriller"]
    assert cf.vocabulary == {"genres": vocab}  # "(no genres listed)" is not a genre
    assert cf.blocks == {"genres": (0, 8)}
    want = {
        "1": unit([0, 0, 1, 1, 1, 0, 0, 0]),
        "2": unit([0, 0, 1, 1, 1, 0, 0, 0]),
        "3": unit([1, 0, 0, 0, 0, 1, 0, 1]),
        "4": unit([1, 1, 0, 0, 1, 0, 1, 0]),
        "5": [0.0] * 8,
        "6": [0.0] * 8,
    }
    assertDataFrameEqual(vectors(cf), expected(spark, want), atol=1e-12)
    assert cf.features.columns == ["item_id", "item_idx", "features"]


def test_tag_block_is_tfidf_with_sparks_idf(spark: SparkSession, items: DataFrame) -> None:
    cf = fit_content_features(items, only("tag", min_df=2))
    # numpy reference: lower/trim, repeats are term frequency, df over all 6 items, keep df >= 2.
    docs = [[t.strip().lower() for t in r[5]] for r in ROWS]
    terms = sorted({t for d in docs for t in d})
    tf = np.array([[d.count(t) for t in terms] for d in docs], dtype=float)
    df = (tf > 0).sum(axis=0)
    keep = df >= 2
    idf = np.log((len(docs) + 1) / (df[keep] + 1))
    tfidf = tf[:, keep] * idf
    norms = np.linalg.norm(tfidf, axis=1, keepdims=True)
    ref = np.divide(tfidf, norms, out=np.zeros_like(tfidf), where=norms > 0)

    assert cf.vocabulary == {"tags": [t for t, k in zip(terms, keep, strict=True) if k]}
    assert cf.vocabulary["tags"] == ["classic", "funny", "pixar"]
    want = {r[0]: list(ref[i]) for i, r in enumerate(ROWS)}
    assertDataFrameEqual(vectors(cf), expected(spark, want), atol=1e-12)
    # spot check one value by hand: item 1 has pixar twice and funny once, df 2 and 3 of 6 items
    a, b = 2 * math.log(7 / 3), math.log(7 / 4)
    assert want["1"] == pytest.approx([0.0, b / math.hypot(a, b), a / math.hypot(a, b)])


def test_title_cleaning(spark: SparkSession) -> None:
    titles = [
        ("1", "Shawshank Redemption, The (1994)"),
        ("2", "  Schindler's List (1993) "),
        ("3", "Misérables, Les (1995)"),
        ("4", "Avventura, L' (1960)"),
        ("5", "2001: A Space Odyssey (1968)"),
        ("6", "Toy Story 2 (1999)"),
        ("7", "Babylon 5 (1994-1998)"),
        ("8", "Paris, Texas (1984)"),
        ("9", None),
    ]
    df = spark.createDataFrame([(i, int(i), t, None, [], []) for i, t in titles], ITEMS_DDL)
    cf = fit_content_features(df, only("title", min_df=1))
    words = {
        "1": ["redemption", "shawshank"],
        "2": ["list", "schindler"],
        "3": ["misérables"],
        "4": ["avventura"],
        "5": ["2001", "odyssey", "space"],
        "6": ["2", "story", "toy"],
        "7": ["5", "babylon"],
        "8": ["paris", "texas"],
        "9": [],
    }
    assert cf.vocabulary["title"] == sorted({w for ws in words.values() for w in ws})
    vocab = F.array(*[F.lit(w) for w in cf.vocabulary["title"]])
    got = vectors(cf).select(
        COL_ITEM,
        F.array_sort(
            F.filter(F.arrays_zip(vocab.alias("w"), F.col("v").alias("x")), lambda z: z["x"] != 0)["w"]
        ).alias("words"),
    )
    assertDataFrameEqual(
        got, spark.createDataFrame(list(words.items()), "item_id string, words array<string>")
    )


def test_year_buckets_and_unknown_years(spark: SparkSession, items: DataFrame) -> None:
    cf = fit_content_features(items, only("year"))
    assert cf.vocabulary == {"year": ["1980-1989", "1990-1999"]}
    want = {"1": [0, 1], "2": [0, 1], "3": [0, 1], "4": [1, 0], "5": [0, 0], "6": [0, 0]}
    assertDataFrameEqual(vectors(cf), expected(spark, want))

    five = fit_content_features(items, only("year", year_bucket_years=5))
    assert five.vocabulary == {"year": ["1985-1989", "1995-1999"]}
    # New items: a bucket unseen at fit time and an unknown year are all zeros; a known one is one-hot.
    new = spark.createDataFrame(
        [("7", 6, "X (2021)", 2021, [], []), ("8", 7, "Y", None, [], []), ("9", 8, "Z", 1986, [], [])],
        ITEMS_DDL,
    )
    assertDataFrameEqual(
        vectors(transform_content(five.model, new)), expected(spark, {"7": [0, 0], "8": [0, 0], "9": [1, 0]})
    )


# --- assembly -----------------------------------------------------------------------------------------


def test_cosine_is_weighted_combination_of_block_cosines(items: DataFrame) -> None:
    w = {"genre": 1.0, "tag": 2.0, "title": 0.5, "year": 0.25}
    per_block = {b: as_numpy(fit_content_features(items, only(b, min_df=1))) for b in w}
    full = fit_content_features(items, ContentConfig(**{f"{b}_weight": x for b, x in w.items()}, min_df=1))
    got = as_numpy(full)
    ids = [r[0] for r in ROWS if np.any(got[r[0]])]
    assert ids == ["1", "2", "3", "4", "5"]  # item 6 has no content
    for i, j in itertools.combinations(ids, 2):
        present = {b: (np.any(v[i]), np.any(v[j])) for b, v in per_block.items()}
        w_i = sum(w[b] for b, (p, _) in present.items() if p)
        w_j = sum(w[b] for b, (_, q) in present.items() if q)
        want = sum(w[b] * float(per_block[b][i] @ per_block[b][j]) for b in w) / math.sqrt(w_i * w_j)
        assert float(got[i] @ got[j]) == pytest.approx(want, abs=1e-12), (i, j)
    # items 1-4 have every block: there the cosine is the plain weighted average of block cosines
    cos = {b: float(per_block[b]["1"] @ per_block[b]["3"]) for b in w}
    assert float(got["1"] @ got["3"]) == pytest.approx(sum(w[b] * cos[b] for b in w) / sum(w.values()))
    # and each block's slice is that block's unit vector scaled by sqrt(w_b / sum w)
    for name, b in (("genres", "genre"), ("tags", "tag"), ("title", "title"), ("year", "year")):
        off, size = full.blocks[name]
        scale = math.sqrt(w[b] / sum(w.values()))
        np.testing.assert_allclose(got["4"][off : off + size], scale * per_block[b]["4"], atol=1e-12)


def test_norms_are_one_or_zero_for_contentless_items(spark: SparkSession, items: DataFrame) -> None:
    cf = fit_content_features(items, ContentConfig(min_df=1))
    assert list(cf.blocks) == ["genres", "tags", "title", "year"]
    offsets = [off for off, _ in cf.blocks.values()]
    sizes = [size for _, size in cf.blocks.values()]
    assert offsets == [0, *itertools.accumulate(sizes)][:-1]
    norms = vectors(cf).select(
        COL_ITEM, F.sqrt(F.aggregate("v", F.lit(0.0), lambda a, x: a + x * x)).alias("n")
    )
    want = [("1", 1.0), ("2", 1.0), ("3", 1.0), ("4", 1.0), ("5", 1.0), ("6", 0.0)]
    assertDataFrameEqual(norms, spark.createDataFrame(want, "item_id string, n double"), atol=1e-12)
    size = cf.features.select(F.size(vector_to_array(F.col(COL_FEATURES)))).distinct().collect()
    assert [r[0] for r in size] == [sum(sizes)]


def test_zero_weight_and_empty_vocabulary_drop_blocks(spark: SparkSession, items: DataFrame) -> None:
    no_title = items.drop("title")  # not needed when its weight is 0
    cf = fit_content_features(no_title, ContentConfig(title_weight=0.0, min_df=1))
    assert list(cf.blocks) == ["genres", "tags", "year"] == list(cf.vocabulary)
    assert cf.blocks == {"genres": (0, 8), "tags": (8, 7), "year": (15, 2)}
    # the same vectors as when assembling genres, tags and year by hand from single-block fits
    parts = {b: as_numpy(fit_content_features(items, only(b, min_df=1))) for b in ("genre", "tag", "year")}
    w = {"genre": 1.0, "tag": 1.0, "year": 0.5}
    want = {}
    for r in ROWS:
        v = np.concatenate([math.sqrt(w[b]) * parts[b][r[0]] for b in w])
        want[r[0]] = list(v / np.linalg.norm(v)) if np.any(v) else list(v)
    assertDataFrameEqual(vectors(cf), expected(spark, want), atol=1e-12)

    # no item has a tag: the tag block is dropped rather than failing the fit
    untagged = items.withColumn("tags", F.array().cast("array<string>"))
    cf2 = fit_content_features(untagged, ContentConfig(title_weight=0.0, year_weight=0.0))
    assert list(cf2.blocks) == ["genres"]
    with pytest.raises(ValueError, match="empty vocabulary"):
        fit_content_features(untagged, only("tag"))


@pytest.mark.slow
def test_saved_model_transforms_like_the_fit(spark: SparkSession, items: DataFrame, tmp_path: Path) -> None:
    cf = fit_content_features(items, ContentConfig(min_df=1))
    cf.model.write().overwrite().save(str(tmp_path / "content"))
    loaded = PipelineModel.load(str(tmp_path / "content"))
    assertDataFrameEqual(vectors(transform_content(loaded, items)), vectors(cf), atol=1e-12)


def test_missing_column_is_named(items: DataFrame) -> None:
    with pytest.raises(ValueError, match="items is missing column 'tags'"):
        fit_content_features(items.drop("tags"), ContentConfig())
    with pytest.raises(ValueError, match="missing column 'item_idx'"):
        fit_content_features(items.drop("item_idx"), ContentConfig())
