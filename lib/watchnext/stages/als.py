"""ALS stage: tune on the protocol's train split, score offline, refit on everything, publish factors.

1. Split the run date's interactions with the evaluation protocol (identical in every stage), and
   resolve ``als.confidence`` from them (``auto``: binary for ratings and plain events, searched for
   counts; models/als.py ``resolve_confidence``), logged in one line and as ``confidence.*`` params.
2. Tune rank / regParam / alpha / iterations (and the confidence scheme, for counts) on a validation
   split carved from train (grid, random or Optuna TPE; each trial a nested MLflow run), refit the
   best on all of train (and, side by side, on all interactions: the serving model of step 4).
3. Write that model's top-K for the test users to ``eval_recommendations`` (model ``als``) and its
   factors to ``eval_factors`` (read by the recommend stage's offline blend); for
   explicit ratings also fit the biased model (mu + b_u + b_i + p_u.q_i) and the bias-only baseline
   and write their test-pair predictions to ``eval_predictions``.
4. Refit the best configuration on all interactions, log it with ``mlflow.spark``, register it and
   point the configured alias at the new version, and write ``user_factors`` / ``item_factors``
   (id, idx, features, run_id, run_date) for the serving side.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from watchnext import tables, tracking
from watchnext.concurrency import map_ordered
from watchnext.config import Config
from watchnext.constants import (
    COL_FEATURES,
    COL_ITEM,
    COL_ITEM_IDX,
    COL_RUN_DATE,
    COL_RUN_ID,
    COL_USER,
    COL_USER_IDX,
    TABLE_INTERACTIONS,
    TABLE_ITEM_FACTORS,
    TABLE_ITEM_INDEX,
    TABLE_USER_FACTORS,
    TABLE_USER_INDEX,
)
from watchnext.evaluation import protocol
from watchnext.models.als import (
    AlsParams,
    factor_frames,
    fit_als,
    fit_biased_als,
    predict,
    resolve_confidence,
    top_k_items,
)
from watchnext.models.baselines import fit_biases, predict_biases
from watchnext.models.tuning import tune_from_config

log = logging.getLogger(__name__)

MODEL_NAME = "als"


def run(spark: SparkSession, cfg: Config, run_date: dt.date) -> dict[str, Any]:
    t0 = time.perf_counter()
    a = cfg.als
    interactions = protocol.protocol_frame(
        tables.read_run_date(spark, cfg.table_path(TABLE_INTERACTIONS), run_date)
    ).persist(StorageLevel.MEMORY_AND_DISK)
    train, test = (
        df.persist(StorageLevel.MEMORY_AND_DISK) for df in protocol.split(interactions, cfg.evaluation)
    )
    run_id = tracking.active_run_id()
    summary: dict[str, Any] = {}
    try:
        # -- the confidence scheme: configured, or (auto) from the values ingest stored
        confidence = resolve_confidence(
            interactions,
            a.confidence,
            cfg.ingest.feedback,
            implicit_prefs=a.implicit_prefs,
            tuning=a.tuning.enabled,
            candidates=a.tuning.space.confidence,
        )
        log.info("%s", confidence.describe())
        tracking.log_params(confidence.mlflow_params())
        summary["confidence"] = confidence.describe()
        # -- tune on train, keep the best refit on all of train for the offline scores
        if a.tuning.enabled:
            result = tune_from_config(train, a, log_to_mlflow=cfg.mlflow.enabled, confidence=confidence)
            params = result.best_params
            summary["tuning"] = {
                "method": result.method,
                "trials": len(result.trials),
                f"best_validation_{result.metric}": round(result.best_value, 4),
            }
            tracking.log_metrics({f"best_validation_{result.metric}": result.best_value})
        else:
            params = AlsParams.from_config(a, confidence=confidence.scheme)
        # the offline model (train) and the serving model (every interaction), side by side: same
        # seeds, same factors as one after the other (each fit is one task per step at this size)
        model, full = map_ordered(
            lambda df: fit_als(df, params, num_blocks=a.num_blocks),
            [train, interactions],
            a.tuning.concurrent_trials,
        )
        summary["params"] = params.model_dump()
        tracking.log_params({f"best.{k}": v for k, v in params.model_dump().items()})

        k = max(cfg.evaluation.ks + [cfg.evaluation.k])
        recs = top_k_items(model, test.select(COL_USER_IDX), k, seen=train.select(COL_USER_IDX, COL_ITEM_IDX))
        protocol.write_recommendations(recs, cfg, MODEL_NAME, run_date, run_id)
        # the train-split factors too: the recommend stage's offline blend reads them, not a refit
        protocol.write_factors(*factor_frames(model), cfg, protocol.EVAL_ALS, run_date, run_id)

        if not params.implicit_prefs:
            summary["rating_prediction"] = _explicit_predictions(cfg, run_date, run_id, train, test, params)

        # -- serving model: the same configuration on every interaction
        _write_factors(spark, cfg, run_date, run_id, full)
        summary["model_version"] = _log_model(cfg, full, params)
    finally:
        for df in (interactions, train, test):
            df.unpersist()
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def _explicit_predictions(
    cfg: Config, run_date: dt.date, run_id: str, train: DataFrame, test: DataFrame, params: AlsParams
) -> dict[str, Any]:
    """Biased ALS and the bias-only baseline: test-pair predictions for the evaluate stage."""
    a = cfg.als
    v = cfg.ingest.validation
    pairs = test.select(COL_USER_IDX, COL_ITEM_IDX)
    biased = fit_biased_als(
        train, params, (a.bias_reg_user, a.bias_reg_item), a.bias_iters, num_blocks=a.num_blocks
    )
    protocol.write_predictions(
        predict(biased, pairs, clip=(v.rating_min, v.rating_max)), cfg, "als_biased", run_date, run_id
    )
    biases = fit_biases(train, a.bias_reg_user, a.bias_reg_item, a.bias_iters)
    base = predict_biases(biases, pairs).withColumn(
        "prediction", F.least(F.greatest(F.col("prediction"), F.lit(v.rating_min)), F.lit(v.rating_max))
    )
    protocol.write_predictions(base, cfg, "bias_only", run_date, run_id)
    return {"models": ["als_biased", "bias_only"]}


def _write_factors(spark: SparkSession, cfg: Config, run_date: dt.date, run_id: str, model: Any) -> None:
    users, items = factor_frames(model)
    user_ids = tables.read(spark, cfg.table_path(TABLE_USER_INDEX)).select(COL_USER, COL_USER_IDX)
    item_ids = tables.read(spark, cfg.table_path(TABLE_ITEM_INDEX)).select(COL_ITEM, COL_ITEM_IDX)
    lineage = [F.lit(run_id).alias(COL_RUN_ID), F.lit(run_date).alias(COL_RUN_DATE)]
    note = f"als run_id={run_id}"
    tables.overwrite_run_date(
        users.join(user_ids, COL_USER_IDX).select(COL_USER, COL_USER_IDX, COL_FEATURES, *lineage),
        cfg.table_path(TABLE_USER_FACTORS),
        run_date,
        note,
    )
    tables.overwrite_run_date(
        items.join(item_ids, COL_ITEM_IDX).select(COL_ITEM, COL_ITEM_IDX, COL_FEATURES, *lineage),
        cfg.table_path(TABLE_ITEM_FACTORS),
        run_date,
        note,
    )


def _log_model(cfg: Config, model: Any, params: AlsParams) -> str | None:
    """Log the serving model to the active run and register it under the configured alias."""
    if not cfg.mlflow.enabled:
        return None
    import mlflow

    info = mlflow.spark.log_model(
        model,
        "model",
        registered_model_name=cfg.als.registered_model,
        pip_requirements=tracking.spark_model_requirements(),
    )
    version = str(info.registered_model_version)
    mlflow.MlflowClient().set_registered_model_alias(cfg.als.registered_model, cfg.als.model_alias, version)
    log.info("registered %s version %s as @%s", cfg.als.registered_model, version, cfg.als.model_alias)
    return version
