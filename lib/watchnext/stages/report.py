"""Report stage: the run date's HTML report, written to ``report.out_dir`` and logged to MLflow.

Reads the run date's ``evaluation``, ``eval_recommendations``, ``recommendations``, ``interactions``,
``items`` and ``clusters`` (whichever exist: a missing one leaves its section saying which stage
writes it), ``experiment_results`` (an "Experiments" section when the run had an experiment; none
otherwise, as experiments are optional) and the stage runs tagged with the run date from MLflow,
reduces them to small aggregates (``watchnext.report.data``) and renders one self-contained page
(``watchnext.report.html``). The page goes to ``<report.out_dir>/report-<run_date>.html`` and to the
stage's MLflow run as ``report/report.html``. Last of ``pipeline.stages``, so ``watchnext run`` (and
``make run``) ends with it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from watchnext import catalog, locations, tables, tracking
from watchnext.config import Config
from watchnext.constants import (
    COL_ITEM,
    COL_ITEM_IDX,
    COL_MODEL,
    COL_RANK,
    COL_USER,
    TABLE_CLUSTERS,
    TABLE_EVAL_RECS,
    TABLE_EVALUATION,
    TABLE_EXPERIMENT_RESULTS,
    TABLE_INTERACTIONS,
    TABLE_ITEMS,
    TABLE_RECOMMENDATIONS,
)
from watchnext.report import data as report_data
from watchnext.report import html, runs

log = logging.getLogger(__name__)

ARTIFACT = "report/report.html"
PUBLISHED = "published"  # the exposure column of the published `recommendations` lists


def run(spark: SparkSession, cfg: Config, run_date: dt.date) -> dict[str, Any]:
    t0 = time.perf_counter()
    data = collect(spark, cfg, run_date)
    page = html.render(data)
    path = write_page(page, cfg.report.out_dir, run_date)
    tracking.log_text(page, ARTIFACT)
    log.info("report for %s: %s (%d kB)", run_date, path, len(page) // 1024)
    return {
        "path": path,
        "artifact": ARTIFACT if tracking.active_run_id() != tracking.NO_RUN else None,
        "kbytes": len(page) // 1024,
        "missing": data.missing,
        "seconds": round(time.perf_counter() - t0, 2),
    }


def report_path(out_dir: str, run_date: dt.date) -> str:
    return f"{out_dir.rstrip('/')}/report-{run_date.isoformat()}.html"


def write_page(page: str, out_dir: str, run_date: dt.date) -> str:
    """Write the page to a local folder or a filesystem URI (s3://, abfss://, ... via pyarrow.fs)."""
    path = report_path(out_dir, run_date)
    local = locations.local_path(path)
    if local is None:
        from pyarrow import fs

        filesystem, where = fs.FileSystem.from_uri(path)
        with filesystem.open_output_stream(where) as out:
            out.write(page.encode("utf-8"))
        return path
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(page, encoding="utf-8")
    return str(local.resolve())


def collect(spark: SparkSession, cfg: Config, run_date: dt.date) -> html.ReportData:
    """Read the run date's tables and MLflow runs into the report's small frames."""
    ev, words, missing = cfg.evaluation, cfg.domain, {}

    def read(table: str) -> DataFrame | None:
        path = cfg.table_path(table)
        if tables.exists(spark, path):
            df = tables.read_run_date(spark, path, run_date)
            if not df.isEmpty():
                return df
        missing[table] = f"no '{table}' rows for {run_date}: run the {catalog.written_by(table)} stage"
        return None

    interactions, items = read(TABLE_INTERACTIONS), read(TABLE_ITEMS)
    evaluation, eval_recs = read(TABLE_EVALUATION), read(TABLE_EVAL_RECS)
    published, clusters = read(TABLE_RECOMMENDATIONS), read(TABLE_CLUSTERS)
    out: dict[str, Any] = {}
    if interactions is not None:
        row = interactions.agg(
            F.count(F.lit(1)).alias("interactions"),
            F.countDistinct(COL_USER).alias("users"),
            F.countDistinct(COL_ITEM).alias(f"{words.items} {words.verb}"),
        ).head(1)[0]
        out["counts"] = {k: int(v) for k, v in row.asDict().items()}
        if items is not None:
            out["counts"][f"catalogue {words.items}"] = items.count()
    if evaluation is not None:
        out["metrics"] = report_data.metrics_frame(evaluation)
    else:
        missing["metrics"] = missing[TABLE_EVALUATION]
    lists = []
    if eval_recs is not None:
        lists.append(eval_recs.where(F.col(COL_RANK) <= ev.k).select(COL_ITEM_IDX, COL_MODEL))
    if published is not None and items is not None:
        lists.append(published.join(items.select(COL_ITEM, COL_ITEM_IDX), COL_ITEM).select(
            COL_ITEM_IDX, F.lit(PUBLISHED).alias(COL_MODEL)
        ))  # fmt: skip
    if lists and interactions is not None and items is not None:
        recs = lists[0] if len(lists) == 1 else lists[0].unionByName(lists[1])
        out["exposure"] = report_data.popularity_exposure(
            interactions, items, recs, n_buckets=cfg.report.popularity_buckets
        )
        out["exposure_note"] = (
            f"each model's offline top-{ev.k} lists for the test users (eval_recommendations); "
            f"'{PUBLISHED}': the published top-{cfg.recommend.n} of every user (recommendations)"
        )
    else:
        missing["exposure"] = "no recommendation lists or interactions for this run date"
    if clusters is not None:
        out["clusters"] = report_data.cluster_table(clusters)
    else:
        missing["clusters"] = missing[TABLE_CLUSTERS]
    if published is not None:
        users = report_data.sample_users(published, cfg.report.sample_users, cfg.pipeline.seed)
        out["lists"] = report_data.user_lists(published, users)
        out["reasons"] = report_data.reason_mix(published, words)
        if interactions is not None and items is not None:
            out["history"] = report_data.recent_history(interactions, items, users)
    else:
        missing["samples"] = missing[TABLE_RECOMMENDATIONS]
    out.update(_mlflow(cfg, run_date, missing))
    out.update(_experiments(spark, cfg.table_path(TABLE_EXPERIMENT_RESULTS), run_date))
    if cfg.report.scale_results:
        out.update(_scale(cfg.report.scale_results, missing))
    protocol = f"{ev.split} split, train ratio {ev.ratio}, seed {ev.seed}"
    return html.ReportData(
        run_date=run_date, k=ev.k, protocol=protocol, env=cfg.env, domain=words, missing=missing, **out
    )


def _experiments(spark: SparkSession, path: str, run_date: dt.date) -> dict[str, Any]:
    """The run date's experiment results, when there are any; nothing (no section, nothing missing)
    without: most runs have no experiment."""
    if not tables.exists(spark, path):
        return {}
    results = tables.read_run_date(spark, path, run_date)
    if results.isEmpty():
        return {}
    return {"experiments": report_data.experiment_results(results)}


def _scale(path: str, missing: dict[str, str]) -> dict[str, Any]:
    """The finished stages of a scale results JSON; a missing or empty file leaves the section saying so."""
    file = Path(path)
    if not file.is_file():
        missing["scale"] = f"no scale results at {path}: run `make scale`"
        return {}
    frame = report_data.scale_frame(json.loads(file.read_text(encoding="utf-8")))
    if frame.empty:
        missing["scale"] = f"no finished stage in {path}"
        return {}
    return {"scale": frame, "scale_source": str(file)}


def _mlflow(cfg: Config, run_date: dt.date, missing: dict[str, str]) -> dict[str, Any]:
    """The stage runs of ``run_date`` and the links of the page header."""
    if not cfg.mlflow.enabled:
        missing["stages"] = "MLflow is off (mlflow.enabled: false): no stage runs to show"
        return {}
    import mlflow

    from watchnext.pipeline import STAGES

    tracking.configure(cfg)
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(cfg.mlflow.experiment)
    if experiment is None:
        missing["stages"] = f"no MLflow experiment {cfg.mlflow.experiment!r} in {cfg.mlflow.tracking_uri}"
        return {}
    ui = runs.ui_base(cfg.mlflow.tracking_uri, cfg.report.mlflow_ui_url)
    this = tracking.active_run_id()
    info = {
        "tracking URI": cfg.mlflow.tracking_uri,
        "experiment": f"{ui}/#/experiments/{experiment.experiment_id}",
    }
    if not cfg.mlflow.tracking_uri.startswith(("http://", "https://")):
        info["UI"] = f"mlflow ui --backend-store-uri {cfg.mlflow.tracking_uri}"
    if this != tracking.NO_RUN:
        info["run of this report"] = runs.run_link(ui, experiment.experiment_id, this)
    stage_runs = runs.stage_runs(
        client,
        experiment.experiment_id,
        run_date,
        list(STAGES),
        ui,
        current_run_id=this,
    )
    if set(stage_runs.run_id) <= {this}:  # none, or only this report's own run
        missing["stages"] = f"no MLflow runs tagged with run date {run_date} in '{cfg.mlflow.experiment}'"
        return {"mlflow": info}
    return {"mlflow": info, "runs": stage_runs}
