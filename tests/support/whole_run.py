"""The whole pipeline run once per session as a scheduled Airflow DAG run (``conftest.whole_run``):
its configuration, the Airflow driver that runs it, and the :class:`WholeRun` the tests start from."""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support.common import ROOT, SUPPORT, local_overrides, run_process_group
from watchnext.config import Config, load_config

# The cheapest configuration that still runs every stage of ``pipeline.stages`` and each source of it:
# ALS, clusters, all three similarity sources, NCF (1 epoch, 1 rank), the blend of every source (NCF
# included), evaluate at two cut-offs and the report. The tuners are off (the ALS and recommend stage
# tests run them): this run is the suite's costliest setup and the idempotence test runs it twice.
WHOLE_RUN = [
    # a job subprocess (spark-submit, tests/e2e/test_faults.py) gets the test session's partitioning
    "spark.driver_memory=1g",
    "spark.shuffle_partitions=4",
    'spark.conf={spark.default.parallelism: "4", spark.databricks.delta.snapshotPartitions: "2", '
    'spark.ui.showConsoleProgress: "false"}',
    "als.tuning.enabled=false",
    "als.rank=8",
    "als.max_iter=5",
    "clusters.k=4",
    "clusters.n_init=1",
    "similarity.k=10",
    "similarity.user_k=20",
    "ncf.epochs=1",
    "ncf.num_proc=1",
    "ncf.mf_dim=8",
    "ncf.mlp_layers=[16, 8]",
    "ncf.batch_size=256",
    "ncf.num_negatives=4",
    "ncf.negative_rounds=1",
    "ncf.shards=2",
    "recommend.candidates=30",
    "recommend.tuning.enabled=false",
    "recommend.sources=[als, item, user, cluster, popular, trending, ncf]",
    "recommend.weights={als: 1.0, item: 0.3, user: 0.5, cluster: 0.1, popular: 0.05, trending: 0.05, "
    "ncf: 0.5}",
    "recommend.genre_rows=2",
    "recommend.genre_row_length=5",
    "recommend.because_k=5",
    "evaluation.ks=[5, 10]",
    "report.sample_users=3",
]


AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"
AIRFLOW_DRIVER = SUPPORT / "airflow_driver.py"
DAG_ID = "watchnext_daily"


def airflow(tmp_path: Path, *args: str, timeout: float = 300) -> Any:
    """Run tests/support/airflow_driver.py in the Airflow environment (``.venv-airflow``: protobuf 7 cannot
    share the job environment) with ``AIRFLOW_HOME`` under ``tmp_path`` (sqlite metadata database) and
    the ``spark_default`` connection set to ``local[2]``; ``spark-submit`` and the job interpreter are
    this environment's. Returns the JSON document the driver prints on its last line."""
    if not AIRFLOW_PYTHON.exists():
        pytest.fail(f"{AIRFLOW_PYTHON} is missing: run `make setup` (it builds the Airflow environment)")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "VIRTUAL_ENV", "PYTHONPATH"))},
        "AIRFLOW_HOME": str(tmp_path / "airflow_home"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "airflow_dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "WATCHNEXT_HOME": str(ROOT),
        "WATCHNEXT_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    log_file, result = tmp_path / "airflow-driver.log", tmp_path / "airflow-driver.out"
    with log_file.open("w") as err, result.open("w") as out:  # files, so a long run can be followed
        proc = run_process_group(
            [str(AIRFLOW_PYTHON), str(AIRFLOW_DRIVER), args[0], str(ROOT / "airflow_dags"), *args[1:]],
            cwd=tmp_path, env=env, stdout=out, stderr=err, text=True, timeout=timeout,
        )  # fmt: skip
    tail = (log_file.read_text() + result.read_text())[-6000:]
    assert proc.returncode == 0, f"airflow driver failed ({proc.returncode}); log {log_file}:\n{tail}"
    return json.loads(result.read_text().strip().splitlines()[-1])


@dataclass(frozen=True)
class WholeRun:
    """The whole pipeline run once for RUN_DATE: its config (``overrides`` rebuild it), its output
    folder and what the Airflow driver reported of the DAG run (state, run id, task states, seconds)."""

    cfg: Config
    overrides: list[str]
    tmp: Path
    dag_run: dict[str, Any]

    def copy(self, dest: Path) -> WholeRun:
        """The same run's outputs (lakehouse, MLflow store, checkpoints, report) copied under ``dest``:
        a test that writes to them leaves this run as it was for the others."""
        for name in ("lakehouse", "mlruns", "checkpoints", "reports"):
            if (self.tmp / name).exists():
                shutil.copytree(self.tmp / name, dest / name)
        overrides = whole_run_overrides(dest)
        return WholeRun(load_config(env="local", overrides=overrides), overrides, dest, self.dag_run)


def whole_run_overrides(tmp: Path) -> list[str]:
    return [*local_overrides(tmp), *WHOLE_RUN, f"report.out_dir={tmp / 'reports'}"]


# What a user's config holds: locations relative to the working directory. Each process resolves them
# where it loads the config (watchnext.locations), so a job started in ``tmp`` writes under ``tmp``.
RELATIVE_LOCATIONS = [
    "storage.lakehouse=./lakehouse",
    "storage.checkpoint_dir=./checkpoints",
    "storage.cache_dir=./cache",
    "mlflow.tracking_uri=sqlite:///mlruns/mlflow.db",
    "mlflow.artifact_location=./mlruns/artifacts",
    "report.out_dir=./reports",
]


def relative_whole_run_overrides(tmp: Path) -> list[str]:
    """:func:`whole_run_overrides` with every location relative (the DAG's jobs run in ``tmp``)."""
    return [*whole_run_overrides(tmp), *RELATIVE_LOCATIONS]
