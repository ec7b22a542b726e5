"""Recommend stage: blend every source, cap per genre cluster, exactly N per user, publish to Delta.

1. **Weights.** On the evaluation protocol's train split, carve a validation split; fit every source on
   the rest (ALS with the registered model's parameters, co-occurrence neighbours, user neighbours,
   cluster affinity, popularity, trending), pool their candidates for a sample of validation users on
   the driver and tune the blend weights by NDCG@K of the capped list with Optuna
   (``models/blend.py``). Weights and the search are logged to MLflow.
2. **Offline score.** The same sources on the whole train split, blended with those weights, give
   the ``blend`` lists in ``eval_recommendations``: the evaluate stage scores the published recipe
   next to every single source. The train-split models the als and similarities stages stored
   (``eval_factors``, ``eval_neighbors``) are read, not fitted again; a missing one is fitted.
3. **Publish.** The sources as published by the earlier stages for the run date (``user_factors`` /
   ``item_factors``, ``item_similarities``, ``user_neighbors``, ``user_cluster_affinity``, and
   ``ncf_scores`` when the NCF stage ran) give every known user (``user_index``) exactly
   ``recommend.n`` unseen items, checked before anything is written. Tables, each one Delta commit:

   * ``recommendations``: user_id, user_idx, rank, item_id, title, score, reason, sources,
     model_versions, run_id, run_date; partitioned by run_date, replaced with ``replaceWhere``;
   * ``recommendations_latest``: the newest run date's rows sorted by user_id for the serving read
     (``watchnext.serving``); only replaced when the run date is not older than the one it holds;
   * ``genre_rows``: user_id, row, cluster_id, label, rank, item_id, title, score: the user's
     favourite clusters, each with its items ranked by the user's blended score, backfilled by the
     cluster's popular items;
   * ``because_you_watched``: item_id, rank, neighbor_id, title, score, source, reason.

   Each write is one commit whose ``userMetadata`` is ``{"watchnext.run_date", "watchnext.run_id"}`` (the
   MLflow run); ``recommendations_latest`` also carries them as table properties, set by the same
   ``CREATE OR REPLACE`` commit that writes its rows.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from watchnext import catalog, tables, tracking
from watchnext.config import Config
from watchnext.constants import (
    COL_ANCHOR,
    COL_CLUSTER,
    COL_FEATURES,
    COL_ITEM,
    COL_ITEM_IDX,
    COL_LABEL,
    COL_MODEL_VERSIONS,
    COL_NEIGHBOR,
    COL_NEIGHBOR_IDX,
    COL_RANK,
    COL_REASON,
    COL_ROW,
    COL_RUN_DATE,
    COL_RUN_ID,
    COL_SCORE,
    COL_SHARE,
    COL_SOURCE,
    COL_SOURCES,
    COL_TIMESTAMP,
    COL_TITLE,
    COL_USER,
    COL_USER_IDX,
    TABLE_BECAUSE_YOU_WATCHED,
    TABLE_CLUSTERS,
    TABLE_GENRE_ROWS,
    TABLE_INTERACTIONS,
    TABLE_ITEM_CLUSTERS,
    TABLE_ITEM_FACTORS,
    TABLE_ITEM_SIMILARITIES,
    TABLE_ITEMS,
    TABLE_NCF_SCORES,
    TABLE_RECOMMENDATIONS,
    TABLE_RECOMMENDATIONS_LATEST,
    TABLE_USER_CLUSTER_AFFINITY,
    TABLE_USER_FACTORS,
    TABLE_USER_INDEX,
    TABLE_USER_NEIGHBORS,
)
from watchnext.evaluation import protocol
from watchnext.models import blend
from watchnext.models.als import AlsParams, factor_frames, fit_als
from watchnext.models.baselines import popularity_scores, trending_scores
from watchnext.models.clusters import user_cluster_affinity
from watchnext.models.similarity import (
    item_neighbors_from_cooccurrence,
    item_neighbors_from_factors,
    user_based_scores,
    user_neighbors_from_cooccurrence,
    user_neighbors_from_factors,
)
from watchnext.models.topk import topk_from_factors, topk_from_item_scores
from watchnext.models.tuning import validation_split

log = logging.getLogger(__name__)

MODEL_NAME = "blend"
_POOL_ROWS = 2_000_000  # candidate rows per partition of the pool (ranked in numpy as a whole)
_REASONS = {
    "user": "Viewers with similar taste watched this",
    "trending": "Trending now",
    "popular": "Popular on watchnext",
    "backfill": "Popular on watchnext",
    "als": "Picked for your taste",
    "ncf": "Picked for your taste",
}


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
    item_clusters: DataFrame | None = None  # (item_idx, cluster_id)
    cached: list[DataFrame] = field(default_factory=list)
    origin: dict[str, str] = field(default_factory=dict)  # model -> "stored" (read) | "fitted"

    def cache(self, df: DataFrame) -> DataFrame:
        """Persist ``df`` until :meth:`release`: frames that several candidate branches read (popularity,
        the users, their seen items) are computed once, not once per branch of the plan."""
        df = df.persist(StorageLevel.MEMORY_AND_DISK)
        self.cached.append(df)
        return df

    def release(self) -> None:
        for df in self.cached:
            df.unpersist()
        self.cached.clear()


def run(spark: SparkSession, cfg: Config, run_date: dt.date) -> dict[str, Any]:
    t0 = time.perf_counter()
    rc = cfg.recommend
    run_id = tracking.active_run_id()
    interactions = (
        tables.read_run_date(spark, cfg.table_path(TABLE_INTERACTIONS), run_date)
        .select(COL_USER, COL_ITEM, COL_USER_IDX, COL_ITEM_IDX, "rating", COL_TIMESTAMP)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    item_clusters = _input(spark, cfg, TABLE_ITEM_CLUSTERS, run_date).select(
        COL_ITEM, COL_ITEM_IDX, COL_CLUSTER
    )
    als_params, versions = _model_versions(cfg)
    summary: dict[str, Any] = {"model_versions": versions, "sources": list(rc.sources)}
    tracking.log_params({"blend.sources": ",".join(rc.sources), "blend.n": rc.n})
    persisted: list[DataFrame] = [interactions]
    sources: list[Sources] = []
    try:
        train, test = protocol.split(interactions, cfg.evaluation)
        train = train.persist(StorageLevel.MEMORY_AND_DISK)
        persisted.append(train)

        # 1. weights tuned on a validation split of train
        ts = time.perf_counter()
        weights = dict(rc.weights)
        if rc.tuning.enabled:
            weights, search = _tune(cfg, train, item_clusters, als_params)
            summary["tuning"] = search
        summary["weights"] = {s: round(w, 4) for s, w in weights.items()}
        summary["tuning_seconds"] = round(time.perf_counter() - ts, 2)
        tracking.log_params({f"blend.weight.{s}": w for s, w in weights.items()})

        # 2. the blend on the protocol's train split, scored by the evaluate stage
        ts = time.perf_counter()
        k = max(cfg.evaluation.ks + [cfg.evaluation.k])
        offline = _fit_sources(cfg, train, item_clusters, als_params, stored=(spark, run_date))
        sources.append(offline)
        recs = _recommend(cfg, offline, test.select(COL_USER_IDX), item_clusters, weights, k)
        protocol.write_recommendations(recs, cfg, MODEL_NAME, run_date, run_id)
        offline.release()
        summary["offline_models"] = dict(offline.origin)
        log.info("offline blend: train-split models %s", offline.origin)
        summary["offline_seconds"] = round(time.perf_counter() - ts, 2)

        # 3. publish
        ts = time.perf_counter()
        published = _published_sources(spark, cfg, run_date, interactions, item_clusters)
        sources.append(published)
        users = tables.read(spark, cfg.table_path(TABLE_USER_INDEX)).select(COL_USER, COL_USER_IDX)
        scored = _scored_pool(
            cfg, published, users.select(COL_USER_IDX), weights, item_clusters, rc.n
        ).persist(StorageLevel.MEMORY_AND_DISK)
        persisted.append(scored)
        top = scored.where(F.col(COL_RANK).isNotNull()).persist(StorageLevel.MEMORY_AND_DISK)
        persisted.append(top)
        summary["users"] = _check_exactly_n(top, users, rc.n)
        items = tables.read_run_date(spark, cfg.table_path(TABLE_ITEMS), run_date).select(
            COL_ITEM, COL_ITEM_IDX, COL_TITLE
        )
        labels = _input(spark, cfg, TABLE_CLUSTERS, run_date).select(COL_CLUSTER, COL_LABEL)
        out = _decorate(top, users, items, labels, versions).select(
            "*", F.lit(run_id).alias(COL_RUN_ID), F.lit(run_date).alias(COL_RUN_DATE)
        )
        # Lineage travels in the data commit itself: the rows carry run_id / run_date, the commit's
        # userMetadata names the run (no second ALTER TABLE commit a crash could separate from it).
        props = {"watchnext.run_id": run_id, "watchnext.run_date": run_date.isoformat()}
        note = json.dumps(props, sort_keys=True)
        path = cfg.table_path(TABLE_RECOMMENDATIONS)
        tables.overwrite_run_date(out, path, run_date, note)
        summary["latest"] = _publish_latest(spark, cfg, run_date, props)

        lineage = [F.lit(run_id).alias(COL_RUN_ID), F.lit(run_date).alias(COL_RUN_DATE)]
        extra = {
            TABLE_GENRE_ROWS: _genre_rows(cfg, published, scored, item_clusters, users, items, labels),
            TABLE_BECAUSE_YOU_WATCHED: _because_you_watched(spark, cfg, run_date, items),
        }
        for table, df in extra.items():
            tables.overwrite_run_date(df.select("*", *lineage), cfg.table_path(table), run_date, note)
        summary["publish_seconds"] = round(time.perf_counter() - ts, 2)
        summary["reasons"] = _reason_mix(out)
        tracking.log_metrics({f"reason_share.{r}": v for r, v in summary["reasons"].items()})
        tracking.log_text(_sample_text(out), "recommendations_sample.txt")
        summary["tables"] = {
            t: cfg.table_path(t)
            for t in (
                TABLE_RECOMMENDATIONS,
                TABLE_RECOMMENDATIONS_LATEST,
                TABLE_GENRE_ROWS,
                TABLE_BECAUSE_YOU_WATCHED,
            )
        }
    finally:
        for src in sources:
            src.release()
        for df in persisted:
            df.unpersist()
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


# ------------------------------------------------------------------------------------- the sources
def _fit_sources(
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
    warm = (
        history.groupBy(COL_ITEM_IDX)
        .agg(F.count(F.lit(1)).alias("_n"))
        .where(F.col("_n") >= sim.min_item_interactions)
        .select(COL_ITEM_IDX)
    )
    if "item" in rc.sources:
        if rc.item_source == "cooccurrence":
            src.item_neighbors = read_neighbors(protocol.EVAL_ITEM_COOCCURRENCE, COL_ITEM_IDX)
            if src.item_neighbors is None:
                src.item_neighbors = item_neighbors_from_cooccurrence(
                    history.join(warm, COL_ITEM_IDX, "left_semi"),
                    sim.k,
                    measure=sim.cooccurrence_measure,
                    min_overlap=sim.min_cooccurrence,
                    block_size=sim.block_size,
                )
        elif rc.item_source == "als":
            assert src.item_factors is not None
            src.item_neighbors = item_neighbors_from_factors(
                src.item_factors.join(warm, COL_ITEM_IDX, "left_semi"), sim.k, block_size=sim.block_size
            )
        else:
            raise ValueError("recommend.item_source=content is only supported for publishing")
    if "user" in rc.sources:
        if sim.user_source == "als":
            assert src.user_factors is not None
            src.user_neighbors = user_neighbors_from_factors(
                src.user_factors, sim.user_k, block_size=sim.block_size
            )
        else:
            src.user_neighbors = read_neighbors(protocol.EVAL_USER_COOCCURRENCE, COL_USER_IDX)
            if src.user_neighbors is None:
                src.user_neighbors = user_neighbors_from_cooccurrence(
                    history, sim.user_k, min_overlap=sim.min_cooccurrence, block_size=sim.block_size
                )
    if "cluster" in rc.sources:
        src.affinity = user_cluster_affinity(
            history.select(COL_USER, COL_USER_IDX, COL_ITEM),
            item_clusters,
            smoothing=cfg.clusters.affinity_smoothing,
        ).select(COL_USER_IDX, COL_CLUSTER, COL_SHARE)
    return src


def _published_sources(
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
        src.user_factors = _input(spark, cfg, TABLE_USER_FACTORS, run_date).select(COL_USER_IDX, COL_FEATURES)
        src.item_factors = _input(spark, cfg, TABLE_ITEM_FACTORS, run_date).select(COL_ITEM_IDX, COL_FEATURES)
    if "item" in rc.sources:
        src.item_neighbors = (
            _input(spark, cfg, TABLE_ITEM_SIMILARITIES, run_date)
            .where(F.col(COL_SOURCE) == rc.item_source)
            .select(COL_ITEM_IDX, COL_NEIGHBOR_IDX, COL_SCORE)
        )
    if "user" in rc.sources:
        src.user_neighbors = _input(spark, cfg, TABLE_USER_NEIGHBORS, run_date).select(
            COL_USER_IDX, COL_NEIGHBOR_IDX, COL_SCORE
        )
    if "cluster" in rc.sources:
        src.affinity = _input(spark, cfg, TABLE_USER_CLUSTER_AFFINITY, run_date).select(
            COL_USER_IDX, COL_CLUSTER, COL_SHARE
        )
    if "ncf" in rc.sources:
        path = cfg.table_path(TABLE_NCF_SCORES)
        if tables.exists(spark, path):
            src.ncf = tables.read_run_date(spark, path, run_date).select(
                COL_USER_IDX, COL_ITEM_IDX, COL_SCORE
            )
        else:
            log.warning("recommend.sources has 'ncf' but there is no %s table: blending without it", path)
    return src


def _candidates(cfg: Config, src: Sources, users: DataFrame) -> DataFrame:
    """Every source's top-M unseen items for ``users`` (distinct user_idx), in the long format."""
    rc, m = cfg.recommend, cfg.recommend.candidates
    seen = src.history.select(COL_USER_IDX, COL_ITEM_IDX)
    seen_u = src.cache(seen.join(users, COL_USER_IDX, "left_semi"))
    parts: list[DataFrame] = []
    for s in rc.sources:
        if s == "als" and src.user_factors is not None and src.item_factors is not None:
            uf = src.user_factors.join(users, COL_USER_IDX, "left_semi")
            parts.append(blend.ranked(topk_from_factors(uf, src.item_factors, m, seen_u), s))
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


def _scored_pool(
    cfg: Config,
    src: Sources,
    users: DataFrame,
    weights: dict[str, float],
    item_clusters: DataFrame,
    n: int,
) -> DataFrame:
    """The blended candidate pool of ``users``: one row per (user, item) with score, dominant source,
    cluster and ``rank`` (1..n in the user's capped top n, null otherwise); users with fewer than
    ``cold_threshold`` interactions are scored with the cold weights."""
    rc = cfg.recommend
    users = src.cache(users.select(COL_USER_IDX).distinct())
    cand = _candidates(cfg, src, users)
    counts = src.history.groupBy(COL_USER_IDX).agg(F.countDistinct(COL_ITEM_IDX).alias(blend.COL_COUNT))
    rows = users.count() * (len(rc.sources) + 1) * rc.candidates
    parts = max(cfg.spark.shuffle_partitions, math.ceil(rows / _POOL_ROWS))
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


def _recommend(
    cfg: Config, src: Sources, users: DataFrame, item_clusters: DataFrame, weights: dict[str, float], n: int
) -> DataFrame:
    scored = _scored_pool(cfg, src, users, weights, item_clusters, n)
    return scored.where(F.col(COL_RANK).isNotNull()).select(COL_USER_IDX, COL_ITEM_IDX, COL_SCORE, COL_RANK)


# ------------------------------------------------------------------------------------------ tuning
def _tune(
    cfg: Config, train: DataFrame, item_clusters: DataFrame, params: AlsParams
) -> tuple[dict[str, float], dict[str, Any]]:
    """Blend weights maximising validation NDCG@K (``evaluation.k``) of the capped list."""
    rc, t = cfg.recommend, cfg.recommend.tuning
    fit, valid = validation_split(train, t.validation_ratio, t.seed)
    fit = fit.persist(StorageLevel.MEMORY_AND_DISK)
    valid = valid.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        users = _sample_users(valid.select(COL_USER_IDX).distinct(), t.max_users, t.seed)
        src = _fit_sources(cfg, fit, item_clusters, params)
        scored = _scored_pool(cfg, src, users, rc.weights, item_clusters, cfg.evaluation.k)
        truth = valid.select(COL_USER_IDX, COL_ITEM_IDX).distinct().join(users, COL_USER_IDX, "left_semi")
        feats = [blend.feature(s) for s in rc.sources]
        # Warm users only: the cold ones are scored by the fixed cold weights, not by these.
        rows = (
            scored.where(~F.col(blend.COL_COLD))
            .join(truth.withColumn("relevant", F.lit(True)), [COL_USER_IDX, COL_ITEM_IDX], "left")
            .select(
                COL_USER_IDX,
                COL_ITEM_IDX,
                COL_CLUSTER,
                F.coalesce("relevant", F.lit(False)).alias("relevant"),
                *feats,
                blend.COL_PRIOR,
            )
            .toPandas()
        )
        n_rel = truth.groupBy(COL_USER_IDX).count().toPandas().set_index(COL_USER_IDX)["count"]
        src.release()
    finally:
        fit.unpersist()
        valid.unpersist()
    data = blend.TuningData.from_pandas(rows, n_rel, rc.sources)
    k = cfg.evaluation.k
    start = blend.ndcg_at_k(data, rc.weights, k, rc.max_per_cluster)
    search = blend.tune_weights(
        data, k, rc.max_per_cluster, n_trials=t.n_trials, seed=t.seed, method=t.method, start=rc.weights
    )
    for i, (_, value) in enumerate(search.trials):
        tracking.log_metrics({f"validation_ndcg_at_{k}": value}, step=i)
    tracking.log_metrics(
        {
            f"best_validation_ndcg_at_{k}": search.value,
            f"configured_validation_ndcg_at_{k}": start,
            **{f"single.{s}.validation_ndcg_at_{k}": v for s, v in search.single_source.items()},
        }
    )
    tracking.log_dict(
        {"weights": search.weights, "single_source": search.single_source}, "blend_weights.json"
    )
    log.info(
        "blend weights %s: validation NDCG@%d %.4f (configured %.4f; single sources %s)",
        search.weights,
        k,
        search.value,
        start,
        search.single_source,
    )
    return search.weights, {
        "users": data.n_users,
        "rows": len(rows),
        "trials": len(search.trials),
        f"validation_ndcg_at_{k}": round(search.value, 4),
        f"configured_ndcg_at_{k}": round(start, 4),
        "single_source": {s: round(v, 4) for s, v in search.single_source.items()},
    }


def _sample_users(users: DataFrame, max_users: int, seed: int) -> DataFrame:
    """At most about ``max_users`` of ``users`` (a seeded hash sample; all of them when few)."""
    n = users.count()
    if n <= max_users:
        return users
    fraction = max_users / n
    u = F.abs(F.xxhash64(F.lit(seed), F.col(COL_USER_IDX))) % 1_000_000 / 1_000_000.0
    return users.where(u < fraction)


# ----------------------------------------------------------------------------------------- publish
def _check_exactly_n(top: DataFrame, users: DataFrame, n: int) -> dict[str, int]:
    """Every known user has exactly ``n`` distinct items: raise before anything is written if not."""
    per_user = top.groupBy(COL_USER_IDX).agg(
        F.count(F.lit(1)).alias("_rows"), F.countDistinct(COL_ITEM_IDX).alias("_items")
    )
    joined = (
        users.select(COL_USER, COL_USER_IDX)
        .join(per_user, COL_USER_IDX, "left")
        .fillna(0, ["_rows", "_items"])
    )
    bad = joined.where((F.col("_rows") != n) | (F.col("_items") != n))
    row = joined.agg(
        F.count(F.lit(1)).alias("users"), F.sum((F.col("_rows") == n).cast("int")).alias("ok")
    ).first()
    if row["users"] != row["ok"] or not bad.isEmpty():
        examples = [f"{r[COL_USER]} ({r['_items']} items)" for r in bad.limit(5).collect()]
        raise RuntimeError(
            f"{row['users'] - row['ok']} users would get a list other than {n} distinct unseen items, e.g. "
            f"{', '.join(examples)}: the catalogue has too few items they have not seen; nothing was written"
        )
    return {"users": int(row["users"]), "items_per_user": n}


def _reason(labels_col: Column, anchor_title: Column) -> Column:
    """Human-readable reason from the dominant source (item-item anchors explain latent picks too)."""
    d = F.col(blend.COL_DOMINANT)
    because = F.concat(F.lit("Because you watched "), anchor_title)
    return (
        F.when(d.isin("item", "als", "ncf") & anchor_title.isNotNull(), because)
        .when((d == "cluster") & labels_col.isNotNull(), F.concat(F.lit("Popular in "), labels_col))
        .when(d.isin(*_REASONS), F.create_map(*[F.lit(x) for kv in _REASONS.items() for x in kv])[d])
        .otherwise(F.lit(_REASONS["popular"]))
    )


def _decorate(
    top: DataFrame, users: DataFrame, items: DataFrame, labels: DataFrame, versions: dict[str, str]
) -> DataFrame:
    """Ids, titles, reasons and model versions on the selected lists."""
    anchors = items.select(
        F.col(COL_ITEM_IDX).alias(blend.COL_ANCHOR_IDX),
        F.col(COL_ITEM).alias(COL_ANCHOR),
        F.col(COL_TITLE).alias("_at"),
    )
    mv = (
        F.create_map(*[F.lit(x) for kv in sorted(versions.items()) for x in kv])
        if versions
        else F.create_map()
    )
    return (
        top.join(users, COL_USER_IDX)
        .join(items, COL_ITEM_IDX)
        .join(anchors, blend.COL_ANCHOR_IDX, "left")
        .join(labels, COL_CLUSTER, "left")
        .select(
            COL_USER,
            COL_USER_IDX,
            COL_RANK,
            COL_ITEM,
            COL_TITLE,
            F.col(COL_SCORE).cast("double").alias(COL_SCORE),
            _reason(F.col(COL_LABEL), F.col("_at")).alias(COL_REASON),
            COL_SOURCES,
            mv.cast("map<string,string>").alias(COL_MODEL_VERSIONS),
        )
    )


def _publish_latest(spark: SparkSession, cfg: Config, run_date: dt.date, props: dict[str, str]) -> str:
    """Replace ``recommendations_latest`` with this run date's lists unless it holds a newer date."""
    path = cfg.table_path(TABLE_RECOMMENDATIONS_LATEST)
    if tables.exists(spark, path):
        newest = tables.read(spark, path).agg(F.max(COL_RUN_DATE)).first()[0]
        if newest is not None and newest > run_date:
            log.info("%s holds %s, newer than %s: left as it is", path, newest, run_date)
            return f"kept {newest}"
    rows = tables.read_run_date(spark, cfg.table_path(TABLE_RECOMMENDATIONS), run_date)
    n_files = max(1, spark.sparkContext.defaultParallelism)
    ordered = rows.repartitionByRange(n_files, COL_USER).sortWithinPartitions(COL_USER, COL_RANK)
    tables.replace_with_properties(spark, ordered, path, props)
    return str(run_date)


def _genre_rows(
    cfg: Config,
    src: Sources,
    scored: DataFrame,
    item_clusters: DataFrame,
    users: DataFrame,
    items: DataFrame,
    labels: DataFrame,
) -> DataFrame:
    """Per user, the ``genre_rows`` favourite clusters by affinity, each with ``genre_row_length``
    unseen items: the user's blended candidates of that cluster first (by score), then the cluster's
    popular items."""
    rc = cfg.recommend
    if src.affinity is None or rc.genre_rows == 0:
        return _empty_rows(scored.sparkSession)
    length = rc.genre_row_length
    by_share = Window.partitionBy(COL_USER_IDX).orderBy(F.col(COL_SHARE).desc(), F.col(COL_CLUSTER).asc())
    fav = (
        src.affinity.withColumn(COL_ROW, F.row_number().over(by_share).cast("int"))
        .where(F.col(COL_ROW) <= rc.genre_rows)
        .select(COL_USER_IDX, COL_CLUSTER, COL_ROW)
    )
    ic = item_clusters.select(COL_ITEM_IDX, COL_CLUSTER)
    personal = (
        scored.select(COL_USER_IDX, COL_ITEM_IDX, COL_SCORE)
        .join(ic, COL_ITEM_IDX)
        .join(fav, [COL_USER_IDX, COL_CLUSTER])
        .select(COL_USER_IDX, COL_CLUSTER, COL_ROW, COL_ITEM_IDX, COL_SCORE, F.lit(1).alias("_tier"))
    )
    # min(length, unseen items of the cluster) popular unseen items per user and cluster
    fill = blend.cluster_backfill(ic, src.popularity, fav.select(COL_USER_IDX), src.history, length)
    backfill = (
        fill.join(ic, COL_ITEM_IDX)
        .join(fav, [COL_USER_IDX, COL_CLUSTER])
        .select(COL_USER_IDX, COL_CLUSTER, COL_ROW, COL_ITEM_IDX, COL_SCORE, F.lit(0).alias("_tier"))
    )
    both = personal.unionByName(backfill)
    best = Window.partitionBy(COL_USER_IDX, COL_ITEM_IDX).orderBy(F.col("_tier").desc())
    order = Window.partitionBy(COL_USER_IDX, COL_ROW).orderBy(
        F.col("_tier").desc(), F.col(COL_SCORE).desc(), F.col(COL_ITEM_IDX).asc()
    )
    ranked = (
        both.withColumn("_b", F.row_number().over(best))
        .where(F.col("_b") == 1)
        .withColumn(COL_RANK, F.row_number().over(order).cast("int"))
        .where(F.col(COL_RANK) <= length)
    )
    return (
        ranked.join(users, COL_USER_IDX)
        .join(items, COL_ITEM_IDX)
        .join(labels, COL_CLUSTER, "left")
        .select(
            COL_USER,
            COL_USER_IDX,
            COL_ROW,
            COL_CLUSTER,
            COL_LABEL,
            COL_RANK,
            COL_ITEM,
            COL_TITLE,
            F.col(COL_SCORE).cast("double").alias(COL_SCORE),
        )
    )


def _empty_rows(spark: SparkSession) -> DataFrame:
    schema = (
        "user_id string, user_idx int, row int, cluster_id int, label string, rank int, item_id string, "
        "title string, score double"
    )
    return spark.createDataFrame([], schema)


def _because_you_watched(spark: SparkSession, cfg: Config, run_date: dt.date, items: DataFrame) -> DataFrame:
    """``because_k`` neighbours per item from ``recommend.item_source``; items it does not cover (cold
    ones) take their content neighbours when those were computed."""
    rc = cfg.recommend
    sims = _input(spark, cfg, TABLE_ITEM_SIMILARITIES, run_date).where(F.col(COL_RANK) <= rc.because_k)
    main = sims.where(F.col(COL_SOURCE) == rc.item_source)
    fallback = sims.where(F.col(COL_SOURCE) == "content").join(
        main.select(COL_ITEM_IDX).distinct(), COL_ITEM_IDX, "left_anti"
    )
    nb = main.unionByName(fallback)
    titles = items.select(COL_ITEM_IDX, F.col(COL_TITLE).alias("_watched"))
    neighbour_titles = items.select(F.col(COL_ITEM_IDX).alias(COL_NEIGHBOR_IDX), COL_TITLE)
    return (
        nb.join(titles, COL_ITEM_IDX)
        .join(neighbour_titles, COL_NEIGHBOR_IDX)
        .select(
            COL_ITEM,
            COL_ITEM_IDX,
            COL_RANK,
            COL_NEIGHBOR,
            COL_NEIGHBOR_IDX,
            COL_TITLE,
            COL_SCORE,
            COL_SOURCE,
            F.concat(F.lit("Because you watched "), F.col("_watched")).alias(COL_REASON),
        )
    )


# ------------------------------------------------------------------------------------------ helpers
def _model_versions(cfg: Config) -> tuple[AlsParams, dict[str, str]]:
    """The ALS parameters of the registered serving model (``als.registered_model@model_alias``: the
    als stage logs its chosen parameters as ``best.*``) and the registry versions the lists come from.
    Without MLflow, or before the als stage registered a version, the ``als`` config section."""
    params = AlsParams.from_config(cfg.als)
    versions: dict[str, str] = {}
    if not cfg.mlflow.enabled:
        return params, versions
    import mlflow

    client = mlflow.MlflowClient()
    try:
        mv = client.get_model_version_by_alias(cfg.als.registered_model, cfg.als.model_alias)
    except mlflow.exceptions.MlflowException:
        log.warning(
            "no %s@%s in the registry: ALS parameters from the config",
            cfg.als.registered_model,
            cfg.als.model_alias,
        )
    else:
        versions["als"] = str(mv.version)
        logged = {
            k.removeprefix("best."): v
            for k, v in client.get_run(mv.run_id).data.params.items()
            if k.startswith("best.")
        }
        if logged:
            params = AlsParams.model_validate({**params.model_dump(), **logged})
    found = client.search_model_versions(f"name = '{cfg.clusters.registered_model}'")
    if found:
        versions["clusters"] = str(max(int(v.version) for v in found))
    return params, versions


def _input(spark: SparkSession, cfg: Config, table: str, run_date: dt.date) -> DataFrame:
    return catalog.read_input(
        spark, cfg.table_path(table), table, run_date, reader="recommend", require_rows=False
    )


def _reason_mix(out: DataFrame) -> dict[str, float]:
    kind = F.regexp_replace(F.col(COL_REASON), r"^(Because you watched|Popular in) .*$", "$1 ...")
    rows = out.groupBy(kind.alias("k")).count().collect()
    total = sum(r["count"] for r in rows) or 1
    return {r["k"]: round(r["count"] / total, 4) for r in sorted(rows, key=lambda r: -r["count"])}


def _sample_text(out: DataFrame, n_users: int = 5) -> str:
    first = [r[0] for r in out.select(COL_USER).distinct().orderBy(COL_USER).limit(n_users).collect()]
    rows = out.where(F.col(COL_USER).isin(first)).orderBy(COL_USER, COL_RANK).collect()
    lines: list[str] = []
    for r in rows:
        if r[COL_RANK] == 1:
            lines.append(f"user {r[COL_USER]}")
        lines.append(f"  {r[COL_RANK]:>2}. {r[COL_TITLE]}  ({r[COL_SCORE]:.3f})  {r[COL_REASON]}")
    return "\n".join(lines)
