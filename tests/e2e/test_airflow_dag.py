"""The Airflow DAG (airflow_dags/watchnext_daily.py), for real, through Airflow's own environment.

Airflow lives in ``.venv-airflow`` (``make setup``; protobuf 7 cannot share the job environment), so each
test runs tests/support/airflow_driver.py with that interpreter (``support.whole_run.airflow``). The
full run is the session's ``conftest.whole_run`` (the report and fault tests start from it too); its
Delta tables and MLflow runs are read back here with the test session's Spark and MLflow.
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
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from support.common import E2E_TIMEOUT, ROOT, RUN_DATE, local_overrides
from support.whole_run import AIRFLOW_PYTHON, DAG_ID, RELATIVE_LOCATIONS, WholeRun, airflow
from watchnext import catalog, tables
from watchnext.cli import delta_tables
from watchnext.constants import (
    TABLE_BECAUSE_YOU_WATCHED,
    TABLE_CLUSTERS,
    TABLE_EVAL_RECS,
    TABLE_EVALUATION,
    TABLE_GENRE_ROWS,
    TABLE_INTERACTIONS,
    TABLE_ITEM_CLUSTERS,
    TABLE_ITEM_FACTORS,
    TABLE_ITEM_SIMILARITIES,
    TABLE_ITEMS,
    TABLE_NCF_SCORES,
    TABLE_RECOMMENDATIONS,
    TABLE_RECOMMENDATIONS_LATEST,
    TABLE_USER_FACTORS,
    TABLE_USER_INDEX,
    TABLE_USER_NEIGHBORS,
)

pytestmark = [pytest.mark.airflow]

SPARK_STAGES = ["ingest", "als", "clusters", "similarities", "ncf", "recommend", "evaluate", "report"]
# The graph as README.md ("### Airflow") draws it.
EDGES = {
    ("resolve_config", "ingest"),
    ("ingest", "als"),
    ("als", "clusters"),  # clusters may read the ALS item factors (clusters.features)
    ("clusters", "similarities"),
    ("similarities", "ncf_enabled"),
    ("ncf_enabled", "ncf"),
    ("ncf_enabled", "ncf_disabled"),
    ("ncf", "recommend"),
    ("ncf_disabled", "recommend"),
    ("recommend", "evaluate"),
    ("evaluate", "report"),
}
N = 10
# The branch test's config (its Spark stages are marked successful, nothing runs); the full run is
# conftest.whole_run (support.whole_run.WHOLE_RUN).
OVERRIDES = [
    "als.tuning.method=random",
    "als.tuning.n_trials=2",
    "als.tuning.space.rank={low: 4, high: 12, log: true}",
    "als.tuning.space.max_iter={low: 4, high: 6}",
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
    "spark.shuffle_partitions=2",
]
MARK_STAGES_SUCCESS = "^(" + "|".join(SPARK_STAGES) + ")$"


def _run_conf(tmp_path: Path, *extra: str) -> dict[str, Any]:
    return {"conf": [*local_overrides(tmp_path), *OVERRIDES, *extra]}


def test_dagbag_loads_and_the_graph_is_the_documented_one(tmp_path: Path) -> None:
    bag = airflow(tmp_path, "dagbag")
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
    assert dag["params"] == {"env": "local", "config_files": [], "conf": [], "dataset": "", "experiment": ""}
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


# Run in the Airflow environment: the DAG file's stage arguments for some params, and each Spark task's
# spark-submit command line as its hook builds it once resolve_config's XCom ("args") is in place.
RENDER_COMMANDS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import watchnext_daily as d

out = []
for params in json.loads(sys.argv[2]):
    args = d.stage_args(params, "2024-06-01")
    commands = {}
    for name in d.STAGE_TIMEOUTS:
        task = d.dag.get_task(name)
        task.application_args = args  # what resolve_config's XCom renders to
        commands[name] = task._get_hook()._build_spark_submit_command(task.application)
    out.append({"args": args, "commands": commands})
print(json.dumps(out))
"""


def test_experiment_param_reaches_every_stage_command(tmp_path: Path) -> None:
    """The ``experiment`` param becomes ``--experiment NAME`` on every stage's spark-submit command (no DAG
    run), and those arguments resolve in the job environment as resolve_config checks them."""
    base = {"env": "local", "config_files": ["conf/examples/experiment-cap.yaml"], "conf": [], "dataset": ""}
    params = [{**base, "experiment": "diversity-cap"}, {**base, "experiment": ""}]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VIRTUAL_ENV", "PYTHONPATH"))},
        "AIRFLOW_HOME": str(tmp_path / "airflow_home"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "WATCHNEXT_HOME": str(ROOT),
    }
    out = subprocess.run(
        [str(AIRFLOW_PYTHON), "-c", RENDER_COMMANDS, str(ROOT / "airflow_dags"), json.dumps(params)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-4000:]
    enabled, plain = json.loads(out.stdout.strip().splitlines()[-1])

    assert enabled["args"][-2:] == ["--experiment", "diversity-cap"]
    assert "--experiment" not in plain["args"]
    assert sorted(enabled["commands"]) == sorted(SPARK_STAGES)
    for stage, cmd in enabled["commands"].items():
        job = cmd.index(str(ROOT / "jobs" / f"{stage}.py"))
        assert cmd[job + 1 :] == enabled["args"], stage  # the job's arguments, the experiment's included
        assert cmd[0].endswith("spark-submit")

    # the jobs' argument parsing (watchnext.cli, which jobs/<stage>.py call) enables it
    from watchnext.cli import build_parser

    parsed = build_parser().parse_args(["evaluate", *enabled["args"]])
    assert parsed.experiment == "diversity-cap"
    # resolve_config's check, with the same arguments, in the job environment
    check = subprocess.run(
        [sys.executable, "-m", "watchnext.cli", "config", "--get", "experiments", *enabled["args"]],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert [(e["name"], e["enabled"]) for e in json.loads(check.stdout)] == [("diversity-cap", True)]


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
    enabled, disabled, bad = airflow(tmp_path, "test", DAG_ID, json.dumps(runs), timeout=600)

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
@pytest.mark.horovod
@pytest.mark.timeout(E2E_TIMEOUT)  # eight spark-submits
def test_full_dag_run_writes_the_tables_and_mlflow_runs(spark: SparkSession, whole_run: WholeRun) -> None:
    """Every task for real (NCF enabled: the branch's ``ncf`` path), then the outputs read back."""
    result, cfg = whole_run.dag_run, whole_run.cfg
    expected = {t: "success" for t in [*SPARK_STAGES, "resolve_config", "ncf_enabled"]}
    assert result["tasks"] == {**expected, "ncf_disabled": "skipped"}, result
    assert result["state"] == "success", result
    assert list(cfg.pipeline.stages) == SPARK_STAGES  # the DAG runs what `watchnext run` runs

    def read(table: str) -> DataFrame:
        return tables.read(spark, cfg.table_path(table))

    for table in (
        TABLE_INTERACTIONS, TABLE_ITEMS, TABLE_USER_FACTORS, TABLE_ITEM_FACTORS, TABLE_ITEM_CLUSTERS,
        TABLE_CLUSTERS, TABLE_ITEM_SIMILARITIES, TABLE_USER_NEIGHBORS, TABLE_NCF_SCORES,
        TABLE_RECOMMENDATIONS, TABLE_GENRE_ROWS, TABLE_BECAUSE_YOU_WATCHED, TABLE_EVAL_RECS, TABLE_EVALUATION,
    ):  # fmt: skip
        dates = read(table).select("run_date").distinct().collect()
        assert [r.run_date for r in dates] == [RUN_DATE], table  # {{ ds }} became the run date

    # every table of the run is in the catalogue, partitioned as the catalogue says
    written = dict(delta_tables(cfg.storage.lakehouse))
    assert set(written) <= set(catalog.TABLES), set(written) - set(catalog.TABLES)
    for name, path in written.items():
        detail = DeltaTable.forPath(spark, path).detail().first()
        assert tuple(detail.partitionColumns) == catalog.TABLES[name].partition_by, name

    # Exactly N distinct items for every known user; the serving copy is the same rows.
    recs = read(TABLE_RECOMMENDATIONS)
    users = read(TABLE_USER_INDEX).select("user_id")
    per_user = recs.groupBy("user_id").agg(
        F.count("*").alias("rows"), F.countDistinct("item_id").alias("items")
    )
    assertDataFrameEqual(
        per_user,
        users.select("user_id", F.lit(N).cast("long").alias("rows"), F.lit(N).cast("long").alias("items")),
    )
    assertDataFrameEqual(read(TABLE_RECOMMENDATIONS_LATEST), recs)
    # NCF ran in its own spark-submit and the blend took its scores: every user scored, some items from it.
    scored_users = read(TABLE_NCF_SCORES).select("user_idx").distinct()
    assertDataFrameEqual(scored_users, read(TABLE_INTERACTIONS).select("user_idx").distinct())
    assert not recs.where(F.array_contains("sources", "ncf")).isEmpty()
    evaluation = read(TABLE_EVALUATION)
    models = {r.model for r in evaluation.select("model").distinct().collect()}
    assert models == {"popularity", "trending", "als", "item_knn", "content_knn", "user_knn", "ncf", "blend"}
    report = whole_run.tmp / "reports" / f"report-{RUN_DATE.isoformat()}.html"
    assert report.is_file() and "blend" in report.read_text()

    # The serving read as a user types it in that folder, with the same relative locations.
    user = recs.select("user_id").orderBy("user_id").first()[0]
    conf = [a for o in RELATIVE_LOCATIONS for a in ("--conf", o)]
    served = subprocess.run(
        [str(Path(sys.executable).with_name("watchnext")), "recommend", "--user", str(user), *conf],
        cwd=whole_run.tmp, env={**os.environ, "WATCHNEXT_CONF_DIR": str(ROOT / "conf")},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert served.returncode == 0, served.stderr
    lines = served.stdout.splitlines()
    assert lines[0].startswith(f"Top {N} for user {user} (run_date {RUN_DATE.isoformat()}")
    titles = [r.title for r in recs.where(F.col("user_id") == user).orderBy("rank").collect()]
    assert [ln.split(". ", 1)[1].startswith(t) for ln, t in zip(lines[1:], titles, strict=True)] == [True] * N

    # One standalone MLflow run per Spark stage, all finished, tagged with the DAG run and task.
    client = mlflow.MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    all_runs = client.search_runs([exp.experiment_id])
    assert {r.info.status for r in all_runs} == {"FINISHED"}
    top = {r.data.tags["watchnext.stage"]: r for r in all_runs}
    assert sorted(top) == sorted(SPARK_STAGES) and len(top) == len(all_runs)  # no nested run: tuners off
    for stage, r in top.items():  # each names its DAG run and task (watchnext.tracking.AIRFLOW_TAGS)
        tags = r.data.tags
        assert tags["watchnext.run_date"] == RUN_DATE.isoformat()
        assert (tags["airflow.dag_id"], tags["airflow.dag_run_id"]) == (DAG_ID, result["run_id"])
        assert (tags["airflow.task_id"], tags["airflow.try_number"]) == (stage, "1")
    assert {r.run_id for r in recs.select("run_id").distinct().collect()} == {top["recommend"].info.run_id}
    ncf_runs = read(TABLE_NCF_SCORES).select("run_id").distinct().collect()
    assert {r.run_id for r in ncf_runs} == {top["ncf"].info.run_id}

    # The registered ALS model is the one whose factors were published, and it loads back from the registry.
    version = client.get_model_version_by_alias(cfg.als.registered_model, cfg.als.model_alias)
    assert version.run_id == top["als"].info.run_id
    versions = recs.select(F.col("model_versions")["als"].alias("v")).distinct().collect()
    assert [r.v for r in versions] == [str(version.version)]
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(cfg.mlflow.tracking_uri)
    try:
        model = mlflow.spark.load_model(f"models:/{cfg.als.registered_model}@{cfg.als.model_alias}")
    finally:
        mlflow.set_tracking_uri(previous)
    als_model = model.stages[-1] if hasattr(model, "stages") else model
    factors = read(TABLE_USER_FACTORS).select(F.col("user_idx").alias("id"), "features")
    assertDataFrameEqual(als_model.userFactors, factors, rtol=1e-6)
