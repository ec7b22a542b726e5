"""Clusters stage: content features, genre clusters with readable labels, users' cluster affinity.

1. Content features of every item of the run date (``features/content.py``): multi-hot genres, TF-IDF
   tags and title words, release-year bucket, each block L2-normalised and weighted.
2. Genre clusters (``models/clusters.py``): k-means on those vectors, ``k`` fixed or chosen by
   silhouette; labels from the clusters' characteristic genres and tags.
3. Each user's smoothed share of interactions per cluster.

Tables (each replaces exactly its run date in one Delta commit):

* ``item_features``: item_id, item_idx, features (ml Vector), run_id, run_date (the similarities
  stage reads it for content neighbours);
* ``item_clusters``: item_id, item_idx, cluster_id, run_id, run_date;
* ``clusters``: cluster_id, label, size, top_genres, top_tags, run_id, run_date;
* ``user_cluster_affinity``: user_id, user_idx, cluster_id, n_interactions, share, run_id, run_date.

MLflow: the silhouette of every k tried (metric ``silhouette`` with step k), the chosen k, the cluster
table as ``clusters.txt``, and the fitted content + clustering pipeline as a Spark model registered
under ``clusters.registered_model`` (it assigns a cluster to a new item from its metadata).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from watchnext import tables, tracking
from watchnext.config import Config
from watchnext.constants import (
    COL_CLUSTER,
    COL_FEATURES,
    COL_GENRES,
    COL_ITEM,
    COL_ITEM_IDX,
    COL_LABEL,
    COL_RUN_DATE,
    COL_RUN_ID,
    COL_SIZE,
    COL_TAGS,
    COL_TITLE,
    COL_TOP_GENRES,
    COL_TOP_TAGS,
    COL_USER,
    COL_USER_IDX,
    COL_YEAR,
    TABLE_CLUSTERS,
    TABLE_INTERACTIONS,
    TABLE_ITEM_CLUSTERS,
    TABLE_ITEM_FEATURES,
    TABLE_ITEMS,
    TABLE_USER_CLUSTER_AFFINITY,
)
from watchnext.features.content import fit_content_features
from watchnext.models.clusters import fit_clusters, label_clusters, user_cluster_affinity

log = logging.getLogger(__name__)


def run(spark: SparkSession, cfg: Config, run_date: dt.date) -> dict[str, Any]:
    t0 = time.perf_counter()
    run_id = tracking.active_run_id()
    lineage = [F.lit(run_id).alias(COL_RUN_ID), F.lit(run_date).alias(COL_RUN_DATE)]
    note = f"clusters run_id={run_id}"
    items = (
        tables.read_run_date(spark, cfg.table_path(TABLE_ITEMS), run_date)
        .select(COL_ITEM, COL_ITEM_IDX, COL_TITLE, COL_YEAR, COL_GENRES, COL_TAGS)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    summary: dict[str, Any] = {}
    try:
        content = fit_content_features(items, cfg.content)
        summary["feature_blocks"] = {name: size for name, (_, size) in content.blocks.items()}
        tracking.log_params({f"content.block_size.{n}": s for n, s in summary["feature_blocks"].items()})
        features = content.features.persist(StorageLevel.MEMORY_AND_DISK)
        tables.overwrite_run_date(
            features.select(COL_ITEM, COL_ITEM_IDX, COL_FEATURES, *lineage),
            cfg.table_path(TABLE_ITEM_FEATURES),
            run_date,
            note,
        )

        result = fit_clusters(features, cfg.clusters, n_init=cfg.clusters.n_init)
        for k, s in sorted(result.silhouette.items()):
            tracking.log_metrics({"silhouette": s}, step=k)
        tracking.log_metrics(
            {"k": result.k, "best_silhouette": result.silhouette.get(result.k, float("nan"))}
        )
        summary.update(k=result.k, silhouette={k: round(v, 4) for k, v in sorted(result.silhouette.items())})
        assignments = result.assignments.persist(StorageLevel.MEMORY_AND_DISK)
        tables.overwrite_run_date(
            assignments.select(COL_ITEM, COL_ITEM_IDX, COL_CLUSTER, *lineage),
            cfg.table_path(TABLE_ITEM_CLUSTERS),
            run_date,
            note,
        )

        labels = label_clusters(
            assignments, items, n_genres=cfg.clusters.label_genres, n_tags=cfg.clusters.label_tags
        )
        tables.overwrite_run_date(
            labels.select(COL_CLUSTER, COL_LABEL, COL_SIZE, COL_TOP_GENRES, COL_TOP_TAGS, *lineage),
            cfg.table_path(TABLE_CLUSTERS),
            run_date,
            note,
        )
        listing = format_clusters(tables.read_run_date(spark, cfg.table_path(TABLE_CLUSTERS), run_date))
        tracking.log_text(listing, "clusters.txt")
        log.info("clusters (run_date %s):\n%s", run_date, listing)

        interactions = tables.read_run_date(spark, cfg.table_path(TABLE_INTERACTIONS), run_date)
        affinity = user_cluster_affinity(
            interactions.select(COL_USER, COL_USER_IDX, COL_ITEM),
            assignments,
            smoothing=cfg.clusters.affinity_smoothing,
        )
        tables.overwrite_run_date(
            affinity.select(*affinity.columns, *lineage),
            cfg.table_path(TABLE_USER_CLUSTER_AFFINITY),
            run_date,
            note,
        )
        summary["model_version"] = _log_model(cfg, PipelineModel(stages=[content.model, result.model]))
        features.unpersist()
        assignments.unpersist()
    finally:
        items.unpersist()
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def format_clusters(clusters: DataFrame, limit: int = 200) -> str:
    """One line per cluster, largest first: id, size, label."""
    rows = clusters.orderBy(F.desc(COL_SIZE), COL_CLUSTER).limit(limit).collect()
    return "\n".join(f"{r[COL_CLUSTER]:>4} {r[COL_SIZE]:>7}  {r[COL_LABEL]}" for r in rows)


def _log_model(cfg: Config, model: PipelineModel) -> str | None:
    """Log the content + clustering pipeline and register it (it clusters new items from metadata)."""
    if not cfg.mlflow.enabled:
        return None
    import mlflow

    info = mlflow.spark.log_model(
        model,
        "model",
        registered_model_name=cfg.clusters.registered_model,
        pip_requirements=tracking.spark_model_requirements(),
    )
    return str(info.registered_model_version)
