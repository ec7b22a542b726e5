"""Similarities stage: "because you watched" neighbours per item, and user-based CF neighbours.

For the run date, per configured source (``similarity.sources``), the top ``similarity.k`` neighbours
of every item, with the exact blocked engine of ``models/similarity.py``:

* ``als``: cosine of the ALS item factors (``item_factors``, written by the als stage);
* ``cooccurrence``: items watched by the same users (Jaccard or binary cosine, ``min_cooccurrence``);
* ``content``: cosine of the content vectors (``item_features``, written by the clusters stage). This
  is the source that reaches cold items: the two interaction-based sources only cover items with at
  least ``min_item_interactions`` interactions, content covers every item in the catalogue. When fewer
  items than ``content.min_coverage`` have a genre or tag, content is left out (``data_profile.py``:
  titles alone say nothing about an item), and the summary and MLflow say why.

Tables (each replaces exactly its run date in one Delta commit):

* ``item_similarities``: item_id, item_idx, neighbor_id, neighbor_idx, rank, score, source, run_id,
  run_date;
* ``user_neighbors``: user_id, user_idx, neighbor_id, neighbor_idx, rank, score, source, run_id,
  run_date (``similarity.user_k`` per user, from shared items or ALS user factors).

Offline, on the protocol's train split, the stage also writes the item-kNN (co-occurrence), content-kNN
and user-kNN top-K lists to ``eval_recommendations`` so the evaluate stage scores them beside ALS and
the baselines, and stores the train-split co-occurrence neighbours in ``eval_neighbors`` (models
``item_cooccurrence``, ``user_cooccurrence``) for the recommend stage's offline blend.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from functools import reduce
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from watchnext import catalog, data_profile, tables, tracking
from watchnext.config import Config
from watchnext.constants import (
    COL_FEATURES,
    COL_ITEM,
    COL_ITEM_IDX,
    COL_RUN_DATE,
    COL_RUN_ID,
    COL_SOURCE,
    COL_TITLE,
    COL_USER,
    COL_USER_IDX,
    TABLE_INTERACTIONS,
    TABLE_ITEM_FACTORS,
    TABLE_ITEM_FEATURES,
    TABLE_ITEM_SIMILARITIES,
    TABLE_ITEMS,
    TABLE_USER_FACTORS,
    TABLE_USER_INDEX,
    TABLE_USER_NEIGHBORS,
)
from watchnext.evaluation import protocol
from watchnext.models.knn import item_based_scores, user_based_scores
from watchnext.models.neighbors import (
    item_neighbors,
    neighbor_stats,
    sample_text,
    user_neighbors,
    warm_items,
    with_ids,
)

log = logging.getLogger(__name__)

OFFLINE_MODELS = ("item_knn", "content_knn", "user_knn")  # the lists _offline_lists may write


def run(spark: SparkSession, cfg: Config, run_date: dt.date) -> dict[str, Any]:
    t0 = time.perf_counter()
    run_id = tracking.active_run_id()
    cfg, left_out = _what_the_content_feeds(spark, cfg, run_date)
    sim = cfg.similarity
    interactions = (
        tables.read_run_date(spark, cfg.table_path(TABLE_INTERACTIONS), run_date)
        .select(COL_USER_IDX, COL_ITEM_IDX, "rating", "timestamp")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    items = tables.read_run_date(spark, cfg.table_path(TABLE_ITEMS), run_date).select(
        COL_ITEM, COL_ITEM_IDX, COL_TITLE
    )
    summary: dict[str, Any] = {"sources": {}, **({"left_out": left_out} if left_out else {})}
    try:
        warm = warm_items(interactions, sim.min_item_interactions)
        neighbours = []
        for source in sim.sources:
            ts = time.perf_counter()
            nb = _item_source(spark, cfg, run_date, source, interactions, warm).persist(
                StorageLevel.MEMORY_AND_DISK
            )
            stats = neighbor_stats(nb)
            stats["seconds"] = round(time.perf_counter() - ts, 2)
            summary["sources"][source] = stats
            tracking.log_metrics({f"{source}.{k}": v for k, v in stats.items()})
            neighbours.append(nb.withColumn(COL_SOURCE, F.lit(source)))
        if neighbours:
            table = reduce(DataFrame.unionByName, neighbours)
            out = with_ids(table, items.select(COL_ITEM, COL_ITEM_IDX), COL_ITEM, COL_ITEM_IDX).select(
                "*", F.lit(run_id).alias(COL_RUN_ID), F.lit(run_date).alias(COL_RUN_DATE)
            )
            tables.overwrite_run_date(
                out, cfg.table_path(TABLE_ITEM_SIMILARITIES), run_date, f"similarities run_id={run_id}"
            )
            published = tables.read_run_date(spark, cfg.table_path(TABLE_ITEM_SIMILARITIES), run_date)
            sample = sample_text(published, items, interactions)
            tracking.log_text(sample, "neighbours_sample.txt")
        for nb in neighbours:
            nb.unpersist()

        ts = time.perf_counter()
        users = _user_neighbours(spark, cfg, run_date, interactions)
        user_ids = tables.read(spark, cfg.table_path(TABLE_USER_INDEX)).select(COL_USER, COL_USER_IDX)
        out = with_ids(
            users.withColumn(COL_SOURCE, F.lit(sim.user_source)), user_ids, COL_USER, COL_USER_IDX
        ).select("*", F.lit(run_id).alias(COL_RUN_ID), F.lit(run_date).alias(COL_RUN_DATE))
        tables.overwrite_run_date(
            out, cfg.table_path(TABLE_USER_NEIGHBORS), run_date, f"similarities run_id={run_id}"
        )
        summary["user_neighbors"] = {"source": sim.user_source, "seconds": round(time.perf_counter() - ts, 2)}

        summary["offline"] = _offline_lists(spark, cfg, run_date, run_id, interactions)
    finally:
        interactions.unpersist()
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


# ------------------------------------------------------------------------------------------ sources
def _what_the_content_feeds(
    spark: SparkSession, cfg: Config, run_date: dt.date
) -> tuple[Config, dict[str, str]]:
    """``cfg`` without the ``content`` neighbours when too few items have a genre or tag
    (``data_profile.py``), and what was left out with why (logged)."""
    sim = cfg.similarity
    if "content" not in sim.sources:
        return cfg, {}
    items = tables.read_run_date(spark, cfg.table_path(TABLE_ITEMS), run_date)
    coverage = data_profile.content_coverage(items)
    why = data_profile.content_unusable(coverage, cfg.content.min_coverage)
    tracking.log_metrics({"content_coverage": coverage})
    if why is None:
        return cfg, {}
    if cfg.recommend.item_source == "content":
        raise ValueError(
            f"recommend.item_source is 'content' but {why}: set recommend.item_source to cooccurrence or als"
        )
    log.warning("similarities: content neighbours left out: %s", why)
    tracking.log_params({"left_out.content": why[:500]})
    sources = [s for s in sim.sources if s != "content"]
    thin = cfg.model_copy(update={"similarity": sim.model_copy(update={"sources": sources})})
    return thin, {"content": why}


def _item_source(
    spark: SparkSession, cfg: Config, run_date: dt.date, source: str, interactions: DataFrame, warm: DataFrame
) -> DataFrame:
    """The input ``source`` reads (its published table, or the run date's interactions), then its
    neighbours."""
    if source == "als":
        data = _input(spark, cfg, TABLE_ITEM_FACTORS, run_date).join(warm, COL_ITEM_IDX, "left_semi")
    elif source == "content":
        data = _input(spark, cfg, TABLE_ITEM_FEATURES, run_date).select(COL_ITEM_IDX, COL_FEATURES)
    else:
        data = interactions.join(warm, COL_ITEM_IDX, "left_semi")
    return item_neighbors(source, data, cfg.similarity)


def _user_neighbours(
    spark: SparkSession, cfg: Config, run_date: dt.date, interactions: DataFrame
) -> DataFrame:
    source = cfg.similarity.user_source
    data = _input(spark, cfg, TABLE_USER_FACTORS, run_date) if source == "als" else interactions
    return user_neighbors(source, data, cfg.similarity)


def _input(spark: SparkSession, cfg: Config, table: str, run_date: dt.date) -> DataFrame:
    return catalog.read_input(
        spark, cfg.table_path(table), table, run_date, reader="similarities", require_rows=True
    )


# ---------------------------------------------------------------------------------- offline lists
def _offline_lists(
    spark: SparkSession, cfg: Config, run_date: dt.date, run_id: str, interactions: DataFrame
) -> dict[str, Any]:
    """Item-, content- and user-kNN top-K for the test users, fitted on the protocol's train split."""
    sim = cfg.similarity
    train, test = (
        df.persist(StorageLevel.MEMORY_AND_DISK) for df in protocol.split(interactions, cfg.evaluation)
    )
    k = max(cfg.evaluation.ks + [cfg.evaluation.k])
    users = test.select(COL_USER_IDX).distinct()
    seen = train.select(COL_USER_IDX, COL_ITEM_IDX)
    written = []
    try:
        if "cooccurrence" in sim.sources:
            warm = warm_items(train, sim.min_item_interactions)
            nb = item_neighbors("cooccurrence", train.join(warm, COL_ITEM_IDX, "left_semi"), sim)
            # stored for the recommend stage's offline blend, and scored from the stored table
            nb = protocol.write_neighbors(
                nb, COL_ITEM_IDX, cfg, protocol.EVAL_ITEM_COOCCURRENCE, run_date, run_id
            )
            recs = item_based_scores(nb, seen.join(users, COL_USER_IDX, "left_semi"), k)
            protocol.write_recommendations(recs, cfg, "item_knn", run_date, run_id)
            written.append("item_knn")
        if "content" in sim.sources:
            # Content neighbours use no interactions: the full-data table is free of test leakage.
            nb = tables.read_run_date(spark, cfg.table_path(TABLE_ITEM_SIMILARITIES), run_date).where(
                F.col(COL_SOURCE) == "content"
            )
            recs = item_based_scores(nb, seen.join(users, COL_USER_IDX, "left_semi"), k)
            protocol.write_recommendations(recs, cfg, "content_knn", run_date, run_id)
            written.append("content_knn")
        if sim.user_source == "cooccurrence":
            un = user_neighbors("cooccurrence", train, sim)
            un = protocol.write_neighbors(
                un, COL_USER_IDX, cfg, protocol.EVAL_USER_COOCCURRENCE, run_date, run_id
            )
            recs = user_based_scores(un.join(users, COL_USER_IDX, "left_semi"), seen, k)
            protocol.write_recommendations(recs, cfg, "user_knn", run_date, run_id)
            written.append("user_knn")
        else:
            log.info("user_source=als: user-kNN is not scored offline (its factors saw the test split)")
        # Lists an earlier run for the date wrote and this one did not (content since left out, a source
        # since removed): the evaluate stage would score them as this run's.
        stale = [m for m in OFFLINE_MODELS if m not in written]
        cleared = protocol.clear_recommendations(spark, cfg, stale, run_date, run_id)
        if cleared:
            log.info("offline lists of %s from an earlier run for %s removed", ", ".join(cleared), run_date)
    finally:
        train.unpersist()
        test.unpersist()
    return {"eval_models": written, **({"cleared": cleared} if cleared else {})}
