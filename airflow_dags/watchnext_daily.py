"""The daily watchnext batch as an Airflow DAG: one ``spark-submit jobs/<stage>.py`` task per stage.

This file only wires tasks: no Spark, no project imports, no I/O at import time. Deployment facts come
from the environment of the Airflow workers (read once when the file is parsed):

- ``WATCHNEXT_HOME``: the project checkout with ``jobs/`` and ``conf/`` (default: this file's parent).
- ``WATCHNEXT_PYTHON``: the job environment's interpreter; runs ``watchnext config`` and the Spark
  driver (default: ``$WATCHNEXT_HOME/.venv/bin/python``).
- ``WATCHNEXT_EXECUTOR_PYTHON``: the interpreter on the executors (default: ``WATCHNEXT_PYTHON``).
- ``WATCHNEXT_PY_FILES``: the packaged library for the executors (``make package`` writes
  ``dist/watchnext.zip``), passed as ``--py-files``; empty when the executors have it installed.
- ``WATCHNEXT_SPARK_PACKAGES``: Maven coordinates for ``--packages`` (default: the Delta jars matching
  the pinned delta-spark); set it empty when the cluster ships Delta.
- ``WATCHNEXT_SPARK_CONN``: the Airflow connection naming the master (default ``spark_default``).
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, TriggerRule, task

DAG_ID = "watchnext_daily"
HOME = Path(os.environ.get("WATCHNEXT_HOME") or Path(__file__).resolve().parents[1])
PYTHON = os.environ.get("WATCHNEXT_PYTHON") or str(HOME / ".venv" / "bin" / "python")
EXECUTOR_PYTHON = os.environ.get("WATCHNEXT_EXECUTOR_PYTHON") or PYTHON
# spark-submit starts the driver JVM before Python runs: the native BLAS the session factory points
# netlib at (spark.native_blas: auto, the job venv's MKL) must come on its command line, or the stages
# the DAG runs compute ALS with another BLAS than `watchnext run` does (factors differing by 1e-7).
_MKL = sorted((Path(PYTHON).parent.parent / "lib").glob("libmkl_rt.so*"))
NATIVE_BLAS_CONF = (
    {
        "spark.driver.extraJavaOptions": " ".join(
            f"-Ddev.ludovic.netlib.{lib}.nativeLibPath={_MKL[-1]}" for lib in ("blas", "lapack")
        )
    }
    if _MKL
    else {}
)
PY_FILES = os.environ.get("WATCHNEXT_PY_FILES") or None
# pyproject.toml pins delta-spark 4.4.0 on pyspark 4.2: the jars must be that version.
SPARK_PACKAGES = os.environ.get("WATCHNEXT_SPARK_PACKAGES", "io.delta:delta-spark_4.2_2.13:4.4.0") or None
SPARK_CONN = os.environ.get("WATCHNEXT_SPARK_CONN", "spark_default")

# Reaches the Spark driver in every deploy mode (YARN: appMasterEnv, Kubernetes: driverEnv); the jobs
# tag their MLflow runs with it (watchnext.tracking).
RUN_CONTEXT = {
    "AIRFLOW_CTX_DAG_ID": "{{ dag.dag_id }}",
    "AIRFLOW_CTX_DAG_RUN_ID": "{{ run_id }}",
    "AIRFLOW_CTX_TASK_ID": "{{ task.task_id }}",
    "AIRFLOW_CTX_TRY_NUMBER": "{{ ti.try_number }}",
}
# Wall-clock limit of each stage's spark-submit (a hung job fails and is retried, not stalled forever).
STAGE_TIMEOUTS = {
    "ingest": dt.timedelta(hours=1),
    "als": dt.timedelta(hours=3),
    "clusters": dt.timedelta(hours=1),
    "similarities": dt.timedelta(hours=2),
    "ncf": dt.timedelta(hours=4),
    "recommend": dt.timedelta(hours=2),
    "evaluate": dt.timedelta(hours=1),
    "report": dt.timedelta(minutes=30),
}

DOC_MD = """
### watchnext_daily

Daily at 03:00 UTC, one run per day (`catchup` off, one active run at a time). Every stage is
`spark-submit jobs/<stage>.py --run-date {{ ds }} --env <env> [--config F] [--conf k=v]
[--experiment NAME]`, and replaces only its `run_date` partition, so a retry or a re-run of a day is
safe.

```
resolve_config
  -> ingest
       -> als
            -> clusters (on thin metadata they are clustered on the ALS item factors)
                 -> similarities
                      -> ncf_enabled (branch on ncf.enabled)
                           -> ncf -------------+
                           -> ncf_disabled ----+-> recommend (none_failed_min_one_success)
                                                     -> evaluate
                                                          -> report
```

- **resolve_config** builds the stage arguments from the params and checks the resolved config in
  the job environment (`watchnext config --get ncf.enabled`) before any Spark job starts.
- **ncf_enabled** branches on the resolved `ncf.enabled`: `false` (no GPU workers) skips `ncf`.
  `recommend` runs after either path (trigger rule `none_failed_min_one_success`); a failed `ncf`
  still stops it.
- **Params**: `env` (`conf/<env>.yaml`), `config_files` (extra YAML layers), `conf` (`key=value`
  overrides), `dataset` (`""`: the config's source; `synthetic`; a MovieLens name such as `ml-25m`;
  or a MovieLens folder path / URI), `experiment` (`""`: the config's own; a name: enable that one of
  the config's `experiments` for this run, `--experiment NAME` on every stage; docs/experiments.md).
"""

default_args = {
    "owner": "watchnext",
    "retries": 2,
    "retry_delay": dt.timedelta(minutes=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": dt.timedelta(hours=1),
}


def dataset_overrides(dataset: str) -> list[str]:
    """``--conf`` overrides for the ``dataset`` param (plain string work, safe at parse time)."""
    dataset = dataset.strip()
    if not dataset:
        return []
    if dataset == "synthetic":
        return ["ingest.source=synthetic"]
    if "/" in dataset:  # a folder or a URI
        return ["ingest.source=movielens", f"ingest.movielens.path={dataset}", "ingest.movielens.name=null"]
    return ["ingest.source=movielens", f"ingest.movielens.name={dataset}", "ingest.movielens.path=null"]


def stage_args(params: dict, ds: str) -> list[str]:
    """The arguments every stage's ``spark-submit jobs/<stage>.py`` gets (and ``watchnext config``
    checks first): the run date and the params as command-line options (plain string work)."""
    args = ["--run-date", ds, "--env", params["env"]]
    for path in params["config_files"]:
        args += ["--config", path]
    for override in [*dataset_overrides(params["dataset"]), *params["conf"]]:
        args += ["--conf", override]
    if params.get("experiment", "").strip():
        args += ["--experiment", params["experiment"].strip()]
    return args


with DAG(
    dag_id=DAG_ID,
    description="The daily watchnext batch, ingest to report: one spark-submit per stage",
    doc_md=DOC_MD,
    schedule="0 3 * * *",
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # stages extend shared tables (user_index): days run one after another
    dagrun_timeout=dt.timedelta(hours=12),
    default_args=default_args,
    tags=["watchnext", "spark", "recommendations"],
    params={
        "env": Param(
            os.environ.get("WATCHNEXT_ENV", "local"),
            type="string",
            pattern="^[A-Za-z0-9_-]+$",
            description="config environment: conf/<env>.yaml",
        ),
        "config_files": Param(
            [], type="array", items={"type": "string"}, description="extra YAML config layers (--config)"
        ),
        "conf": Param(
            [],
            type="array",
            items={"type": "string", "pattern": "^[A-Za-z0-9_.]+=.*$"},
            description="key.path=value overrides for every stage (--conf)",
        ),
        "dataset": Param(
            "",
            type="string",
            description="'' (the config's ingest source), 'synthetic', a MovieLens name or a folder/URI",
        ),
        "experiment": Param(
            "",
            type="string",
            pattern="^[a-z0-9_-]*$",
            description="'' (the config as it is) or one of its experiments, enabled for this run",
        ),
    },
) as dag:

    @task(multiple_outputs=True, retries=0, execution_timeout=dt.timedelta(minutes=5))
    def resolve_config(params: dict | None = None, ds: str | None = None) -> dict:
        """The stage arguments, checked by the job environment's ``watchnext config`` (fails fast)."""
        import json
        import subprocess

        assert params is not None and ds is not None
        args = stage_args(params, ds)
        cmd = [PYTHON, "-m", "watchnext.cli", "config", "--get", "ncf.enabled", *args]
        env = {**os.environ, "WATCHNEXT_CONF_DIR": str(HOME / "conf")}
        out = subprocess.run(cmd, cwd=HOME, env=env, capture_output=True, text=True, timeout=240)
        if out.returncode != 0:
            raise RuntimeError(f"the watchnext config does not resolve:\n{out.stderr.strip()}")
        return {"args": args, "ncf_enabled": bool(json.loads(out.stdout))}

    @task.branch(retries=0)
    def ncf_enabled(enabled: bool) -> str:
        """``ncf`` when the resolved config enables it, else the ``ncf_disabled`` no-op."""
        return "ncf" if enabled else "ncf_disabled"

    resolved = resolve_config()

    def stage(name: str, **kwargs: object) -> SparkSubmitOperator:
        return SparkSubmitOperator(
            task_id=name,
            conn_id=SPARK_CONN,
            application=str(HOME / "jobs" / f"{name}.py"),
            application_args=resolved["args"],
            name=f"watchnext-{name}-{{{{ ds }}}}",
            packages=SPARK_PACKAGES,
            py_files=PY_FILES,
            conf={
                "spark.pyspark.python": EXECUTOR_PYTHON,
                "spark.pyspark.driver.python": PYTHON,
                "spark.log.level": "WARN",  # the driver's start-up INFO lines add nothing to the task log
                **NATIVE_BLAS_CONF,
            },
            env_vars={
                "WATCHNEXT_CONF_DIR": str(HOME / "conf"),
                "PYTHONHASHSEED": "0",
                # watchnext.session.MKL_ENV, as `watchnext run` sets it for its driver JVM
                "MKL_THREADING_LAYER": "SEQUENTIAL",
                "MKL_CBWR": "AUTO",
                **RUN_CONTEXT,
            },
            execution_timeout=STAGE_TIMEOUTS[name],
            doc_md=f"`spark-submit jobs/{name}.py --run-date {{{{ ds }}}} ...` (see the DAG docs)",
            **kwargs,
        )

    ingest = stage("ingest")
    als = stage("als")
    clusters = stage("clusters")
    similarities = stage("similarities")
    ncf = stage("ncf")
    ncf_disabled = EmptyOperator(task_id="ncf_disabled", doc_md="`ncf.enabled` is false: no NCF scores")
    recommend = stage("recommend", trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS)
    evaluate = stage("evaluate")
    report = stage("report")

    resolved >> ingest >> als >> clusters >> similarities
    similarities >> ncf_enabled(resolved["ncf_enabled"]) >> [ncf, ncf_disabled] >> recommend >> evaluate
    evaluate >> report
