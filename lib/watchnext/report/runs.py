"""The MLflow stage runs behind a run date: ids, status, timings and links to the MLflow UI."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from typing import Any

import pandas as pd

MLFLOW_UI_DEFAULT = "http://127.0.0.1:5000"  # where `mlflow ui` listens by default
RUN_COLUMNS = ["stage", "run_id", "status", "start", "seconds", "stage_seconds", "parent_run_id", "link"]


def ui_base(tracking_uri: str, configured: str | None = None) -> str:
    """Base URL of the MLflow UI: the configured one, the tracking server itself, or `mlflow ui`'s."""
    if configured:
        return configured.rstrip("/")
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return MLFLOW_UI_DEFAULT


def run_link(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def stage_runs(
    client: Any,
    experiment_id: str,
    run_date: dt.date,
    stages: Sequence[str],
    ui: str,
    *,
    current_run_id: str | None = None,
) -> pd.DataFrame:
    """The latest MLflow run of each stage (and of the pipeline) tagged with ``run_date``.

    The latest run of a stage is the one whose outputs the run date's tables hold (each stage replaces
    its run date). ``client`` is an ``mlflow.MlflowClient``; ``current_run_id`` is the run rendering the
    page (the report stage's own, still running): it is listed with its seconds so far. Rows follow
    ``stages``, then ``pipeline``.
    """
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`watchnext.run_date` = '{run_date.isoformat()}'",
        order_by=["attributes.start_time DESC"],
        max_results=1000,
    )
    latest: dict[str, Any] = {}
    for r in runs:
        stage = r.data.tags.get("watchnext.stage")
        if stage and stage not in latest:
            latest[stage] = r
    rows = []
    for stage in [*stages, "pipeline"]:
        r = latest.get(stage)
        if r is None:
            continue
        start, end = r.info.start_time, r.info.end_time
        if r.info.run_id == current_run_id and start and not end:
            end = int(time.time() * 1000)  # still running: the seconds so far
        rows.append(
            {
                "stage": stage,
                "run_id": r.info.run_id,
                "status": r.info.status,
                "start": pd.Timestamp(start, unit="ms", tz="UTC") if start else pd.NaT,
                "seconds": (end - start) / 1000.0 if start and end else float("nan"),
                "stage_seconds": r.data.metrics.get("stage_seconds", float("nan")),
                "parent_run_id": r.data.tags.get("mlflow.parentRunId"),
                "link": run_link(ui, experiment_id, r.info.run_id),
            }
        )
    return pd.DataFrame(rows, columns=RUN_COLUMNS)
