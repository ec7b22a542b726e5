"""Shared fixtures: one local Spark session (with Delta) for the whole test run, and a config whose
lakehouse and MLflow store live in a temporary folder."""

from __future__ import annotations

import os

# Horovod needs Keras 2 (tf-keras); must be set before TensorFlow is imported anywhere.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("PYTHONHASHSEED", "0")

import datetime as dt
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from watchnext.config import Config, SparkConfig, load_config
from watchnext.session import build_session

RUN_DATE = dt.date(2024, 6, 1)
# Seconds an end-to-end test (the Airflow DAG run, the standalone cluster) may take: minutes on a quiet
# 2-core machine, far longer when other work shares it; raise it there with WATCHNEXT_E2E_TIMEOUT.
E2E_TIMEOUT = int(os.environ.get("WATCHNEXT_E2E_TIMEOUT", "2400"))


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    tmp = tmp_path_factory.mktemp("spark")
    cfg = SparkConfig(
        app_name="watchnext-tests",
        master="local[2]",
        shuffle_partitions=4,
        log_level="ERROR",
        driver_memory="3g",
        local_dir=str(tmp / "local"),
        conf={
            "spark.sql.warehouse.dir": str(tmp / "warehouse"),
            "spark.default.parallelism": "4",
            "spark.ui.showConsoleProgress": "false",
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={tmp}",
            # Small Delta commits in tests: skip the per-commit stats collection overhead we don't read.
            "spark.databricks.delta.snapshotPartitions": "2",
        },
    )
    session = build_session(cfg, checkpoint_dir=str(tmp / "checkpoints"))
    yield session
    session.stop()


def local_overrides(tmp_path: Path) -> list[str]:
    """``--conf`` overrides that send every output of the local config into ``tmp_path``."""
    return [
        f"storage.lakehouse={tmp_path / 'lakehouse'}",
        f"storage.checkpoint_dir={tmp_path / 'checkpoints'}",
        f"storage.cache_dir={tmp_path / 'cache'}",
        f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}",
        f"mlflow.artifact_location={tmp_path / 'mlruns' / 'artifacts'}",
        "spark.master=local[2]",
        "ingest.synthetic.n_users=200",
        "ingest.synthetic.n_items=120",
        "ingest.synthetic.n_clusters=4",
        "ingest.synthetic.mean_interactions_per_user=20",
        "ingest.synthetic.partitions=2",
    ]


@pytest.fixture()
def cfg(tmp_path: Path) -> Config:
    """The local config with every output redirected into ``tmp_path``."""
    return load_config(env="local", overrides=local_overrides(tmp_path))


@pytest.fixture()
def run_date() -> dt.date:
    return RUN_DATE


def run_process_group(cmd: Sequence[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """``subprocess.run`` in a process group of its own that is killed as a whole on a timeout or an
    error: spark-submit's JVM, the Python driver it starts and that driver's workers do not outlive
    the test (a plain ``subprocess.run`` kills only the direct child)."""
    with subprocess.Popen(cmd, start_new_session=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
