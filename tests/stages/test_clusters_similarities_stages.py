"""clusters + similarities stages end to end on planted-cluster synthetic data with a cold item:
real Delta tables, a real MLflow store, the evaluate stage scoring the kNN lists."""

from __future__ import annotations

import datetime as dt

import mlflow
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from watchnext import pipeline, tables
from watchnext.config import Config
from watchnext.constants import (
    TABLE_CLUSTERS,
    TABLE_EVALUATION,
    TABLE_INTERACTIONS,
    TABLE_ITEM_CLUSTERS,
    TABLE_ITEM_FACTORS,
    TABLE_ITEM_FEATURES,
    TABLE_ITEM_SIMILARITIES,
    TABLE_ITEMS,
    TABLE_USER_CLUSTER_AFFINITY,
    TABLE_USER_NEIGHBORS,
)
from watchnext.ingest.raw import RawSource
from watchnext.ingest.synthetic import generate
from watchnext.models.neighbors import item_neighbors_from_factors
from watchnext.stages import ingest

pytestmark = [pytest.mark.spark, pytest.mark.delta, pytest.mark.mlflow, pytest.mark.slow]

COLD_ID = "99999"


def _with_cold_item(
    data_source: RawSource, spark: SparkSession, genres: list[str], tags: list[str]
) -> RawSource:
    """The synthetic source plus one catalogue item nobody has watched (a new release)."""
    cold = spark.createDataFrame(
        [(COLD_ID, "Brand New Film (2024)", 2024, genres, tags, None)], data_source.items.schema
    )
    return RawSource(
        name=data_source.name,
        interactions=data_source.interactions,
        items=data_source.items.unionByName(cold),
        timestamp_format=data_source.timestamp_format,
    )


def _ids(df: DataFrame, *cols: str) -> DataFrame:
    return df.select(*cols).distinct()


def test_clusters_and_similarities_publish_tables(
    spark: SparkSession, cfg: Config, run_date: dt.date
) -> None:
    c = cfg.with_overrides(
        "als.tuning.enabled=false",
        "als.rank=16",
        "als.max_iter=8",
        "clusters.k=4",  # the planted number (conftest: 4 clusters)
        "similarity.k=10",
        "similarity.user_k=20",
        "similarity.block_size=50",  # 120 items -> 3 blocks: the blocked path, not one block
    )
    data = generate(spark, c.ingest.synthetic)
    planted = data.item_clusters
    lead = data.clusters.where("cluster_id = 0").first()
    cold_tags = [t for t in lead["tag_vocabulary"][:4]]
    ingest.run(
        spark, c, run_date, source=_with_cold_item(data.source, spark, list(lead["genres"]), cold_tags)
    )
    results = pipeline.run_pipeline(spark, c, run_date, ["als", "clusters", "similarities", "evaluate"])

    items = tables.read_run_date(spark, c.table_path(TABLE_ITEMS), run_date)
    inter = tables.read_run_date(spark, c.table_path(TABLE_INTERACTIONS), run_date)
    assert (
        inter.where(F.col("item_id") == COLD_ID).isEmpty()
        and not items.where(F.col("item_id") == COLD_ID).isEmpty()
    )

    # -- clusters: every item assigned once; purity against the planted clusters; unique labels
    ic = tables.read_run_date(spark, c.table_path(TABLE_ITEM_CLUSTERS), run_date)
    assertDataFrameEqual(ic.select("item_id", "item_idx"), items.select("item_id", "item_idx"))
    joined = ic.join(planted.withColumnRenamed("cluster_id", "planted"), "item_id")
    majority = joined.groupBy("cluster_id", "planted").count()
    best = majority.groupBy("cluster_id").agg(F.max("count").alias("m")).agg(F.sum("m")).first()[0]
    purity = best / joined.count()
    assert purity >= 0.9, purity
    cl = tables.read_run_date(spark, c.table_path(TABLE_CLUSTERS), run_date)
    labels = [r.label for r in cl.collect()]
    assert len(labels) == len(set(labels)) == 4
    sizes = ic.groupBy("cluster_id").agg(F.count("*").cast("long").alias("size"))
    assertDataFrameEqual(cl.select("cluster_id", "size"), sizes)
    # the cold item went to the cluster of the planted cluster it was built like
    cold_cluster = ic.where(F.col("item_id") == COLD_ID).first().cluster_id
    planted0 = (
        joined.where("planted = 0").groupBy("cluster_id").count().orderBy(F.desc("count")).first().cluster_id
    )
    assert cold_cluster == planted0

    aff = tables.read_run_date(spark, c.table_path(TABLE_USER_CLUSTER_AFFINITY), run_date)
    sums = aff.groupBy("user_id").agg(F.round(F.sum("share"), 9).alias("s"), F.count("*").alias("n"))
    expected = _ids(inter, "user_id").select(
        "user_id", F.lit(1.0).alias("s"), F.lit(4).cast("long").alias("n")
    )
    assertDataFrameEqual(sums, expected)
    feats = tables.read_run_date(spark, c.table_path(TABLE_ITEM_FEATURES), run_date)
    assertDataFrameEqual(feats.select("item_id"), items.select("item_id"))

    # -- similarities: per source, ranks 1..n, no self pairs, scores non-increasing
    sims = tables.read_run_date(spark, c.table_path(TABLE_ITEM_SIMILARITIES), run_date)
    assert {r.source for r in sims.select("source").distinct().collect()} == {
        "als",
        "content",
        "cooccurrence",
    }
    assert sims.where("item_idx = neighbor_idx OR rank < 1 OR rank > 10").isEmpty()
    w = sims.groupBy("source", "item_idx").agg(
        F.max("rank").alias("r"), F.count("*").alias("n"), F.countDistinct("neighbor_idx").alias("d")
    )
    assert w.where("r != n OR d != n").isEmpty()
    # als neighbours are exactly the engine's output on the published factors
    factors = tables.read_run_date(spark, c.table_path(TABLE_ITEM_FACTORS), run_date)
    counts = inter.groupBy("item_idx").count().where(f"count >= {c.similarity.min_item_interactions}")
    ref = item_neighbors_from_factors(factors.join(counts, "item_idx", "left_semi"), 10, block_size=1000)
    assertDataFrameEqual(
        sims.where("source = 'als'").select("item_idx", "neighbor_idx", "score", "rank"), ref, rtol=1e-6
    )
    # the cold item: content neighbours only, mostly from the planted cluster it imitates
    cold = sims.where(F.col("item_id") == COLD_ID)
    assert {r.source for r in cold.select("source").distinct().collect()} == {"content"}
    assert cold.count() == 10
    nbr_planted = cold.join(planted.withColumnRenamed("item_id", "neighbor_id"), "neighbor_id")
    assert nbr_planted.where("cluster_id = 0").count() >= 8
    assert sims.where(F.col("neighbor_id") == COLD_ID).select("source").distinct().collect() == [("content",)]

    un = tables.read_run_date(spark, c.table_path(TABLE_USER_NEIGHBORS), run_date)
    assert un.where("user_idx = neighbor_idx").isEmpty()
    assertDataFrameEqual(_ids(un, "user_id"), _ids(inter, "user_id"))

    # -- evaluate scores the kNN lists next to ALS and the baselines
    ev = tables.read_run_date(spark, c.table_path(TABLE_EVALUATION), run_date)
    ndcg = {r.model: r.value for r in ev.where("metric = 'ndcg' AND k = 10").collect()}
    assert {"item_knn", "user_knn", "content_knn", "als", "popularity"} <= set(ndcg)
    assert ndcg["item_knn"] > ndcg["popularity"] and ndcg["user_knn"] > ndcg["popularity"], ndcg

    # -- MLflow: silhouette logged per k tried, cluster listing, registered model
    client = mlflow.MlflowClient(tracking_uri=c.mlflow.tracking_uri)
    run_id = results["clusters"]["mlflow_run_id"]
    assert [m.step for m in client.get_metric_history(run_id, "silhouette")] == [4]
    assert "clusters.txt" in {a.path for a in client.list_artifacts(run_id)}
    version = client.get_model_version(c.clusters.registered_model, results["clusters"]["model_version"])
    assert version.run_id == run_id

    # -- re-running the similarities stage for the date gives the same table
    before = sims.drop("run_id").toPandas()
    pipeline.run_stage(spark, c, run_date, "similarities")
    after = tables.read_run_date(spark, c.table_path(TABLE_ITEM_SIMILARITIES), run_date).drop("run_id")
    assertDataFrameEqual(after, spark.createDataFrame(before, after.schema), rtol=1e-9)


def test_similarities_names_missing_input(spark: SparkSession, cfg: Config, run_date: dt.date) -> None:
    c = cfg.with_overrides("mlflow.enabled=false", "similarity.sources=[content]")
    ingest.run(spark, c, run_date)
    with pytest.raises(FileNotFoundError, match="item_features.*run the clusters stage"):
        pipeline.run_stage(spark, c, run_date, "similarities")


def _thin(source: RawSource) -> RawSource:
    """The source as a catalogue of names (music artists): no genres, tags or year, a title alone."""
    empty = F.array().cast("array<string>")
    items = source.items.select(
        "item_id",
        F.concat(F.lit("Artist "), F.col("item_id")).alias("title"),
        F.lit(None).cast("int").alias("year"),
        empty.alias("genres"),
        empty.alias("tags"),
        "_corrupt_record",
    ).to(source.items.schema)
    return RawSource(source.name, source.interactions, items, source.timestamp_format)


def test_clusters_on_behaviour_for_a_catalogue_of_names(
    spark: SparkSession, cfg: Config, run_date: dt.date
) -> None:
    """clusters.features auto on items without genres or tags: the ALS item factors are clustered, the
    clusters are named by their most popular members, and the planted clusters come back."""
    c = cfg.with_overrides("als.tuning.enabled=false", "als.rank=16", "als.max_iter=8", "clusters.k=4")
    data = generate(spark, c.ingest.synthetic)
    ingest.run(spark, c, run_date, source=_thin(data.source))
    results = pipeline.run_pipeline(spark, c, run_date, ["als", "clusters"])
    summary = results["clusters"]
    assert summary["features"] == "behaviour" and summary["content_coverage"] == 0.0

    cl = tables.read_run_date(spark, c.table_path(TABLE_CLUSTERS), run_date)
    rows = cl.collect()
    labels = [r.label for r in rows]
    assert len(rows) == 4 and len(set(labels)) == 4, labels
    assert all(lab.startswith("Fans of Artist ") for lab in labels), labels
    assert all(list(r.top_genres) == [] and list(r.top_tags) == [] for r in rows)
    ic = tables.read_run_date(spark, c.table_path(TABLE_ITEM_CLUSTERS), run_date)
    joined = ic.join(data.item_clusters.withColumnRenamed("cluster_id", "planted"), "item_id")
    best = (
        joined.groupBy("cluster_id", "planted").count().groupBy("cluster_id").agg(F.max("count").alias("m"))
    )
    purity = best.agg(F.sum("m")).first()[0] / joined.count()
    assert purity >= 0.9, purity  # measured: 1.0 (4 planted clusters, 120 items)
    # item_features keeps the content vectors for the similarities stage, in every mode
    feats = tables.read_run_date(spark, c.table_path(TABLE_ITEM_FEATURES), run_date)
    items = tables.read_run_date(spark, c.table_path(TABLE_ITEMS), run_date)
    assertDataFrameEqual(feats.select("item_id"), items.select("item_id"))

    client = mlflow.MlflowClient(tracking_uri=c.mlflow.tracking_uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.data.params["clusters.features_used"] == "behaviour"
    assert run.data.metrics["content_coverage"] == 0.0
