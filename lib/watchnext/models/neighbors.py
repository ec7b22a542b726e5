"""Neighbour sources: item-item and user-user neighbours from ALS factors, content or co-occurrence.

Each source is one use of the blocked exact top-K engine (``models/similarity.py``): dense cosine rows
for factors, sparse cosine rows for content vectors, binary sets for co-occurrence. :func:`item_neighbors`
and :func:`user_neighbors` pick the source by its config name (``similarity.sources``,
``similarity.user_source``, ``recommend.item_source``), so the similarities stage and the recommend
path wire the config to the engine in one place.
"""

from __future__ import annotations

from typing import Literal

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from watchnext.config import SimilarityConfig
from watchnext.constants import (
    COL_FEATURES,
    COL_ITEM_IDX,
    COL_NEIGHBOR,
    COL_NEIGHBOR_IDX,
    COL_RANK,
    COL_SCORE,
    COL_SOURCE,
    COL_TITLE,
    COL_USER_IDX,
)
from watchnext.models.similarity import Measure, blocked_topk, dense_rows, set_rows, sparse_rows


def warm_items(interactions: DataFrame, min_interactions: int) -> DataFrame:
    """``item_idx`` of the items with at least ``min_interactions`` interactions: the items the
    interaction-based sources (and ALS neighbours) cover."""
    return (
        interactions.groupBy(COL_ITEM_IDX)
        .agg(F.count(F.lit(1)).alias("_n"))
        .where(F.col("_n") >= min_interactions)
        .select(COL_ITEM_IDX)
    )


def item_neighbors(source: str, data: DataFrame, sim: SimilarityConfig) -> DataFrame:
    """The top ``sim.k`` neighbours of every item of ``data`` by ``source``: ``"als"`` (``data``: item
    factors), ``"content"`` (item feature vectors) or ``"cooccurrence"`` (interactions; measure and
    minimum overlap from ``sim``). ``(item_idx, neighbor_idx, score, rank)``."""
    if source == "als":
        return item_neighbors_from_factors(data, sim.k, block_size=sim.block_size)
    if source == "content":
        return item_neighbors_from_content(data, sim.k, block_size=sim.block_size)
    if source == "cooccurrence":
        return item_neighbors_from_cooccurrence(
            data,
            sim.k,
            measure=sim.cooccurrence_measure,
            min_overlap=sim.min_cooccurrence,
            block_size=sim.block_size,
        )
    raise ValueError(f"unknown item neighbour source {source!r} (als, content or cooccurrence)")


def user_neighbors(source: str, data: DataFrame, sim: SimilarityConfig) -> DataFrame:
    """The top ``sim.user_k`` neighbours of every user of ``data`` by ``source``: ``"als"`` (``data``:
    user factors) or ``"cooccurrence"`` (interactions). ``(user_idx, neighbor_idx, score, rank)``."""
    if source == "als":
        return user_neighbors_from_factors(data, sim.user_k, block_size=sim.block_size)
    if source == "cooccurrence":
        return user_neighbors_from_cooccurrence(
            data, sim.user_k, min_overlap=sim.min_cooccurrence, block_size=sim.block_size
        )
    raise ValueError(f"unknown user neighbour source {source!r} (als or cooccurrence)")


def item_neighbors_from_factors(
    item_factors: DataFrame,
    k: int,
    *,
    block_size: int = 2048,
    col_item: str = COL_ITEM_IDX,
    col_features: str = COL_FEATURES,
    col_neighbor: str = COL_NEIGHBOR_IDX,
) -> DataFrame:
    """Cosine neighbours of ALS item factors ``(col_item, col_features)``: ``(col_item, col_neighbor,
    score, rank)``."""
    rows = dense_rows(item_factors, col_id=col_item, col_features=col_features)
    return _named(
        blocked_topk(rows, k, block_size=block_size, col_id=col_item, col_neighbor=col_neighbor),
        col_item,
        col_neighbor,
    )


def item_neighbors_from_content(
    features: DataFrame,
    k: int,
    *,
    block_size: int = 2048,
    col_item: str = COL_ITEM_IDX,
    col_features: str = COL_FEATURES,
    col_neighbor: str = COL_NEIGHBOR_IDX,
) -> DataFrame:
    """Cosine neighbours of content vectors (ml Vectors); items sharing no feature are not neighbours."""
    rows = sparse_rows(features, col_id=col_item, col_features=col_features)
    out = blocked_topk(
        rows, k, block_size=block_size, positive_only=True, col_id=col_item, col_neighbor=col_neighbor
    )
    return _named(out, col_item, col_neighbor)


def item_neighbors_from_cooccurrence(
    interactions: DataFrame,
    k: int,
    *,
    measure: Literal["jaccard", "cosine"] = "jaccard",
    min_overlap: int = 2,
    block_size: int = 2048,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_neighbor: str = COL_NEIGHBOR_IDX,
) -> DataFrame:
    """Classic item-based CF: items watched by the same users.

    An item is the set of its users. ``jaccard``: ``|U_i & U_j| / |U_i | U_j|``; ``cosine`` (binary):
    ``|U_i & U_j| / sqrt(|U_i| |U_j|)``. Pairs sharing fewer than ``min_overlap`` users are dropped
    (one shared user is noise, not evidence).
    """
    rows = set_rows(interactions, col_id=col_item, col_member=col_user)
    engine_measure: Measure = "set_cosine" if measure == "cosine" else "jaccard"
    out = blocked_topk(
        rows,
        k,
        measure=engine_measure,
        min_overlap=min_overlap,
        block_size=block_size,
        col_id=col_item,
        col_neighbor=col_neighbor,
    )
    return _named(out, col_item, col_neighbor)


def user_neighbors_from_factors(
    user_factors: DataFrame,
    k: int,
    *,
    block_size: int = 2048,
    col_user: str = COL_USER_IDX,
    col_features: str = COL_FEATURES,
    col_neighbor: str = COL_NEIGHBOR_IDX,
) -> DataFrame:
    """User-based CF neighbours: cosine of ALS user factors, ``(col_user, col_neighbor, score, rank)``."""
    rows = dense_rows(user_factors, col_id=col_user, col_features=col_features)
    return _named(
        blocked_topk(rows, k, block_size=block_size, col_id=col_user, col_neighbor=col_neighbor),
        col_user,
        col_neighbor,
    )


def user_neighbors_from_cooccurrence(
    interactions: DataFrame,
    k: int,
    *,
    min_overlap: int = 2,
    block_size: int = 2048,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_neighbor: str = COL_NEIGHBOR_IDX,
) -> DataFrame:
    """User-based CF neighbours from shared items: binary cosine ``|I_u & I_v| / sqrt(|I_u| |I_v|)``
    over users' item sets, at least ``min_overlap`` shared items."""
    rows = set_rows(interactions, col_id=col_user, col_member=col_item)
    out = blocked_topk(
        rows,
        k,
        measure="set_cosine",
        min_overlap=min_overlap,
        block_size=block_size,
        col_id=col_user,
        col_neighbor=col_neighbor,
    )
    return _named(out, col_user, col_neighbor)


def _named(df: DataFrame, col_id: str, col_neighbor: str) -> DataFrame:
    """The engine's long ids back to the int indices the tables use."""
    return df.select(
        F.col(col_id).cast("int").alias(col_id),
        F.col(col_neighbor).cast("int").alias(col_neighbor),
        COL_SCORE,
        COL_RANK,
    )


# ------------------------------------------------------------------------------- published tables
def with_ids(neighbours: DataFrame, ids: DataFrame, col_id: str, col_idx: str) -> DataFrame:
    """``(col_idx, neighbor_idx, rank, score, source)`` rows with the external ids of both sides from
    ``ids`` ``(col_id, col_idx)``: ``(col_id, col_idx, neighbor_id, neighbor_idx, rank, score, source)``
    (the item_similarities and user_neighbors layout)."""
    nbr = ids.select(F.col(col_id).alias(COL_NEIGHBOR), F.col(col_idx).alias(COL_NEIGHBOR_IDX))
    return (
        neighbours.join(ids, col_idx)
        .join(nbr, COL_NEIGHBOR_IDX)
        .select(col_id, col_idx, COL_NEIGHBOR, COL_NEIGHBOR_IDX, COL_RANK, COL_SCORE, COL_SOURCE)
    )


def neighbor_stats(nb: DataFrame) -> dict[str, float]:
    """Items covered, neighbour pairs and the mean score of an item neighbour table (one aggregate)."""
    row = nb.agg(
        F.countDistinct(COL_ITEM_IDX).alias("items"),
        F.count(F.lit(1)).alias("pairs"),
        F.avg(COL_SCORE).alias("mean_score"),
    ).head(1)[0]
    return {
        "items": int(row["items"]),
        "pairs": int(row["pairs"]),
        "mean_score": float(row["mean_score"] or 0.0),
    }


def sample_text(sims: DataFrame, items: DataFrame, interactions: DataFrame, n: int = 10) -> str:
    """Top-5 neighbours per source of the ``n`` most-watched items of ``interactions``, titled from
    ``items`` (a human look at ``sims``, an item_similarities frame, in MLflow)."""
    top = [
        r[0]
        for r in interactions.groupBy(COL_ITEM_IDX)
        .count()
        .orderBy(F.desc("count"), COL_ITEM_IDX)
        .limit(n)
        .collect()
    ]
    rows = (
        sims.where(F.col(COL_ITEM_IDX).isin(top) & (F.col(COL_RANK) <= 5))
        .join(
            items.select(F.col(COL_ITEM_IDX).alias(COL_NEIGHBOR_IDX), F.col(COL_TITLE).alias("_nt")),
            COL_NEIGHBOR_IDX,
        )
        .join(items.select(COL_ITEM_IDX, COL_TITLE), COL_ITEM_IDX)
        .orderBy(COL_ITEM_IDX, COL_SOURCE, COL_RANK)
        .collect()
    )
    lines, current = [], None
    for r in rows:
        if (r[COL_ITEM_IDX], r[COL_SOURCE]) != current:
            current = (r[COL_ITEM_IDX], r[COL_SOURCE])
            lines.append(f"{r[COL_TITLE]} [{r[COL_SOURCE]}]")
        lines.append(f"  {r[COL_RANK]}. {r['_nt']} ({r[COL_SCORE]:.3f})")
    return "\n".join(lines)
