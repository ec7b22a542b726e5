"""Candidates from every source, pooled and ranked by the blend: the recommend path's scoring step.

:func:`candidates` gives each source's top-M unseen items per user in the long format
(``models/blend.py``'s ``ranked``); :func:`scored_pool` blends them (per-source normalisation, weights,
cold-start weights, the per-cluster cap) into one row per (user, item) with ``rank`` 1..n on the chosen
items, and with a learned ranker (``models/ranker.py``) scores the warm users' rows by it instead;
:func:`top_n` keeps the chosen rows.
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from watchnext.config import Config
from watchnext.constants import COL_ANCHOR_IDX, COL_CLUSTER, COL_ITEM_IDX, COL_RANK, COL_SCORE, COL_USER_IDX
from watchnext.models import blend
from watchnext.models.ease import top_k_ease
from watchnext.models.knn import user_based_scores
from watchnext.models.ranker import COL_PREDICTION, predict, ranker_features
from watchnext.models.topk import topk_from_factors, topk_from_item_scores
from watchnext.recommend.sources import Sources

POOL_ROWS = 2_000_000  # candidate rows per partition of the pool (ranked in numpy as a whole)


def candidates(cfg: Config, src: Sources, users: DataFrame) -> DataFrame:
    """Every source's top-M unseen items for ``users`` (distinct user_idx), in the long format."""
    rc, m = cfg.recommend, cfg.recommend.candidates
    seen = src.history.select(COL_USER_IDX, COL_ITEM_IDX)
    seen_u = src.cache(seen.join(users, COL_USER_IDX, "left_semi"))
    parts: list[DataFrame] = []
    for s in rc.sources:
        if s == "als" and src.user_factors is not None and src.item_factors is not None:
            uf = src.user_factors.join(users, COL_USER_IDX, "left_semi")
            parts.append(blend.ranked(topk_from_factors(uf, src.item_factors, m, seen_u), s))
        elif s == "ease" and src.ease is not None:
            cand = top_k_ease(src.ease, src.history, users, m)
            parts.append(blend.ranked(cand, s, anchor=COL_ANCHOR_IDX))
        elif s == "item" and src.item_neighbors is not None:
            hist = src.history.join(users, COL_USER_IDX, "left_semi")
            cand = blend.item_candidates(src.item_neighbors, hist, m, recent=rc.recent_items)
            parts.append(blend.ranked(cand, s, anchor=blend.COL_ANCHOR_IDX))
        elif s == "user" and src.user_neighbors is not None:
            un = src.user_neighbors.join(users, COL_USER_IDX, "left_semi")
            parts.append(blend.ranked(user_based_scores(un, seen, m), s))
        elif s == "cluster" and src.affinity is not None:
            aff = src.affinity.join(users, COL_USER_IDX, "left_semi")
            assert src.item_clusters is not None
            cand = blend.cluster_candidates(
                aff, src.item_clusters, src.popularity, seen_u, m, top_clusters=rc.cluster_top
            )
            parts.append(blend.ranked(cand, s))
        elif s == "popular":
            parts.append(blend.ranked(topk_from_item_scores(src.popularity, users, m, seen_u), s))
        elif s == "trending":
            parts.append(blend.ranked(topk_from_item_scores(src.trending, users, m, seen_u), s))
        elif s == "ncf" and src.ncf is not None:
            ncf = src.ncf.join(users, COL_USER_IDX, "left_semi").join(
                seen_u, [COL_USER_IDX, COL_ITEM_IDX], "left_anti"
            )
            parts.append(blend.ranked(blend.top_per_user(ncf, m), s))
    if rc.max_per_cluster is not None and src.item_clusters is not None:
        fill = blend.cluster_backfill(src.item_clusters, src.popularity, users, seen_u, rc.max_per_cluster)
        parts.append(blend.ranked(fill, blend.BACKFILL))
    if not parts:
        raise ValueError("no candidate source produced anything; check recommend.sources")
    return reduce(DataFrame.unionByName, parts)


def scored_pool(
    cfg: Config,
    src: Sources,
    users: DataFrame,
    weights: dict[str, float],
    item_clusters: DataFrame,
    n: int,
    ranker: Any | None = None,
) -> DataFrame:
    """The blended candidate pool of ``users``: one row per (user, item) with score, dominant source,
    cluster and ``rank`` (1..n in the user's capped top n, null otherwise); users with fewer than
    ``cold_threshold`` interactions are scored with the cold weights.

    ``ranker``: a fitted learned ranker (``models/ranker.py``): the warm users' rows are then scored
    by it (the linear blend with ``weights`` is one of its features) and ranked again under the cap;
    the dominant source (the reason) stays the blend's strongest contribution."""
    rc = cfg.recommend
    users = src.cache(users.select(COL_USER_IDX).distinct())
    cand = candidates(cfg, src, users)
    counts = src.user_counts()
    rows = users.count() * (len(rc.sources) + 1) * rc.candidates
    parts = max(cfg.spark.shuffle_partitions, math.ceil(rows / POOL_ROWS))
    pool = linear_pool(cfg, src, cand, weights, item_clusters, n, counts, parts)
    if ranker is None:
        return pool
    feats = ranker_features(
        pool, rc.sources, weights, trending=src.trending, affinity=src.affinity, counts=counts
    )
    scored = predict(ranker, feats, rc.sources)
    learned = F.when(F.col(blend.COL_COLD), F.col(COL_SCORE)).otherwise(F.col(COL_PREDICTION))
    return blend.select_top_n(
        scored.select(
            *[F.col(c) for c in pool.columns if c not in (COL_SCORE, COL_CLUSTER, COL_RANK)],
            learned.alias(COL_SCORE),
        ),
        item_clusters,
        n,
        rc.max_per_cluster,
        partitions=parts,
        every=True,
    )


def linear_pool(
    cfg: Config,
    src: Sources,
    cand: DataFrame,
    weights: dict[str, float],
    item_clusters: DataFrame,
    n: int,
    counts: DataFrame,
    parts: int,
) -> DataFrame:
    """:func:`scored_pool` with the linear blend alone."""
    rc = cfg.recommend
    return blend.rank_candidates(
        cand,
        rc.sources,
        rc.candidates,
        rc.normalization,
        weights,
        item_clusters,
        n,
        rc.max_per_cluster,
        popularity=src.popularity,
        counts=counts,
        cold_threshold=rc.cold_threshold,
        cold_weights=rc.cold_weights,
        partitions=parts,
    )


def top_n(
    cfg: Config,
    src: Sources,
    users: DataFrame,
    item_clusters: DataFrame,
    weights: dict[str, float],
    n: int,
    ranker: Any | None = None,
) -> DataFrame:
    """The blended (or learned), capped top ``n`` of ``users``: ``(user_idx, item_idx, score, rank)``."""
    scored = scored_pool(cfg, src, users, weights, item_clusters, n, ranker)
    return scored.where(F.col(COL_RANK).isNotNull()).select(COL_USER_IDX, COL_ITEM_IDX, COL_SCORE, COL_RANK)
