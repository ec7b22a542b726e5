"""Shared fixtures: one local Spark session (with Delta) for the whole test run, and a config whose
lakehouse and MLflow store live in a temporary folder."""

from __future__ import annotations

import os

# Horovod needs Keras 2 (tf-keras); must be set before TensorFlow is imported anywhere.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("PYTHONHASHSEED", "0")

import contextlib
import datetime as dt
import json
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from support.common import E2E_TIMEOUT, RUN_DATE, local_overrides
from support.whole_run import DAG_ID, WholeRun, airflow, relative_whole_run_overrides
from watchnext.config import Config, SparkConfig, load_config
from watchnext.session import build_session

log = logging.getLogger(__name__)


def _import_spark_connect_like_a_script() -> None:
    """pytest-xdist workers run under execnet, whose ``__main__`` has neither ``__spec__`` nor
    ``__file__``. pyspark's Spark Connect check then takes the process for a doctest run and calls
    ``sys.exit(0)`` (``pyspark/sql/connect/utils.py``), e.g. inside ``mlflow.spark.log_model``. Import
    the module once as a script would; if that fails, later imports fail the same way (ImportError,
    which mlflow expects)."""
    main = sys.modules["__main__"]
    if getattr(main, "__spec__", None) is not None or hasattr(main, "__file__"):
        return
    main.__file__ = __file__
    try:
        import pyspark.ml.connect  # noqa: F401
    except ImportError:
        sys.modules["pyspark.ml.connect"] = None  # type: ignore[assignment]
    finally:
        del main.__file__


_import_spark_connect_like_a_script()

# make test runs on pytest-xdist workers (--dist loadfile): a module's tests stay on one worker, so
# its module fixtures are built once. These modules start from the session's DAG run (``whole_run``)
# and share one worker, so the DAG runs once; with --no-loadscope-reorder (collection order, not the
# most tests first) that longest unit starts first.
WHOLE_RUN_MODULES = ("tests/e2e/test_airflow_dag.py", "tests/e2e/test_report.py", "tests/e2e/test_faults.py")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByModule(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return "whole_run" if module in WHOLE_RUN_MODULES else module

    return ByModule(config, log)


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
            # the embedded default's collector (conf/local.yaml): less CPU than G1 on 2 cores
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={tmp} -XX:+UseParallelGC",
            # Small Delta commits in tests: skip the per-commit stats collection overhead we don't read.
            "spark.databricks.delta.snapshotPartitions": "2",
            # The embedded default's code paths (conf/local.yaml): interpreted projections, no whole-stage
            # code generation; on test-sized frames generating each task's Java costs more than it saves.
            "spark.sql.codegen.wholeStage": "false",
            "spark.sql.codegen.factoryMode": "NO_CODEGEN",
            # Memory pages sized for test data. Spark's default (heap x 0.6 / cores / 16, to a power of
            # 2: 64 MiB here) gives every small aggregate, sort and cached block its own 64 MiB page: the
            # heap after GC at the end of an in-process recommend stage was 1.1-1.6 GiB with it and
            # 0.36 GiB with 2 MiB pages, and a CI run ran out of heap broadcasting a small table.
            "spark.buffer.pageSize": "2m",
        },
    )
    session = build_session(cfg, checkpoint_dir=str(tmp / "checkpoints"))
    yield session
    session.stop()


@pytest.fixture()
def cfg(tmp_path: Path) -> Config:
    """The local config with every output redirected into ``tmp_path``."""
    return load_config(env="local", overrides=local_overrides(tmp_path))


@pytest.fixture()
def run_date() -> dt.date:
    return RUN_DATE


@pytest.fixture(scope="session")
def whole_run(tmp_path_factory: pytest.TempPathFactory) -> WholeRun:
    """One scheduled run of the whole pipeline: the Airflow DAG (airflow_dags/watchnext_daily.py) run
    for RUN_DATE with ``dag.test()``, every task for real (one spark-submit per stage of
    ``pipeline.stages``, NCF and the report included) on the small synthetic data. The DAG test checks
    its run, the report test renders its page, the fault and idempotence tests start from a copy of its
    outputs: the most expensive setup of the suite, so it runs once."""
    tmp = tmp_path_factory.mktemp("whole_run")
    # Relative locations, as in conf/base.yaml: every spark-submit job of the DAG runs in ``tmp`` (the
    # Airflow driver's working directory), not in the checkout, and resolves them there.
    overrides = relative_whole_run_overrides(tmp)
    runs = [{"logical_date": RUN_DATE.isoformat(), "conf": {"conf": overrides}}]
    t0 = time.perf_counter()
    (result,) = airflow(tmp, "test", DAG_ID, json.dumps(runs), timeout=E2E_TIMEOUT - 60)
    timings = ", ".join(f"{t} {s:.0f} s" for t, s in result["task_seconds"].items())
    log.warning("whole pipeline, one DAG run: %.0f s (%s)", time.perf_counter() - t0, timings)
    with contextlib.chdir(tmp):  # this process resolves the same relative locations the same way
        cfg = load_config(env="local", overrides=overrides)
    assert cfg.storage.lakehouse == f"file://{tmp / 'lakehouse'}"
    return WholeRun(cfg, overrides, tmp, result)
