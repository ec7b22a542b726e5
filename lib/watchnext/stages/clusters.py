"""Clusters stage: item features, genre clusters with readable labels, users' cluster affinity.

1. Content features of every item of the run date (``features/content.py``): multi-hot genres, TF-IDF
   tags and title words, release-year bucket, each block L2-normalised and weighted. Written in every
   mode (the similarities stage reads them for content neighbours).
2. What to cluster on (``clusters.features``, ``models/cluster_features.py``): ``content`` (those
   vectors), ``behaviour`` (the L2-normalised ALS item factors the als stage published for the run
   date; items without factors go to the "no features" cluster), ``hybrid`` (both, concatenated), or
   ``auto``: behaviour when fewer than ``content.min_coverage`` of the items carry a genre or
   tag, else content. The measured coverage, the threshold and the decision are logged in one line.
3. Genre clusters (``models/clusters.py``): k-means on those vectors, ``k`` fixed or chosen by
   silhouette; labels from the clusters' characteristic genres and tags. When the clusters come from
   behaviour, or the catalogue is thin (coverage below the threshold), a cluster with no characteristic
   genre or tag is named by its ``clusters.label_members`` most popular members: ``"Fans of A, B, C"``.
4. Each user's smoothed share of interactions per cluster.

Tables (each replaces exactly its run date in one Delta commit):

* ``item_features``: item_id, item_idx, features (ml Vector), run_id, run_date (the similarities
  stage reads it for content neighbours);
* ``item_clusters``: item_id, item_idx, cluster_id, run_id, run_date;
* ``clusters``: cluster_id, label, size, top_genres, top_tags, run_id, run_date;
* ``user_cluster_affinity``: user_id, user_idx, cluster_id, n_interactions, share, run_id, run_date.

MLflow: the feature mode used (param ``clusters.features_used``; ``clusters.features`` is the configured
one) and the coverage (metric ``content_coverage``), the silhouette of every k tried (metric
``silhouette`` with step k), the chosen k, the cluster table as ``clusters.txt``, and a Spark model
registered under ``clusters.registered_model`` that assigns a cluster to a new item:

* content: the content + clustering pipeline (from the item's metadata: title, year, genres, tags);
* behaviour: k-means + the renumbering, from a ``features`` column holding the item's L2-normalised ALS
  factor vector (``cluster_features.behaviour_features``);
* hybrid: the same k-means + renumbering, from a ``features`` column holding the hybrid vector
  (``cluster_features.hybrid_features`` of the content model's output and the item's factors).

The summary holds ``features`` (the mode used) and ``content_coverage``.
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

from watchnext import catalog, tables, tracking
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
    TABLE_ITEM_FACTORS,
    TABLE_ITEM_FEATURES,
    TABLE_ITEMS,
    TABLE_USER_CLUSTER_AFFINITY,
)
from watchnext.features.content import fit_content_features
from watchnext.models.cluster_features import (
    behaviour_features,
    choose_features,
    content_coverage,
    hybrid_features,
)
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
    cc = cfg.clusters
    try:
        coverage = content_coverage(items)
        mode = choose_features(cc.features, coverage, cfg.content.min_coverage)
        log.info(
            "clusters: content coverage %.4f (items with a genre or tag), content.min_coverage %g, "
            "features %s -> %s",
            coverage, cfg.content.min_coverage, cc.features, mode,
        )  # fmt: skip
        summary.update(features=mode, content_coverage=round(coverage, 4))
        tracking.log_params({"clusters.features_used": mode})
        tracking.log_metrics({"content_coverage": coverage})
        # "Fans of ..." labels where genres and tags name nothing: behavioural clusters, thin catalogues.
        member_labels = mode != "content" or coverage < cfg.content.min_coverage

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

        if mode == "content":
            clustered_on = features
        else:
            factors = catalog.read_input(
                spark, cfg.table_path(TABLE_ITEM_FACTORS), TABLE_ITEM_FACTORS, run_date,
                reader="clusters", require_rows=True,
            ).select(COL_ITEM_IDX, COL_FEATURES)  # fmt: skip
            behaviour = behaviour_features(items, factors)
            clustered_on = (
                behaviour
                if mode == "behaviour"
                else hybrid_features(features, behaviour, behaviour_weight=cc.behaviour_weight)
            ).persist(StorageLevel.MEMORY_AND_DISK)
        result = fit_clusters(clustered_on, cc, n_init=cc.n_init)
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

        interactions = tables.read_run_date(spark, cfg.table_path(TABLE_INTERACTIONS), run_date)
        labels = label_clusters(
            assignments,
            items,
            n_genres=cc.label_genres,
            n_tags=cc.label_tags,
            interactions=interactions.select(COL_USER, COL_ITEM) if member_labels else None,
            n_members=cc.label_members,
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

        affinity = user_cluster_affinity(
            interactions.select(COL_USER, COL_USER_IDX, COL_ITEM),
            assignments,
            smoothing=cc.affinity_smoothing,
        )
        tables.overwrite_run_date(
            affinity.select(*affinity.columns, *lineage),
            cfg.table_path(TABLE_USER_CLUSTER_AFFINITY),
            run_date,
            note,
        )
        # content: from an item's metadata; behaviour / hybrid: from its features vector (docstring)
        model = PipelineModel(stages=[content.model, result.model]) if mode == "content" else result.model
        summary["model_version"] = _log_model(cfg, model)
        features.unpersist()
        clustered_on.unpersist()
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
    """Log the clustering model and register it (what it takes: the module docstring)."""
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
