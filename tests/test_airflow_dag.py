"""The Airflow DAG (airflow_dags/watchnext_daily.py), for real, through Airflow's own environment.

Airflow lives in ``.venv-airflow`` (``make setup``; protobuf 7 cannot share the job environment), so each
test runs tests/airflow_driver.py with that interpreter, ``AIRFLOW_HOME`` in a temporary folder (sqlite
metadata database) and the ``spark_default`` connection set to ``local[2]`` from the environment;
``spark-submit`` is the job environment's. The full run's Delta tables and MLflow runs are then read
back here with the test session's Spark and MLflow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import mlflow
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from conftest import RUN_DATE, local_overrides
from watchnext import tables
from watchnext.config import load_config
from watchnext.constants import (
    TABLE_BECAUSE_YOU_WATCHED,
    TABLE_CLUSTERS,
    TABLE_EVALUATION,
    TABLE_GENRE_ROWS,
    TABLE_INTERACTIONS,
    TABLE_ITEM_CLUSTERS,
    TABLE_ITEM_FACTORS,
    TABLE_ITEM_SIMILARITIES,
    TABLE_ITEMS,
    TABLE_RECOMMENDATIONS,
    TABLE_RECOMMENDATIONS_LATEST,
    TABLE_USER_FACTORS,
    TABLE_USER_INDEX,
    TABLE_USER_NEIGHBORS,
)

pytestmark = [pytest.mark.airflow]

ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"
DRIVER = Path(__file__).with_name("airflow_driver.py")
DAG_ID = "watchnext_daily"
SPARK_STAGES = ["ingest", "als", "clusters", "similarities", "ncf", "recommend", "evaluate"]
# The graph as README.md ("### Airflow") draws it.
EDGES = {
    ("resolve_config", "ingest"),
    ("ingest", "als"),
    ("ingest", "clusters"),
    ("als", "similarities"),
    ("clusters", "similarities"),
    ("similarities", "ncf_enabled"),
    ("ncf_enabled", "ncf"),
    ("ncf_enabled", "ncf_disabled"),
    ("ncf", "recommend"),
    ("ncf_disabled", "recommend"),
    ("recommend", "evaluate"),
}
N = 10
# Small and quick: untuned ALS and blend, NCF off (the branch skips it).
OVERRIDES = [
    "als.tuning.enabled=false",
    "als.rank=8",
    "als.max_iter=6",
    "clusters.k=4",
    "clusters.n_init=2",
    "similarity.k=10",
    "similarity.user_k=20",
    f"recommend.n={N}",
    "recommend.candidates=30",
    "recommend.tuning.enabled=false",
    "recommend.genre_rows=2",
    "recommend.genre_row_length=5",
    "recommend.because_k=5",
    "evaluation.ks=[10]",
    "spark.shuffle_partitions=4",
]
MARK_STAGES_SUCCESS = "^(" + "|".join(SPARK_STAGES) + ")$"


def _airflow(tmp_path: Path, *args: str, timeout: int = 300) -> Any:
    """Run the driver in the Airflow environment; its last stdout line is the JSON result."""
    if not AIRFLOW_PYTHON.exists():
        pytest.fail(f"{AIRFLOW_PYTHON} is missing: run `make setup` (it builds the Airflow environment)")
    home = tmp_path / "airflow_home"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VIRTUAL_ENV", "PYTHONPATH"))},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "airflow_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        # spark-submit and the job interpreter are the job environment's.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "WATCHNEXT_HOME": str(ROOT),
        "WATCHNEXT_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    log, result = tmp_path / "airflow-driver.log", tmp_path / "airflow-driver.out"
    with log.open("w") as err, result.open("w") as out:  # files, so a long run can be followed
        proc = subprocess.run(
            [str(AIRFLOW_PYTHON), str(DRIVER), args[0], str(ROOT / "airflow_dags"), *args[1:]],
            cwd=tmp_path, env=env, stdout=out, stderr=err, text=True, timeout=timeout,
        )  # fmt: skip
    tail = (log.read_text() + result.read_text())[-6000:]
    assert proc.returncode == 0, f"airflow driver failed ({proc.returncode}); log {log}:\n{tail}"
    return json.loads(result.read_text().strip().splitlines()[-1])


def _run_conf(tmp_path: Path, *extra: str) -> dict[str, Any]:
    return {"conf": [*local_overrides(tmp_path), *OVERRIDES, *extra]}


def test_dagbag_loads_and_the_graph_is_the_documented_one(tmp_path: Path) -> None:
    bag = _airflow(tmp_path, "dagbag")
    assert bag["import_errors"] == {}
    assert bag["heavy_modules_loaded"] == []  # the DAG file only wires tasks
    dag = bag["dags"][DAG_ID]
    tasks = dag["tasks"]
    edges = {(t, d) for t, spec in tasks.items() for d in spec["downstream"]}
    # resolve_config also hands every stage its arguments and the branch its flag (XCom edges).
    assert edges == EDGES | {("resolve_config", t) for t in [*SPARK_STAGES, "ncf_enabled"]}
    assert dag["schedule"] == "0 3 * * *" and dag["timetable"] == "CronTriggerTimetable"
    assert dag["catchup"] is False and dag["max_active_runs"] == 1 and dag["has_doc_md"]
    assert {"watchnext", "spark"} <= set(dag["tags"])
    assert dag["params"] == {"env": "local", "config_files": [], "conf": [], "dataset": ""}
    for stage in SPARK_STAGES:
        spec = tasks[stage]
        assert spec["operator"] == "SparkSubmitOperator"
        assert spec["application"] == str(ROOT / "jobs" / f"{stage}.py")
        assert Path(spec["application"]).is_file()
        assert spec["retries"] >= 1 and spec["execution_timeout_s"]
    assert tasks["recommend"]["trigger_rule"].endswith("NONE_FAILED_MIN_ONE_SUCCESS")

    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Airflow") :]
    assert "`0 3 * * *`" in section
    start = section.index("```")
    drawn = set(re.findall(r"[a-z_]+", section[start : section.index("```", start + 3)]))
    assert set(tasks) <= drawn, f"README's graph misses {set(tasks) - drawn}"


def test_branch_follows_the_resolved_config_and_bad_config_fails_first(tmp_path: Path) -> None:
    """Spark stages marked successful (no Spark): the branch, the params and the fail-fast check."""
    runs = [
        {"logical_date": "2024-06-01", "mark_success_pattern": MARK_STAGES_SUCCESS,
         "conf": {**_run_conf(tmp_path, "ncf.enabled=true"), "dataset": "ml-25m"}},
        {"logical_date": "2024-06-02", "conf": _run_conf(tmp_path, "ncf.enabled=false"),
         "mark_success_pattern": MARK_STAGES_SUCCESS},
        {"logical_date": "2024-06-03", "conf": _run_conf(tmp_path, "ncf.enabeld=false"),
         "mark_success_pattern": MARK_STAGES_SUCCESS},
    ]  # fmt: skip
    enabled, disabled, bad = _airflow(tmp_path, "test", DAG_ID, json.dumps(runs), timeout=600)

    assert enabled["state"] == "success", enabled
    assert enabled["tasks"]["ncf"] == "success" and enabled["tasks"]["ncf_disabled"] == "skipped"
    args = enabled["xcom"]["resolve_config.args"]
    assert args[:4] == ["--run-date", "2024-06-01", "--env", "local"]
    assert "ingest.movielens.name=ml-25m" in args and "ncf.enabled=true" in args
    assert enabled["xcom"]["resolve_config.ncf_enabled"] is True

    assert disabled["state"] == "success", disabled
    assert disabled["tasks"]["ncf"] == "skipped" and disabled["tasks"]["ncf_disabled"] == "success"
    assert disabled["tasks"]["recommend"] == "success" and disabled["tasks"]["evaluate"] == "success"

    assert bad["state"] == "failed", bad
    assert bad["tasks"]["resolve_config"] == "failed"
    assert all(bad["tasks"][t] == "upstream_failed" for t in ("ingest", "recommend", "evaluate"))


@pytest.mark.slow
@pytest.mark.spark
@pytest.mark.delta
@pytest.mark.mlflow
@pytest.mark.timeout(3000)  # seven spark-submits; a busy 2-core machine needs more than the default
# Held back from collection (issue 7): written, never yet seen passing end to end on a quiet machine.
# Rename to test_* to run it: .venv/bin/pytest tests/test_airflow_dag.py
def pending_full_dag_run_writes_the_tables_and_mlflow_runs(spark: SparkSession, tmp_path: Path) -> None:
    runs = [{"logical_date": RUN_DATE.isoformat(), "conf": _run_conf(tmp_path, "ncf.enabled=false")}]
    (result,) = _airflow(tmp_path, "test", DAG_ID, json.dumps(runs), timeout=2900)
    print(f"dag.test(): {result['seconds']:.0f} s")
    assert result["state"] == "success", result
    expected = {t: "success" for t in [*SPARK_STAGES, "resolve_config", "ncf_enabled", "ncf_disabled"]}
    expected["ncf"] = "skipped"
    assert result["tasks"] == expected

    cfg = load_config(env="local", overrides=[*local_overrides(tmp_path), *OVERRIDES])
    for table in (
        TABLE_INTERACTIONS, TABLE_ITEMS, TABLE_USER_FACTORS, TABLE_ITEM_FACTORS, TABLE_ITEM_CLUSTERS,
        TABLE_CLUSTERS, TABLE_ITEM_SIMILARITIES, TABLE_USER_NEIGHBORS, TABLE_RECOMMENDATIONS,
        TABLE_GENRE_ROWS, TABLE_BECAUSE_YOU_WATCHED, TABLE_EVALUATION,
    ):  # fmt: skip
        dates = tables.read(spark, cfg.table_path(table)).select("run_date").distinct().collect()
        assert [r.run_date for r in dates] == [RUN_DATE], table  # {{ ds }} became the run date
    recs = tables.read_run_date(spark, cfg.table_path(TABLE_RECOMMENDATIONS), RUN_DATE)
    users = tables.read(spark, cfg.table_path(TABLE_USER_INDEX)).select("user_id")
    per_user = recs.groupBy("user_id").agg(F.countDistinct("item_id").alias("n"))
    assert per_user.filter(f"n != {N}").count() == 0
    assert per_user.select("user_id").exceptAll(users).count() == 0
    assert users.exceptAll(per_user.select("user_id")).count() == 0
    latest = tables.read(spark, cfg.table_path(TABLE_RECOMMENDATIONS_LATEST))
    assert latest.count() == recs.count()
    evaluation = tables.read(spark, cfg.table_path(TABLE_EVALUATION))
    models = {r.model for r in evaluation.select("model").distinct().collect()}
    assert {"als", "blend", "popularity"} <= models

    # One standalone MLflow run per Spark stage that ran (ncf was skipped), all finished, run date tagged.
    client = mlflow.MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs_ = client.search_runs([exp.experiment_id], filter_string="attributes.status = 'FINISHED'")
    top = [r for r in runs_ if "mlflow.parentRunId" not in r.data.tags]
    ran = sorted(s for s in SPARK_STAGES if s != "ncf")
    assert sorted(r.data.tags["watchnext.stage"] for r in top) == ran
    for r in top:  # each stage's run names its DAG run and task (watchnext.tracking.AIRFLOW_TAGS)
        tags = r.data.tags
        assert tags["watchnext.run_date"] == RUN_DATE.isoformat()
        assert (tags["airflow.dag_id"], tags["airflow.dag_run_id"]) == (DAG_ID, result["run_id"])
        assert tags["airflow.task_id"] == tags["watchnext.stage"] and tags["airflow.try_number"] == "1"
    assert recs.select("run_id").distinct().first()[0] in {r.info.run_id for r in runs_}
    assert client.get_model_version_by_alias(cfg.als.registered_model, cfg.als.model_alias) is not None
