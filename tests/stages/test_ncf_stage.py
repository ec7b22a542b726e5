"""The NCF stage end to end: ingest -> ncf (2 Horovod ranks) -> evaluate, real Delta and MLflow."""

from __future__ import annotations

import datetime as dt

import mlflow
import pytest
from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from watchnext import pipeline, tables
from watchnext.config import Config
from watchnext.constants import TABLE_EVAL_RECS, TABLE_EVALUATION, TABLE_INTERACTIONS, TABLE_NCF_SCORES
from watchnext.models.ncf_score import score_pairs

pytestmark = [pytest.mark.spark, pytest.mark.delta, pytest.mark.mlflow, pytest.mark.horovod, pytest.mark.slow]

SMALL_NCF = [
    "ncf.epochs=6",
    "ncf.num_proc=2",
    "ncf.mf_dim=8",
    "ncf.mlp_layers=[16, 8]",
    "ncf.batch_size=64",
    "ncf.learning_rate=0.005",
    "ncf.l2=0.0001",
    "ncf.negative_rounds=3",
    "ncf.num_negatives=4",
    "ncf.shards=4",
    "recommend.candidates=30",
    "ncf.publish_scores=true",  # the default publishes only when the blend reads them
]


def test_ncf_stage_publishes_scores_and_offline_lists(
    spark: SparkSession, cfg: Config, run_date: dt.date
) -> None:
    c = cfg.with_overrides(*SMALL_NCF)
    results = pipeline.run_pipeline(spark, c, run_date, ["ingest", "ncf", "evaluate"])
    summary = results["ncf"]
    assert summary["offline"]["num_proc"] == 2 and summary["serving"]["epochs"] == 6

    # ncf_scores: every known user, min(M, unseen items) distinct unseen items ranked 1..n by score
    scores = tables.read_run_date(spark, c.table_path(TABLE_NCF_SCORES), run_date)
    inter = tables.read_run_date(spark, c.table_path(TABLE_INTERACTIONS), run_date)
    seen = inter.select("user_idx", "item_idx").distinct()
    n_items = summary["n_items"]
    expected_counts = seen.groupBy("user_idx").agg(
        F.least(F.lit(30), F.lit(n_items) - F.count("*")).cast("long").alias("n")
    )
    got_counts = scores.groupBy("user_idx").agg(F.count("*").alias("n"))
    assertDataFrameEqual(got_counts, expected_counts)
    assert scores.join(seen, ["user_idx", "item_idx"]).count() == 0
    w = F.row_number().over(Window.partitionBy("user_idx").orderBy(F.desc("score"), "item_idx"))
    assert scores.withColumn("_r", w).where("_r != rank").count() == 0  # ranks follow the scores
    # the scores are the published model's probabilities
    rescored = score_pairs(scores.select("user_idx", "item_idx"), summary["model_dir"], col_score="score")
    assertDataFrameEqual(rescored, scores.select("user_idx", "item_idx", "score"), rtol=1e-6)
    run_ids = {r.run_id for r in scores.select("run_id").distinct().collect()}
    assert run_ids == {summary["mlflow_run_id"]}

    # offline lists for the shared evaluator, scored beside the baselines: the planted clusters are
    # learnable, popularity cannot find them
    recs = tables.read(spark, c.table_path(TABLE_EVAL_RECS)).where("model = 'ncf'")
    assert recs.groupBy("user_idx").count().where("count != 20").count() == 0  # max(ks) = 20 each
    ev = tables.read_run_date(spark, c.table_path(TABLE_EVALUATION), run_date)
    ndcg = {r.model: r.value for r in ev.where("metric = 'ndcg' AND k = 10").collect()}
    assert ndcg["ncf"] > 1.5 * ndcg["popularity"], ndcg

    # one MLflow run for the stage, rank 0's per-epoch metrics in it once per epoch
    client = mlflow.MlflowClient(tracking_uri=c.mlflow.tracking_uri)
    run_id = summary["mlflow_run_id"]
    for key in ("offline.loss", "offline.val_hr_at_10", "offline.val_ndcg_at_10", "serving.loss"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(6)), key
    losses = [
        m.value for m in sorted(client.get_metric_history(run_id, "serving.loss"), key=lambda m: m.step)
    ]
    assert losses[-1] < losses[0]
    assert client.get_run(run_id).data.params["serving.num_proc"] == "2"


def test_serving_model_only_when_the_blend_reads_it(cfg: Config) -> None:
    """``ncf_scores`` costs a second Horovod training: by default it is made only for the blend."""
    assert "ncf" not in cfg.recommend.sources and not cfg.ncf_publishes_scores
    assert cfg.with_overrides("recommend.sources=[als, ncf, popular]").ncf_publishes_scores
    assert cfg.with_overrides("ncf.publish_scores=true").ncf_publishes_scores
    forced_off = cfg.with_overrides("recommend.sources=[als, ncf, popular]", "ncf.publish_scores=false")
    assert not forced_off.ncf_publishes_scores


def test_ncf_stage_disabled_is_skipped(spark: SparkSession, cfg: Config, run_date: dt.date) -> None:
    c = cfg.with_overrides("ncf.enabled=false")
    results = pipeline.run_pipeline(spark, c, run_date, ["ncf"])
    assert results["ncf"]["skipped"] is True
    assert not tables.exists(spark, c.table_path(TABLE_NCF_SCORES))
