"""The recommend path's candidate sources: fitted on a history (offline levels) or read as published.

A :class:`Sources` holds what every candidate source needs, all fitted on (or published for) the same
history: ALS factors, EASE, item and user neighbours, cluster affinity, popularity, trending, NCF
scores.
:func:`fit_sources` fits them on a train split (reading the train-split models the als and similarities
stages stored, when asked); :func:`published_sources` reads what the earlier stages published for a
run date.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from watchnext import catalog, tables
from watchnext.config import Config
from watchnext.constants import (
    COL_CLUSTER,
    COL_FEATURES,
    COL_ITEM,
    COL_ITEM_IDX,
    COL_NEIGHBOR_IDX,
    COL_SCORE,
    COL_SHARE,
    COL_SOURCE,
    COL_TIMESTAMP,
    COL_USER,
    COL_USER_IDX,
    TABLE_ITEM_FACTORS,
    TABLE_ITEM_SIMILARITIES,
    TABLE_NCF_SCORES,
    TABLE_USER_CLUSTER_AFFINITY,
    TABLE_USER_FACTORS,
    TABLE_USER_NEIGHBORS,
)
from watchnext.evaluation import protocol
from watchnext.models.als import AlsParams, factor_frames, fit_als
from watchnext.models.baselines import popularity_scores, trending_scores
from watchnext.models.blend import COL_COUNT
from watchnext.models.clusters import user_cluster_affinity
from watchnext.models.ease import EaseModel, fit_ease
from watchnext.models.neighbors import item_neighbors, user_neighbors, warm_items

log = logging.getLogger(__name__)


@dataclass
class Sources:
    """What the candidate sources need, all fitted on (or published for) the same ``history``."""

    history: DataFrame  # (user_idx, item_idx, timestamp): the interactions the sources saw = seen items
    popularity: DataFrame  # (item_idx, score)
    trending: DataFrame
    user_factors: DataFrame | None = None  # (user_idx, features)
    item_factors: DataFrame | None = None  # (item_idx, features)
    item_neighbors: DataFrame | None = None  # (item_idx, neighbor_idx, score)
    user_neighbors: DataFrame | None = None  # (user_idx, neighbor_idx, score)
    affinity: DataFrame | None = None  # (user_idx, cluster_id, share)
    ncf: DataFrame | None = None  # (user_idx, item_idx, score) candidate pairs scored by NCF
    ease: EaseModel | None = None  # the closed-form item model, fitted on ``history``
    item_clusters: DataFrame | None = None  # (item_idx, cluster_id)
    cached: list[DataFrame] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # model -> "stored" (read) | "fitted"
    _counts: DataFrame | None = field(default=None, repr=False)

    def cache(self, df: DataFrame) -> DataFrame:
        """Persist ``df`` until :meth:`release`: frames that several candidate branches read (popularity,
        the users, their seen items) are computed once, not once per branch of the plan."""
        df = df.persist(StorageLevel.MEMORY_AND_DISK)
        self.cached.append(df)
        return df

    def user_counts(self) -> DataFrame:
        """``(user_idx, count)``: each user's distinct items in ``history`` (the cold flag, the
        ranker's activity), computed once per :class:`Sources`."""
        if self._counts is None:
            self._counts = self.cache(
                self.history.groupBy(COL_USER_IDX).agg(F.countDistinct(COL_ITEM_IDX).alias(COL_COUNT))
            )
        return self._counts

    def release(self) -> None:
        for df in self.cached:
            df.unpersist()
        self.cached.clear()
        self._counts = None


def fit_sources(
    cfg: Config,
    history: DataFrame,
    item_clusters: DataFrame,
    params: AlsParams,
    stored: tuple[SparkSession, dt.date] | None = None,
) -> Sources:
    """Every configured source fitted on ``history`` alone (offline levels: no test leakage).

    ``stored``: ``history`` is the protocol's train split of that run date, and the train-split models
    the als and similarities stages stored (``eval_factors``, ``eval_neighbors``) are read, not fitted
    again (at 5M interactions the user neighbours alone took minutes); a model not stored is fitted."""
    rc, sim = cfg.recommend, cfg.similarity

    def read_neighbors(model: str, col_id: str) -> DataFrame | None:
        nb = protocol.read_neighbors(stored[0], cfg, model, stored[1], col_id) if stored else None
        src.origin[model] = "fitted" if nb is None else "stored"
        return None if nb is None else nb.select(col_id, COL_NEIGHBOR_IDX, COL_SCORE)

    src = Sources(
        history=history.select(COL_USER_IDX, COL_ITEM_IDX, COL_TIMESTAMP),
        popularity=popularity_scores(history),
        trending=trending_scores(history, cfg.evaluation.trending_window_days),
        item_clusters=item_clusters.select(COL_ITEM_IDX, COL_CLUSTER),
    )
    src.popularity, src.trending = src.cache(src.popularity), src.cache(src.trending)
    need_factors = "als" in rc.sources or (
        "item" in rc.sources and rc.item_source == "als" or "user" in rc.sources and sim.user_source == "als"
    )
    if need_factors:
        factors = protocol.read_factors(stored[0], cfg, protocol.EVAL_ALS, stored[1]) if stored else None
        src.origin[protocol.EVAL_ALS] = "fitted" if factors is None else "stored"
        if factors is None:
            factors = factor_frames(fit_als(history, params, num_blocks=cfg.als.num_blocks))
        src.user_factors, src.item_factors = (src.cache(f) for f in factors)
    warm = warm_items(history, sim.min_item_interactions)
    if "item" in rc.sources:
        if rc.item_source == "cooccurrence":
            src.item_neighbors = read_neighbors(protocol.EVAL_ITEM_COOCCURRENCE, COL_ITEM_IDX)
            if src.item_neighbors is None:
                src.item_neighbors = item_neighbors(
                    "cooccurrence", history.join(warm, COL_ITEM_IDX, "left_semi"), sim
                )
        elif rc.item_source == "als":
            assert src.item_factors is not None
            src.item_neighbors = item_neighbors(
                "als", src.item_factors.join(warm, COL_ITEM_IDX, "left_semi"), sim
            )
        else:
            raise ValueError("recommend.item_source=content is only supported for publishing")
    if "user" in rc.sources:
        if sim.user_source == "als":
            assert src.user_factors is not None
            src.user_neighbors = user_neighbors("als", src.user_factors, sim)
        else:
            src.user_neighbors = read_neighbors(protocol.EVAL_USER_COOCCURRENCE, COL_USER_IDX)
            if src.user_neighbors is None:
                src.user_neighbors = user_neighbors("cooccurrence", history, sim)
    fit_ease_source(cfg, src)
    if "cluster" in rc.sources:
        src.affinity = user_cluster_affinity(
            history.select(COL_USER, COL_USER_IDX, COL_ITEM),
            item_clusters,
            smoothing=cfg.clusters.affinity_smoothing,
        ).select(COL_USER_IDX, COL_CLUSTER, COL_SHARE)
    return src


def published_sources(
    spark: SparkSession, cfg: Config, run_date: dt.date, interactions: DataFrame, item_clusters: DataFrame
) -> Sources:
    """The sources as the earlier stages published them for ``run_date``."""
    rc = cfg.recommend
    history = interactions.select(COL_USER_IDX, COL_ITEM_IDX, COL_TIMESTAMP, COL_USER, COL_ITEM)
    src = Sources(
        history=history.select(COL_USER_IDX, COL_ITEM_IDX, COL_TIMESTAMP),
        popularity=popularity_scores(history),
        trending=trending_scores(history, cfg.evaluation.trending_window_days),
        item_clusters=item_clusters.select(COL_ITEM_IDX, COL_CLUSTER),
    )
    src.popularity, src.trending = src.cache(src.popularity), src.cache(src.trending)
    if "als" in rc.sources:
        src.user_factors = read_published(spark, cfg, TABLE_USER_FACTORS, run_date).select(
            COL_USER_IDX, COL_FEATURES
        )
        src.item_factors = read_published(spark, cfg, TABLE_ITEM_FACTORS, run_date).select(
            COL_ITEM_IDX, COL_FEATURES
        )
    if "item" in rc.sources:
        src.item_neighbors = (
            read_published(spark, cfg, TABLE_ITEM_SIMILARITIES, run_date)
            .where(F.col(COL_SOURCE) == rc.item_source)
            .select(COL_ITEM_IDX, COL_NEIGHBOR_IDX, COL_SCORE)
        )
    if "user" in rc.sources:
        src.user_neighbors = read_published(spark, cfg, TABLE_USER_NEIGHBORS, run_date).select(
            COL_USER_IDX, COL_NEIGHBOR_IDX, COL_SCORE
        )
    if "cluster" in rc.sources:
        src.affinity = read_published(spark, cfg, TABLE_USER_CLUSTER_AFFINITY, run_date).select(
            COL_USER_IDX, COL_CLUSTER, COL_SHARE
        )
    fit_ease_source(cfg, src)
    if "ncf" in rc.sources:
        path = cfg.table_path(TABLE_NCF_SCORES)
        if tables.exists(spark, path):
            src.ncf = tables.read_run_date(spark, path, run_date).select(
                COL_USER_IDX, COL_ITEM_IDX, COL_SCORE
            )
        else:
            log.warning("recommend.sources has 'ncf' but there is no %s table: blending without it", path)
    return src


def fit_ease_source(cfg: Config, src: Sources) -> None:
    """EASE on the sources' history when ``recommend.sources`` has it (no stage publishes EASE: it is
    a closed-form solve, fitted where it is used)."""
    if "ease" in cfg.recommend.sources:
        e = cfg.recommend.ease
        src.ease = fit_ease(
            src.history,
            e.reg,
            max_items=e.max_items,
            min_item_interactions=e.min_item_interactions,
            session_weight=e.session_weight,
            session_seconds=e.session_seconds,
        )
        src.origin["ease"] = "fitted"


def read_published(spark: SparkSession, cfg: Config, table: str, run_date: dt.date) -> DataFrame:
    """``table``'s rows of ``run_date`` as an earlier stage published them (catalog.read_input: a
    missing table names the stage to run first)."""
    return catalog.read_input(
        spark, cfg.table_path(table), table, run_date, reader="recommend", require_rows=False
    )
