"""The stage registry and the pipeline runner (one MLflow parent run, a child run per stage)."""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from pyspark.sql import SparkSession

from watchnext import progress, tracking
from watchnext.config import Config
from watchnext.session import build_session

log = logging.getLogger(__name__)

# stage name -> "module:function" with signature (spark, cfg, run_date) -> summary dict.
# Imported lazily so the CLI starts fast and a stage's heavy imports (TensorFlow) stay in that stage.
STAGES: dict[str, str] = {
    "ingest": "watchnext.stages.ingest:run",
    "als": "watchnext.stages.als:run",
    "clusters": "watchnext.stages.clusters:run",
    "similarities": "watchnext.stages.similarities:run",
    "ncf": "watchnext.stages.ncf:run",
    "recommend": "watchnext.stages.recommend:run",
    "evaluate": "watchnext.stages.evaluate:run",
    "report": "watchnext.stages.report:run",
}

StageFn = Callable[[SparkSession, Config, dt.date], dict[str, Any]]


def stage_function(name: str) -> StageFn:
    if name not in STAGES:
        raise ValueError(f"unknown stage {name!r}; known stages: {', '.join(STAGES)}")
    module, fn = STAGES[name].split(":")
    return getattr(importlib.import_module(module), fn)


def session_for(cfg: Config) -> SparkSession:
    """The session every entry point uses, built from the config."""
    return build_session(cfg.spark, checkpoint_dir=cfg.storage.checkpoint_dir)


def run_stage(spark: SparkSession, cfg: Config, run_date: dt.date, name: str) -> dict[str, Any]:
    """One stage in its own MLflow run (nested when a pipeline run is active)."""
    fn = stage_function(name)
    log.info("stage %s: starting (run_date %s)", name, run_date)
    progress.stage_started(name)
    t0 = time.perf_counter()
    try:
        with tracking.stage_run(cfg, run_date, name) as run_id:
            summary = fn(spark, cfg, run_date)
            tracking.log_metrics({"stage_seconds": time.perf_counter() - t0})
    except BaseException as exc:
        progress.stage_failed(name, time.perf_counter() - t0, exc)
        raise
    summary = {"mlflow_run_id": run_id, **summary}
    seconds = time.perf_counter() - t0
    log.info("stage %s: done in %.1f s", name, seconds)
    progress.stage_finished(name, seconds)
    return summary


def run_pipeline(
    spark: SparkSession, cfg: Config, run_date: dt.date, stages: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Run ``stages`` (default: ``pipeline.stages`` of the config) in order under one parent run."""
    stages = list(stages or cfg.pipeline.stages)
    for s in stages:
        stage_function(s)  # fail on an unknown name before anything runs
    results: dict[str, dict[str, Any]] = {}
    with tracking.pipeline_run(cfg, run_date) as parent:
        for s in stages:
            results[s] = run_stage(spark, cfg, run_date, s)
        results["pipeline"] = {"mlflow_run_id": parent}
    return results
