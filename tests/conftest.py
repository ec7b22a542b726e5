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
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pyspark.sql import SparkSession

from watchnext.config import Config, SparkConfig, load_config
from watchnext.session import build_session

log = logging.getLogger(__name__)

RUN_DATE = dt.date(2024, 6, 1)
# Seconds an end-to-end test (the Airflow DAG run, the standalone cluster) may take: minutes on a quiet
# 2-core machine, far longer when other work shares it; raise it there with WATCHNEXT_E2E_TIMEOUT.
# A DAG run took 10 min on a quiet machine and 35 min on a slowed one (2026-12-05); CI's own limit is
# 90 min for the whole suite.
E2E_TIMEOUT = int(os.environ.get("WATCHNEXT_E2E_TIMEOUT", "3600"))


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
WHOLE_RUN_MODULES = ("tests/test_airflow_dag.py", "tests/test_report.py", "tests/test_faults.py")


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
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={tmp}",
            # Small Delta commits in tests: skip the per-commit stats collection overhead we don't read.
            "spark.databricks.delta.snapshotPartitions": "2",
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


# The cheapest configuration that still runs every stage of ``pipeline.stages`` and each source of it:
# ALS, clusters, all three similarity sources, NCF (1 epoch, 1 rank), the blend of every source (NCF
# included), evaluate at two cut-offs and the report. The tuners are off (the ALS and recommend stage
# tests run them): this run is the suite's costliest setup and the idempotence test runs it twice.
WHOLE_RUN = [
    # a job subprocess (spark-submit, tests/test_faults.py) gets the test session's partitioning
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


ROOT = Path(__file__).resolve().parents[1]
AIRFLOW_PYTHON = ROOT / ".venv-airflow" / "bin" / "python"
AIRFLOW_DRIVER = Path(__file__).with_name("airflow_driver.py")
DAG_ID = "watchnext_daily"


def airflow(tmp_path: Path, *args: str, timeout: float = 300) -> Any:
    """Run tests/airflow_driver.py in the Airflow environment (``.venv-airflow``: protobuf 7 cannot
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
