"""MLflow runs: one parent run per pipeline run, one nested child run per stage.

Every run is tagged with the git commit, the run date, the env and the stage; the parent carries the
fully resolved config as an artifact and as params. With ``mlflow.enabled: false`` the helpers are
no-ops that still yield a run id (``"no-mlflow"``), so stages need not branch on it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from watchnext.config import Config

log = logging.getLogger(__name__)

NO_RUN = "no-mlflow"
_MAX_PARAM_LEN = 6000


def git_commit() -> str:
    """Commit of the code that runs: ``$WATCHNEXT_GIT_COMMIT`` (set by deployments) or ``git``."""
    if os.environ.get("WATCHNEXT_GIT_COMMIT"):
        return os.environ["WATCHNEXT_GIT_COMMIT"]
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def configure(cfg: Config) -> None:
    """Point MLflow at the configured store and experiment (creating local folders as needed)."""
    import mlflow

    uri = cfg.mlflow.tracking_uri
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    if cfg.mlflow.registry_uri:
        mlflow.set_registry_uri(cfg.mlflow.registry_uri)
    if mlflow.get_experiment_by_name(cfg.mlflow.experiment) is None:
        location = cfg.mlflow.artifact_location
        if location and "://" not in location:
            Path(location).mkdir(parents=True, exist_ok=True)
            location = Path(location).resolve().as_uri()
        mlflow.create_experiment(cfg.mlflow.experiment, artifact_location=location)
    mlflow.set_experiment(cfg.mlflow.experiment)


# Airflow sets these for its tasks (and the DAG passes them on to the Spark driver): each stage's run
# names the DAG run it belongs to, so `tags.airflow.dag_run_id = '...'` finds a whole scheduled run.
AIRFLOW_TAGS = {
    "AIRFLOW_CTX_DAG_ID": "airflow.dag_id",
    "AIRFLOW_CTX_DAG_RUN_ID": "airflow.dag_run_id",
    "AIRFLOW_CTX_TASK_ID": "airflow.task_id",
    "AIRFLOW_CTX_TRY_NUMBER": "airflow.try_number",
}


def _tags(cfg: Config, run_date: dt.date, stage: str) -> dict[str, str]:
    tags = {
        "watchnext.stage": stage,
        "watchnext.run_date": run_date.isoformat(),
        "watchnext.env": cfg.env,
        "mlflow.source.git.commit": git_commit(),
    }
    tags.update({tag: os.environ[var] for var, tag in AIRFLOW_TAGS.items() if os.environ.get(var)})
    return tags


@contextlib.contextmanager
def pipeline_run(cfg: Config, run_date: dt.date, name: str = "pipeline") -> Iterator[str]:
    """The parent run of one pipeline run; yields its run id."""
    if not cfg.mlflow.enabled:
        yield NO_RUN
        return
    import mlflow

    configure(cfg)
    with mlflow.start_run(run_name=f"{name} {run_date.isoformat()}", tags=_tags(cfg, run_date, name)) as run:
        _log_config(cfg)
        yield run.info.run_id


@contextlib.contextmanager
def stage_run(cfg: Config, run_date: dt.date, stage: str) -> Iterator[str]:
    """A run for one stage: nested under the active pipeline run, or standalone (spark-submit of one job)."""
    if not cfg.mlflow.enabled:
        yield NO_RUN
        return
    import mlflow

    nested = mlflow.active_run() is not None
    if not nested:
        configure(cfg)
    with mlflow.start_run(
        run_name=f"{stage} {run_date.isoformat()}", nested=nested, tags=_tags(cfg, run_date, stage)
    ) as run:
        if not nested:
            _log_config(cfg)
        yield run.info.run_id


def _log_config(cfg: Config) -> None:
    import mlflow

    params = {k: ("" if v is None else str(v))[:_MAX_PARAM_LEN] for k, v in cfg.flat().items()}
    mlflow.log_params(params)
    mlflow.log_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), "config/resolved.yaml")


# What a logged Spark ML model (ALS, the content + k-means pipeline) needs to be loaded again: the set
# MLflow infers, pinned to the installed versions. Passed as ``pip_requirements`` because inferring it
# reloads the model in a subprocess that starts a second Spark JVM (76 s of the als stage and 124 s of
# the clusters stage on tiny data, measured on a busy 2-core machine).
SPARK_MODEL_PACKAGES = ("mlflow", "pyspark", "numpy", "pandas", "scipy")


def spark_model_requirements() -> list[str]:
    """``pip_requirements`` for ``mlflow.spark.log_model``: the packages above at their installed versions."""
    return [f"{name}=={importlib.metadata.version(name)}" for name in SPARK_MODEL_PACKAGES]


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log to the active run, if any."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def log_params(params: Mapping[str, Any]) -> None:
    """Log params to the active run, if any."""
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_params({k: ("" if v is None else str(v))[:_MAX_PARAM_LEN] for k, v in params.items()})


def active_run_id() -> str:
    """Id of the active MLflow run, or ``"no-mlflow"``: written into output rows as lineage."""
    import mlflow

    run = mlflow.active_run()
    return run.info.run_id if run is not None else NO_RUN


def log_text(text: str, artifact_file: str) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_text(text, artifact_file)


def log_dict(data: Mapping[str, Any], artifact_file: str) -> None:
    import mlflow

    if mlflow.active_run() is not None:
        mlflow.log_dict(dict(data), artifact_file)
