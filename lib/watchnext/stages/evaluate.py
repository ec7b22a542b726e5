"""Evaluate stage: every model and baseline scored on the same test split.

Reads the run date's interactions, recomputes the protocol split, builds the baselines (global
popularity, and trending where the data has time: ``data_profile.py``) itself, and takes each model's
lists from ``eval_recommendations`` and explicit predictions from ``eval_predictions``. Writes
``evaluation`` (run_date, model, metric, k, value, run_id), replacing the run date; logs every value to
MLflow as ``<model>.<metric>``; moves the registry alias ``champion`` to the ALS version when it beats
every baseline on the primary metric.

With an experiment enabled (``cfg.experiment``), it then compares the experiment's variants on the
test users (``evaluation/experiments.py``): each test user's served variant from
``experiment_assignments``, the per-user metrics of the published recipe's lists (``blend``), the
analysis of ``experiments/analysis.py``; writes ``experiment_results`` (replacing the run date), logs
``experiment.<variant>.<metric>.lift`` etc. to MLflow and the verdict to the log and the summary.
Without one, it clears an ``experiment_results`` partition of the run date that an earlier run with
an experiment left, so no stale verdict passes for this run's. docs/experiments.md.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext import catalog, data_profile, tables, tracking
from watchnext.concurrency import map_ordered
from watchnext.config import Config
from watchnext.constants import (
    COL_CLUSTER,
    COL_GENRES,
    COL_ITEM_IDX,
    COL_K,
    COL_METRIC,
    COL_MODEL,
    COL_RANK,
    COL_RUN_DATE,
    COL_RUN_ID,
    COL_SCORE,
    COL_TAGS,
    COL_USER_IDX,
    COL_VALUE,
    TABLE_EVAL_PREDICTIONS,
    TABLE_EVAL_RECS,
    TABLE_EVALUATION,
    TABLE_EXPERIMENT_ASSIGNMENTS,
    TABLE_EXPERIMENT_RESULTS,
    TABLE_INTERACTIONS,
    TABLE_ITEM_CLUSTERS,
    TABLE_ITEMS,
    TABLE_USER_INDEX,
)
from watchnext.evaluation import experiments, protocol
from watchnext.evaluation.beyond_accuracy import feature_table
from watchnext.evaluation.local_metrics import LocalTrainStats, evaluate_all_arrays
from watchnext.evaluation.metrics import TrainStats, evaluate_all, rmse_mae
from watchnext.experiments.spec import ExperimentConfig
from watchnext.models.baselines import popularity_scores, trending_scores
from watchnext.models.cluster_features import has_content
from watchnext.models.topk import topk_from_item_scores

log = logging.getLogger(__name__)

BASELINES = ("popularity", "trending")
EVALUATION_SCHEMA = T.StructType(
    [
        T.StructField(COL_MODEL, T.StringType()),
        T.StructField(COL_METRIC, T.StringType()),
        T.StructField(COL_K, T.IntegerType()),  # null for metrics without a cut-off (rmse, mae)
        T.StructField(COL_VALUE, T.DoubleType()),
    ]
)
_AT_K = re.compile(r"^(?P<metric>.+)_at_(?P<k>\d+)$")


def run(spark: SparkSession, cfg: Config, run_date: dt.date) -> dict[str, Any]:
    t0 = time.perf_counter()
    ev = cfg.evaluation
    exp = cfg.experiment
    results_path = cfg.table_path(TABLE_EXPERIMENT_RESULTS)
    if exp is not None:  # before any Spark job: an experiment that cannot be analysed fails now
        experiments.check_metric(exp)
        assignments, user_index = _experiment_inputs(spark, cfg, exp, run_date)
    elif _clear_experiment_results(spark, results_path, run_date, tracking.active_run_id()):
        # first: whatever happens next, no verdict of an earlier run passes for this one's
        log.info("evaluate: no experiment enabled; cleared the experiment results of %s", run_date)
    interactions = protocol.protocol_frame(
        tables.read_run_date(spark, cfg.table_path(TABLE_INTERACTIONS), run_date)
    )
    train, test = (df.persist(StorageLevel.MEMORY_AND_DISK) for df in protocol.split(interactions, ev))
    items = tables.read_run_date(spark, cfg.table_path(TABLE_ITEMS), run_date).select(
        COL_ITEM_IDX, COL_GENRES, COL_TAGS
    )
    row = items.agg(F.count(F.lit(1)).alias("n"), F.sum(has_content().cast("long")).alias("c")).head(1)[0]
    n_items = int(row["n"])
    coverage = (row["c"] or 0) / n_items if n_items else 0.0
    if data_profile.content_unusable(coverage, cfg.content.min_coverage):
        # Genres on too few items: list diversity over them would be 1 for every list. Over the genre
        # clusters instead (the clusters stage clustered such a catalogue on behaviour).
        log.info(
            "evaluate: ILD over the genre clusters (%.0f%% of the items have a genre or tag)", 100 * coverage
        )
        items = catalog.read_input(
            spark, cfg.table_path(TABLE_ITEM_CLUSTERS), TABLE_ITEM_CLUSTERS, run_date, reader="evaluate"
        ).select(COL_ITEM_IDX, F.col(COL_CLUSTER).alias(COL_GENRES))
    else:
        items = items.select(COL_ITEM_IDX, COL_GENRES)
    ks = sorted({*ev.ks, ev.k})
    seen = train.select(COL_USER_IDX, COL_ITEM_IDX)
    users = test.select(COL_USER_IDX).distinct()

    lists: dict[str, DataFrame] = {
        "popularity": topk_from_item_scores(popularity_scores(train), users, max(ks), seen),
    }
    no_trend = data_profile.trending_unusable(data_profile.time_profile(train), ev.trending_window_days)
    if no_trend:  # a copy of popularity, scored as if it were a baseline of its own
        log.warning("evaluate: the trending baseline is left out: %s", no_trend)
    else:
        lists["trending"] = topk_from_item_scores(
            trending_scores(train, ev.trending_window_days), users, max(ks), seen
        )
    lists.update(_stored(spark, cfg.table_path(TABLE_EVAL_RECS), run_date))
    rows: list[tuple[str, str, int | None, float]] = []
    results: pd.DataFrame | None = None
    stats = TrainStats.of(train)  # the train aggregates every model's novelty and bias read
    try:
        n_users = users.count()
        if n_users * max(ks) * len(lists) <= ev.local_max_rows:
            # small lists: collected and scored on the driver, one job per model, the same values
            scored = _scored_on_driver(lists, test, stats, items, n_items, ev.k, ks)
        else:
            # every K's ranking metrics in one pass, the beyond-accuracy ones at the primary K; recs
            # is read once (evaluate_all persists its top-K cut, not the input); models side by side
            scored = map_ordered(
                lambda recs: evaluate_all(
                    recs, test, ev.k, train=stats, n_items=n_items, item_features=items, ranking_ks=ks
                ),
                lists.values(),
                ev.concurrent_models,
            )
        for model, values in zip(lists, scored, strict=True):
            rows += [(model, *_split_name(name), v) for name, v in values.items()]
        for model, preds in _stored(spark, cfg.table_path(TABLE_EVAL_PREDICTIONS), run_date).items():
            rows += [(model, name, None, v) for name, v in rmse_mae(preds, test).items()]
        if exp is not None:
            served = experiments.served_test_users(test, user_index, assignments, exp)
            per_user = experiments.per_user_metrics(lists[experiments.PUBLISHED_MODEL], test, served, ev.k)
            results = experiments.analyse_experiment(per_user, exp, seed=cfg.pipeline.seed)
    finally:
        stats.release()
        train.unpersist()
        test.unpersist()

    run_id = tracking.active_run_id()
    out = spark.createDataFrame(rows, EVALUATION_SCHEMA).select(
        "*", F.lit(run_id).alias(COL_RUN_ID), F.lit(run_date).alias(COL_RUN_DATE)
    )
    tables.overwrite_run_date(out, cfg.table_path(TABLE_EVALUATION), run_date, f"evaluate run_id={run_id}")
    tracking.log_metrics(
        {f"{m}.{name}" + (f"_at_{k}" if k is not None else ""): v for m, name, k, v in rows if v == v}
    )
    table = format_table(rows, ev.k)
    tracking.log_text(table, "evaluation.txt")
    log.info("evaluation (run_date %s, K=%d):\n%s", run_date, ev.k, table)
    primary = {m: v for m, name, k, v in rows if name == "ndcg" and k == ev.k}
    champion = _promote(cfg, primary)
    summary = {}
    if exp is not None and results is not None:
        summary = _write_experiment(spark, results, exp, results_path, ev.k, run_date, run_id)
    return {
        f"ndcg_at_{ev.k}": {m: round(v, 4) for m, v in sorted(primary.items(), key=lambda kv: -kv[1])},
        "champion_version": champion,
        **({"left_out": {"trending": no_trend}} if no_trend else {}),
        **summary,
        "seconds": round(time.perf_counter() - t0, 2),
        "table": "\n" + table,
    }


def _experiment_inputs(
    spark: SparkSession, cfg: Config, exp: ExperimentConfig, run_date: dt.date
) -> tuple[DataFrame, DataFrame]:
    """``experiment_assignments`` and ``user_index`` (neither is per run date), after checking that the
    published recipe's lists of ``run_date`` exist; ``MissingInputError`` naming the stage to run."""
    where = f"to analyse experiment '{exp.name}'"
    out = []
    for name in (TABLE_EXPERIMENT_ASSIGNMENTS, TABLE_USER_INDEX):
        path = cfg.table_path(name)
        if not tables.exists(spark, path):
            raise catalog.MissingInputError(
                f"evaluate needs the '{name}' table ({path}) {where}; run the "
                f"{catalog.written_by(name)} stage with the experiment enabled first"
            )
        out.append(tables.read(spark, path))
    recs = catalog.read_input(
        spark, cfg.table_path(TABLE_EVAL_RECS), TABLE_EVAL_RECS, run_date, reader="evaluate"
    )
    if recs.where(F.col(COL_MODEL) == experiments.PUBLISHED_MODEL).isEmpty():
        raise catalog.MissingInputError(
            f"evaluate needs the '{experiments.PUBLISHED_MODEL}' lists of run_date {run_date} in "
            f"'{TABLE_EVAL_RECS}' {where}; run the recommend stage with the experiment enabled first"
        )
    return out[0], out[1]


def _write_experiment(
    spark: SparkSession,
    results: pd.DataFrame,
    exp: ExperimentConfig,
    path: str,
    k: int,
    run_date: dt.date,
    run_id: str,
) -> dict[str, Any]:
    """Replace the run date's ``experiment_results``, log to MLflow and the log; the summary entries."""
    out = spark.createDataFrame(experiments.results_rows(results, exp, k), experiments.RESULTS_SCHEMA).select(
        "*", F.lit(run_id).alias(COL_RUN_ID), F.lit(run_date).alias(COL_RUN_DATE)
    )
    tables.overwrite_run_date(out, path, run_date, f"evaluate run_id={run_id} experiment={exp.name}")
    tracking.log_metrics(experiments.mlflow_metrics(results))
    text = experiments.format_results(results)
    tracking.log_text(text, "experiment.txt")
    verdicts = experiments.verdicts(results)
    log.info("experiment %s (run_date %s, K=%d):\n%s", exp.name, run_date, k, text)
    for variant, verdict in verdicts.items():
        log.info(
            "experiment %s: %s against %s on %s: %s", exp.name, variant, exp.control, exp.metric, verdict
        )
    srm_p = float(results["srm_p"].iloc[0]) if len(results) else float("nan")
    return {
        "experiment": {
            "name": exp.name,
            "metric": exp.metric,
            "verdicts": verdicts,
            "srm_p": None if srm_p != srm_p else round(srm_p, 4),
        },
        "notes": [f"experiment {exp.name}: {v}: {d}" for v, d in verdicts.items()],
    }


def _clear_experiment_results(spark: SparkSession, path: str, run_date: dt.date, run_id: str) -> bool:
    """Empty the run date's ``experiment_results`` partition when an earlier run (with an experiment) left
    rows there; True when it did. No table, or no rows: nothing is written."""
    if not tables.exists(spark, path):
        return False
    stale = tables.read_run_date(spark, path, run_date)
    if stale.isEmpty():
        return False
    note = f"evaluate run_id={run_id}: no experiment enabled, results of {run_date} cleared"
    tables.overwrite_run_date(stale.where(F.lit(False)), path, run_date, note)
    return True


def _scored_on_driver(
    lists: dict[str, DataFrame],
    test: DataFrame,
    stats: TrainStats,
    items: DataFrame,
    n_items: int,
    k: int,
    ks: list[int],
) -> list[dict[str, float]]:
    """``evaluate_all`` of every list, each collected once and scored in numpy (local_metrics.py)."""
    truth: pd.DataFrame = test.select(COL_USER_IDX, COL_ITEM_IDX).toPandas()
    local = LocalTrainStats.of(stats)
    features = feature_table(items, COL_ITEM_IDX, COL_GENRES)
    out = []
    for recs in lists.values():
        key = COL_RANK if COL_RANK in recs.columns else COL_SCORE
        pdf: pd.DataFrame = recs.select(COL_USER_IDX, COL_ITEM_IDX, key).toPandas()
        out.append(
            evaluate_all_arrays(
                pdf[COL_USER_IDX].to_numpy(np.int64),
                pdf[COL_ITEM_IDX].to_numpy(np.int64),
                pdf[key].to_numpy(np.float64),
                key_is_rank=key == COL_RANK,
                truth_user=truth[COL_USER_IDX].to_numpy(np.int64),
                truth_item=truth[COL_ITEM_IDX].to_numpy(np.int64),
                k=k,
                ranking_ks=ks,
                stats=local,
                n_items=n_items,
                features=features,
            )
        )
    return out


def _stored(spark: SparkSession, path: str, run_date: dt.date) -> dict[str, DataFrame]:
    """Per-model frames of a (run_date, model)-partitioned evaluation table; {} if it does not exist."""
    if not tables.exists(spark, path):
        return {}
    df = tables.read_run_date(spark, path, run_date)
    models = [r[COL_MODEL] for r in df.select(COL_MODEL).distinct().orderBy(COL_MODEL).collect()]
    return {m: df.where(F.col(COL_MODEL) == m) for m in models}


def _split_name(name: str) -> tuple[str, int | None]:
    m = _AT_K.match(name)
    return (m["metric"], int(m["k"])) if m else (name, None)


def format_table(rows: list[tuple[str, str, int | None, float]], k: int) -> str:
    """Models as rows, the metrics at ``k`` (and rmse/mae) as columns."""
    wanted = [
        "ndcg", "precision", "recall", "map", "mrr", "hit_rate", "catalog_coverage", "novelty",
        "ild", "exposure_gini", "long_tail_share", "rmse", "mae",
    ]  # fmt: skip
    by_model: dict[str, dict[str, float]] = {}
    for model, name, kk, v in rows:
        if kk in (k, None):
            by_model.setdefault(model, {})[name] = v
    cols = [c for c in wanted if any(c in m for m in by_model.values())]
    head = f"{'model':<14}" + "".join(f"{c:>17}" for c in cols)
    lines = [head, "-" * len(head)]
    for model, vals in sorted(by_model.items(), key=lambda kv: -kv[1].get("ndcg", -1.0)):
        cells = "".join(f"{vals[c]:>17.4f}" if c in vals else f"{'':>17}" for c in cols)
        lines.append(f"{model:<14}{cells}")
    return "\n".join(lines)


def _promote(cfg: Config, ndcg: dict[str, float]) -> str | None:
    """Alias ``champion`` -> the ALS candidate version when it beats every baseline."""
    if not cfg.mlflow.enabled or "als" not in ndcg:
        return None
    if any(ndcg["als"] <= ndcg.get(b, float("-inf")) for b in BASELINES):
        log.warning("ALS does not beat the baselines (%s); champion alias unchanged", ndcg)
        return None
    import mlflow

    client = mlflow.MlflowClient()
    try:
        version = client.get_model_version_by_alias(cfg.als.registered_model, cfg.als.model_alias).version
    except mlflow.exceptions.MlflowException:
        return None
    client.set_registered_model_alias(cfg.als.registered_model, "champion", version)
    return str(version)
