"""What the genre clusters are fitted on: content, behaviour (ALS item factors), or both.

Content features (:mod:`watchnext.features.content`) cluster a catalogue well when its items carry
genres and tags. A catalogue whose items have only a name (music artists: no genres, no tags) leaves
title words and nothing else, and its clusters are noise labelled ``"Uncategorised"``,
``"Uncategorised #2"``, ... There the users' behaviour still says which items go together: items the
same users interact with get similar ALS factors.

**Modes** (``clusters.features``):

* ``content``: the content vectors, as before this module existed.
* ``behaviour``: :func:`behaviour_features`, each item's ALS factor vector L2-normalised, so that the
  spherical k-means and the cosine silhouette of :mod:`watchnext.models.clusters` work on the cosine
  of the factors (the geometry the ``als`` similarity source uses). An item without factors (nobody
  interacted with it) gets the zero vector and so the clusters' existing "no features" cluster (id k).
* ``hybrid``: :func:`hybrid_features`, ``concat(c, sqrt(w) * b)`` normalised again, with ``c`` the
  (unit) content vector, ``b`` the unit factor vector and ``w = clusters.behaviour_weight``. As with
  the content blocks, the cosine of two items that have both is then the weighted average
  ``(cos_content + w * cos_behaviour) / (1 + w)``; an item with only one of them keeps that one.
* ``auto`` (:func:`choose_features`): ``behaviour`` when the share of the items carrying at least one
  genre or tag (:func:`content_coverage`) is below ``content.min_coverage``, else
  ``content``. On a catalogue with genres on every item (MovieLens, the synthetic data) that is
  ``content``, and the clusters are exactly those of content mode.

Titles do not count towards the coverage: a name says nothing about what an item is like.
"""

from __future__ import annotations

from typing import Literal, get_args

from pyspark.ml.feature import Normalizer, VectorAssembler
from pyspark.ml.functions import array_to_vector, vector_to_array
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from watchnext.checks import require_columns
from watchnext.constants import COL_FEATURES, COL_GENRES, COL_ITEM, COL_ITEM_IDX, COL_TAGS

FeatureMode = Literal["content", "behaviour", "hybrid"]
FEATURE_MODES: tuple[str, ...] = get_args(FeatureMode)
AUTO = "auto"
NO_GENRES = "(no genres listed)"  # MovieLens' marker: no genre


def _terms(col: str, *, drop: str = "") -> Column:
    """The non-blank entries of array column ``col`` (null -> empty), ``drop`` (lower case) left out."""
    empty = F.array().cast("array<string>")
    trimmed = F.transform(F.coalesce(F.col(col), empty), lambda x: F.trim(x))
    return F.filter(trimmed, lambda x: x.isNotNull() & (x != "") & (F.lower(x) != drop))


def has_content(*, col_genres: str = COL_GENRES, col_tags: str = COL_TAGS) -> Column:
    """True for an item with at least one genre or tag (:func:`content_coverage`'s rule)."""
    return (F.size(_terms(col_genres, drop=NO_GENRES.lower())) > 0) | (F.size(_terms(col_tags)) > 0)


def content_coverage(items: DataFrame, *, col_genres: str = COL_GENRES, col_tags: str = COL_TAGS) -> float:
    """The share of ``items`` (one row per item) carrying at least one genre or at least one tag.

    Null or blank entries and ``"(no genres listed)"`` are not genres (as for the content features and
    the labels). One aggregation; 0.0 for an empty frame.
    """
    require_columns(items, [col_genres, col_tags], "items")
    has = has_content(col_genres=col_genres, col_tags=col_tags)
    row = items.agg(F.count(F.lit(1)).alias("n"), F.sum(has.cast("long")).alias("c")).head()
    assert row is not None
    return float(row["c"] or 0) / row["n"] if row["n"] else 0.0


def choose_features(mode: str, coverage: float, min_coverage: float) -> FeatureMode:
    """The feature mode to use: ``mode`` itself, or for ``"auto"`` ``"behaviour"`` when ``coverage <
    min_coverage`` and ``"content"`` otherwise (a coverage equal to the threshold is content)."""
    if mode == AUTO:
        if not 0.0 <= min_coverage <= 1.0:
            raise ValueError(f"content.min_coverage must be in [0, 1], got {min_coverage}")
        return "behaviour" if coverage < min_coverage else "content"
    if mode not in FEATURE_MODES:
        raise ValueError(f"clusters.features must be auto or one of {', '.join(FEATURE_MODES)}, got {mode!r}")
    return mode  # type: ignore[return-value]


def _unit(arr: Column) -> Column:
    """``arr / ||arr||_2`` as array<double>; an all-zero array stays zero."""
    a = arr.cast("array<double>")
    norm = F.sqrt(F.aggregate(a, F.lit(0.0), lambda acc, x: acc + x * x))
    return F.when(norm > 0, F.transform(a, lambda x: x / norm)).otherwise(a)


def behaviour_features(
    items: DataFrame,
    item_factors: DataFrame,
    *,
    col_item: str = COL_ITEM,
    col_item_idx: str = COL_ITEM_IDX,
    col_features: str = COL_FEATURES,
    col_factors: str = COL_FEATURES,
) -> DataFrame:
    """``(col_item, col_item_idx, col_features)``: every item of ``items`` with its L2-normalised ALS
    factor vector (dense ml Vector) from ``item_factors`` (``col_item_idx``, ``col_factors``: array
    or ml Vector), or the zero vector of the factors' dimension when it has none.

    Lazy: the dimension comes from an aggregate cross-joined in, not from a job on the driver.
    """
    require_columns(items, [col_item, col_item_idx], "items")
    require_columns(item_factors, [col_item_idx, col_factors], "item_factors")
    factors = item_factors.select(col_item_idx, F.col(col_factors).alias("_f"))
    if not dict(factors.dtypes)["_f"].startswith("array"):
        factors = factors.withColumn("_f", vector_to_array(F.col("_f")))
    factors = factors.select(col_item_idx, _unit(F.col("_f")).alias("_f"))
    dim = factors.agg(F.max(F.size("_f")).alias("_dim"))
    zeros = F.array_repeat(F.lit(0.0), F.col("_dim").cast("int"))
    return (
        items.select(col_item, col_item_idx)
        .join(factors, col_item_idx, "left")
        .crossJoin(F.broadcast(dim))
        .select(col_item, col_item_idx, array_to_vector(F.coalesce("_f", zeros)).alias(col_features))
    )


def hybrid_features(
    content: DataFrame,
    behaviour: DataFrame,
    *,
    behaviour_weight: float,
    col_item: str = COL_ITEM,
    col_item_idx: str = COL_ITEM_IDX,
    col_features: str = COL_FEATURES,
) -> DataFrame:
    """``(col_item, col_item_idx, col_features)``: ``concat(content, sqrt(w) * behaviour)`` L2-normalised
    (module docstring), one row per row of ``content``; ``behaviour`` as :func:`behaviour_features`
    returns it (an item missing there counts as having no factors)."""
    require_columns(content, [col_item, col_item_idx, col_features], "content")
    require_columns(behaviour, [col_item_idx, col_features], "behaviour")
    if not behaviour_weight > 0:
        raise ValueError(f"clusters.behaviour_weight must be > 0, got {behaviour_weight}")
    scale = float(behaviour_weight) ** 0.5
    b = behaviour.select(
        col_item_idx, F.transform(vector_to_array(F.col(col_features)), lambda x: x * scale).alias("_b")
    )
    dim = b.agg(F.max(F.size("_b")).alias("_dim"))
    zeros = F.array_repeat(F.lit(0.0), F.col("_dim").cast("int"))
    joined = (
        content.select(col_item, col_item_idx, F.col(col_features).alias("_c"))
        .join(b, col_item_idx, "left")
        .crossJoin(F.broadcast(dim))
        .select(col_item, col_item_idx, "_c", array_to_vector(F.coalesce("_b", zeros)).alias("_b"))
    )
    assembled = VectorAssembler(inputCols=["_c", "_b"], outputCol="_hv").transform(joined)
    return (
        Normalizer(p=2.0, inputCol="_hv", outputCol=col_features)
        .transform(assembled)
        .select(col_item, col_item_idx, col_features)
    )
