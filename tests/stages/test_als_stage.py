"""ALS and evaluate stages on planted-cluster synthetic data, with real Delta tables and MLflow."""

from __future__ import annotations

import datetime as dt

import mlflow
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from watchnext import pipeline, tables
from watchnext.config import Config
from watchnext.constants import (
    TABLE_EVAL_PREDICTIONS,
    TABLE_EVAL_RECS,
    TABLE_EVALUATION,
    TABLE_INTERACTIONS,
    TABLE_ITEM_FACTORS,
    TABLE_USER_FACTORS,
)

pytestmark = [pytest.mark.spark, pytest.mark.delta, pytest.mark.mlflow, pytest.mark.slow]

FAST_ALS = [
    "als.tuning.method=random",
    "als.tuning.n_trials=2",
    "als.tuning.space.rank={low: 8, high: 16, log: false}",
    "als.tuning.space.max_iter={low: 8, high: 10}",
    "als.rank=16",
    "als.max_iter=10",
]


def _cfg(cfg: Config, *overrides: str) -> Config:
    return cfg.with_overrides(*FAST_ALS, *overrides)


def test_pipeline_als_beats_popularity_and_publishes(
    spark: SparkSession, cfg: Config, run_date: dt.date
) -> None:
    c = _cfg(cfg)
    results = pipeline.run_pipeline(spark, c, run_date, ["ingest", "als", "evaluate"])

    ev = tables.read_run_date(spark, c.table_path(TABLE_EVALUATION), run_date)
    ndcg = {r.model: r.value for r in ev.where("metric = 'ndcg' AND k = 10").collect()}
    assert set(ndcg) == {"als", "popularity", "trending"}
    # planted clusters: ALS must find them, popularity cannot (measured ~0.40 vs ~0.10 at 2000 users)
    assert ndcg["als"] > 2 * ndcg["popularity"] and ndcg["als"] > 0.2, ndcg
    metrics = {r.metric for r in ev.where("model = 'als' AND k = 10").collect()}
    assert {
        "ndcg",
        "precision",
        "recall",
        "map",
        "mrr",
        "hit_rate",
        "catalog_coverage",
        "novelty",
        "ild",
        "exposure_gini",
        "long_tail_share",
    } <= metrics

    # factors: one row per user / item that has interactions, rank = the tuned rank, lineage set
    inter = tables.read_run_date(spark, c.table_path(TABLE_INTERACTIONS), run_date)
    uf = tables.read_run_date(spark, c.table_path(TABLE_USER_FACTORS), run_date)
    itf = tables.read_run_date(spark, c.table_path(TABLE_ITEM_FACTORS), run_date)
    assertDataFrameEqual(uf.select("user_id", "user_idx"), inter.select("user_id", "user_idx").distinct())
    assertDataFrameEqual(itf.select("item_id", "item_idx"), inter.select("item_id", "item_idx").distinct())
    rank = results["als"]["params"]["rank"]
    assert uf.where(F.size("features") != rank).count() == 0
    assert {r.run_id for r in uf.select("run_id").distinct().collect()} == {results["als"]["mlflow_run_id"]}

    # the offline lists exclude training items and have exactly K=max(ks) per test user
    recs = tables.read_run_date(spark, c.table_path(TABLE_EVAL_RECS), run_date).where("model = 'als'")
    per_user = recs.groupBy("user_idx").agg(F.count("*").alias("n"), F.countDistinct("item_idx").alias("d"))
    assert per_user.where("n != 20 OR d != 20").count() == 0

    # registry: a version under the candidate alias, promoted to champion by evaluate
    client = mlflow.MlflowClient(tracking_uri=c.mlflow.tracking_uri)
    cand = client.get_model_version_by_alias(c.als.registered_model, "candidate")
    champ = client.get_model_version_by_alias(c.als.registered_model, "champion")
    assert str(cand.version) == str(champ.version) == results["als"]["model_version"]
    trials = client.search_runs(
        [client.get_experiment_by_name(c.mlflow.experiment).experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{results['als']['mlflow_run_id']}'",
    )
    assert len(trials) == 2

    # re-running evaluate for the date replaces its rows with the same values
    before = ev.drop("run_id").toPandas()
    pipeline.run_stage(spark, c, run_date, "evaluate")
    after = tables.read_run_date(spark, c.table_path(TABLE_EVALUATION), run_date).drop("run_id")
    assertDataFrameEqual(after, spark.createDataFrame(before, after.schema), rtol=1e-9)


def test_explicit_als_reports_rmse_against_bias_only(
    spark: SparkSession, cfg: Config, run_date: dt.date
) -> None:
    c = _cfg(
        cfg,
        "als.implicit_prefs=false",
        "als.tuning.enabled=false",
        "als.reg_param=0.1",
        "mlflow.enabled=false",
    )
    pipeline.run_pipeline(spark, c, run_date, ["ingest", "als", "evaluate"])
    preds = tables.read_run_date(spark, c.table_path(TABLE_EVAL_PREDICTIONS), run_date)
    assert {r.model for r in preds.select("model").distinct().collect()} == {"als_biased", "bias_only"}
    ev = tables.read_run_date(spark, c.table_path(TABLE_EVALUATION), run_date)
    rmse = {r.model: r.value for r in ev.where("metric = 'rmse'").collect()}
    assert set(rmse) == {"als_biased", "bias_only"}
    # synthetic ratings carry a planted cluster affinity that biases alone cannot express
    assert rmse["als_biased"] < rmse["bias_only"], rmse


def test_auto_confidence_is_searched_on_counts_and_registered(
    spark: SparkSession, cfg: Config, run_date: dt.date
) -> None:
    """Implicit play counts: als.confidence auto searches the scheme with the other parameters (trial
    0: log), logs why, and the chosen scheme is what the stage returns and registers, and what the
    recommend stage reads back from the registry."""
    from watchnext import tracking
    from watchnext.recommend.registry import model_versions

    c = _cfg(cfg, "ingest.feedback=implicit", "ingest.synthetic.play_counts=true", "als.tuning.n_trials=3")
    assert c.als.confidence == "auto"
    results = pipeline.run_pipeline(spark, c, run_date, ["ingest", "als"])
    summary = results["als"]

    client = mlflow.MlflowClient(tracking_uri=c.mlflow.tracking_uri)
    logged = client.get_run(summary["mlflow_run_id"]).data.params
    lo, hi = float(logged["confidence.value_min"]), float(logged["confidence.value_max"])
    assert lo == 1.0 and hi > 10 * lo  # counts
    assert {k: v for k, v in logged.items() if k.startswith("confidence.") and "value" not in k} == {
        "confidence.configured": "auto",
        "confidence.scheme": "log",
        "confidence.searched": "binary,log,rating",
        "confidence.reason": f"implicit counts (values {lo:g} to {hi:g}): chosen on the validation split",
    }
    trials = client.search_runs(
        [client.get_experiment_by_name(c.mlflow.experiment).experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{summary['mlflow_run_id']}'",
    )
    by_number = sorted(trials, key=lambda r: int(r.data.params["trial"]))
    schemes = [r.data.params["confidence"] for r in by_number]
    assert schemes == ["log", "binary", "rating"], schemes  # each scheme at the configured parameters
    best = max(by_number, key=lambda r: (r.data.metrics["ndcg_at_10"], -int(r.data.params["trial"])))
    chosen = best.data.params["confidence"]
    assert summary["params"]["confidence"] == logged["best.confidence"] == chosen
    tracking.configure(c)
    registered, versions = model_versions(c)
    assert versions["als"] == summary["model_version"] and registered.confidence == chosen
