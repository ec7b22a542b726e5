"""The jobs on a real Spark standalone cluster: a master and two workers on this machine, started with the
scripts that ship with Spark (``sbin/spark-daemon.sh``), every address on the loopback interface.

The library goes to the executors only as the packaged wheel (``--py-files``): their interpreter is a
virtual environment that sees the job environment's third-party packages but not the source tree, so an
executor that needed anything from the checkout, driver-only state, a local-mode shortcut or a closure
that does not pickle would fail here. Each job is ``spark-submit --master spark://127.0.0.1:PORT
jobs/<stage>.py`` from a working directory outside the checkout, with the Delta jars from
``--packages`` (as on a cluster without Delta); the outputs are compared with the same stages run in
local mode by this test session, or checked for properties that must hold exactly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import pyspark
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from support.common import E2E_TIMEOUT, RUN_DATE, local_overrides, run_process_group
from watchnext import pipeline, tables
from watchnext.config import Config, load_config
from watchnext.constants import (
    TABLE_EVAL_RECS,
    TABLE_INTERACTIONS,
    TABLE_ITEM_FACTORS,
    TABLE_ITEM_INDEX,
    TABLE_ITEM_SIMILARITIES,
    TABLE_ITEMS,
    TABLE_REJECTS,
    TABLE_USER_FACTORS,
    TABLE_USER_INDEX,
    TABLE_USER_NEIGHBORS,
)

pytestmark = [pytest.mark.cluster, pytest.mark.spark, pytest.mark.delta, pytest.mark.mlflow, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SPARK_HOME = Path(pyspark.__file__).resolve().parent
JOB_PYTHON = Path(sys.executable)
# The Delta jars of the pinned delta-spark (pyproject.toml), resolved by spark-submit's Ivy.
DELTA_PACKAGE = "io.delta:delta-spark_4.2_2.13:4.4.0"
MASTER_CLASS = "org.apache.spark.deploy.master.Master"
WORKER_CLASS = "org.apache.spark.deploy.worker.Worker"
N_WORKERS = 2
# The stages with the most executor-side Python (the synthetic generator, validation, the ALS
# top-K blocks, the blocked similarity engine in mapInPandas); tests/e2e/test_airflow_dag.py runs every
# stage in local mode through spark-submit, and the time budget of `make test` keeps this list short.
STAGES = ["ingest", "als", "similarities"]
# Small and untuned: the point is where the code runs, not the model.
OVERRIDES = [
    "als.tuning.enabled=false",
    "als.rank=8",
    "als.max_iter=6",
    "als.num_blocks=2",
    "similarity.k=10",
    "similarity.user_k=20",
    "similarity.sources=[als,cooccurrence]",  # content needs the clusters stage's item_features
    "ncf.enabled=false",
    "spark.shuffle_partitions=2",
]

PROBE = """
import json, os, sys
from pyspark.sql import SparkSession
import watchnext

def where(_):
    import os, sys, watchnext
    yield (os.getpid(), watchnext.__file__, sys.executable, os.getcwd())

spark = SparkSession.builder.getOrCreate()
sc = spark.sparkContext
rows = sc.parallelize(range(8), 8).mapPartitions(where).collect()
print(json.dumps({"master": sc.master, "driver": watchnext.__file__, "executors": rows}))
spark.stop()
"""


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@dataclass
class Standalone:
    master_url: str
    ui_url: str
    env: dict[str, str]
    pid_dir: Path
    log_dir: Path
    started: list[tuple[str, int]] = field(default_factory=list)

    def daemon(self, action: str, cls: str, instance: int, *args: str) -> None:
        cmd = [str(SPARK_HOME / "sbin" / "spark-daemon.sh"), action, cls, str(instance), *args]
        subprocess.run(cmd, env=self.env, check=True, capture_output=True, timeout=120)

    def pids(self) -> list[int]:
        out = []
        for f in self.pid_dir.glob("*.pid"):
            try:
                out.append(int(f.read_text().strip()))
            except ValueError:
                pass
        return out

    def status(self) -> dict:
        with urllib.request.urlopen(f"{self.ui_url}/json/", timeout=5) as r:
            return json.load(r)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standalone]:
    """A master and two 1-core workers on 127.0.0.1, stopped (and their JVMs ended) however the test ends."""
    tmp = tmp_path_factory.mktemp("standalone")
    master_port, master_ui, *worker_ports = _free_ports(2 + 2 * N_WORKERS)
    conf_dir = tmp / "conf"
    conf_dir.mkdir()
    env = {
        **os.environ,
        "SPARK_HOME": str(SPARK_HOME),
        "SPARK_CONF_DIR": str(conf_dir),  # nothing from a spark-defaults.conf elsewhere
        "SPARK_LOG_DIR": str(tmp / "logs"),
        "SPARK_PID_DIR": str(tmp / "pids"),
        "SPARK_IDENT_STRING": f"watchnext-test-{os.getpid()}",
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_DAEMON_MEMORY": "512m",
    }
    env.pop("SPARK_NO_DAEMONIZE", None)
    sa = Standalone(
        master_url=f"spark://127.0.0.1:{master_port}",
        ui_url=f"http://127.0.0.1:{master_ui}",
        env=env,
        pid_dir=tmp / "pids",
        log_dir=tmp / "logs",
    )
    try:
        host = ["--host", "127.0.0.1"]
        sa.daemon("start", MASTER_CLASS, 1, *host, "--port", str(master_port), "--webui-port", str(master_ui))
        sa.started.append((MASTER_CLASS, 1))
        for i in range(N_WORKERS):
            port, ui = worker_ports[2 * i], worker_ports[2 * i + 1]
            work = tmp / f"work-{i + 1}"
            sa.daemon(
                "start", WORKER_CLASS, i + 1, *host, "--port", str(port), "--webui-port", str(ui),
                "--cores", "1", "--memory", "1536m", "--work-dir", str(work), sa.master_url,
            )  # fmt: skip
            sa.started.append((WORKER_CLASS, i + 1))
        deadline = time.monotonic() + 180
        alive = 0
        while time.monotonic() < deadline:
            try:
                alive = sum(w["state"] == "ALIVE" for w in sa.status()["workers"])
            except OSError:
                alive = 0
            if alive == N_WORKERS:
                break
            time.sleep(1)
        if alive != N_WORKERS:
            logs = "\n".join(f"== {p.name}\n{p.read_text()[-3000:]}" for p in sorted(sa.log_dir.glob("*")))
            pytest.fail(f"standalone cluster did not come up ({alive} workers alive):\n{logs}")
        yield sa
    finally:
        for cls, instance in reversed(sa.started):
            try:
                sa.daemon("stop", cls, instance)
            except (subprocess.SubprocessError, OSError):
                pass
        for pid in sa.pids():  # spark-daemon.sh stop failed or left the JVM running: end it by its id
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library as its wheel (``make package``), renamed .zip so Spark puts it on the PYTHONPATH."""
    dist = tmp_path_factory.mktemp("dist")
    build = [str(JOB_PYTHON), "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run([*build, "-w", str(dist), str(ROOT)], check=True, timeout=300)
    (wheel,) = dist.glob("watchnext-*.whl")
    return Path(shutil.copy(wheel, dist / "watchnext.zip"))


@pytest.fixture(scope="module")
def executor_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An interpreter with the job environment's packages but without watchnext (no editable .pth)."""
    venv = tmp_path_factory.mktemp("executor-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--clear", str(venv)], check=True)
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])  # the job venv's site-packages
    (target,) = venv.glob("lib/python*/site-packages")
    # A plain path entry: the .pth files inside it (watchnext's editable install) are not processed.
    (target / "job-venv.pth").write_text(f"{site}\n")
    python = venv / "bin" / "python"
    check = subprocess.run(
        [str(python), "-c", "import importlib.util as u, pandas, pyarrow; print(u.find_spec('watchnext'))"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert check.stdout.strip() == "None", "the executor interpreter must not see the source tree"
    return python


def _submit(
    cluster: Standalone, package: Path, executor_python: Path, workdir: Path, app: str, *app_args: str
) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(JOB_PYTHON.parent / "spark-submit"),
        "--master", cluster.master_url,
        "--deploy-mode", "client",
        "--packages", DELTA_PACKAGE,
        "--py-files", str(package),
        "--driver-memory", "2g",
        "--executor-memory", "1g",
        "--conf", f"spark.pyspark.python={executor_python}",
        "--conf", f"spark.pyspark.driver.python={JOB_PYTHON}",
        "--conf", "spark.driver.host=127.0.0.1",
        "--conf", "spark.driver.bindAddress=127.0.0.1",
        # Every job waits for both executors, so work really is spread over the two workers.
        "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
        "--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=120s",
        "--conf", "spark.log.level=WARN",
        app, *app_args,
    ]  # fmt: skip
    env = {**cluster.env, "WATCHNEXT_CONF_DIR": str(ROOT / "conf"), "PYTHONHASHSEED": "0"}
    env.pop("PYTHONPATH", None)
    return run_process_group(
        cmd,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        timeout=E2E_TIMEOUT,
    )


def _json_out(proc: subprocess.CompletedProcess[str]) -> dict:
    out, err = proc.stdout[-4000:], proc.stderr[-8000:]
    assert proc.returncode == 0, f"spark-submit failed ({proc.returncode}):\n{out}\n{err}"
    # The summary is the last thing printed: the last line opening a JSON document that parses to the end.
    for m in reversed(list(re.finditer(r"^\{", proc.stdout, re.M))):
        try:
            return json.loads(proc.stdout[m.start() :])
        except ValueError:
            continue
    raise AssertionError(f"no JSON summary in the job's output:\n{out}")


def _configs(tmp: Path) -> tuple[list[str], Config]:
    """The cluster jobs' ``--conf`` list and the matching config for the local-mode reference."""
    local = [o for o in local_overrides(tmp) if not o.startswith("spark.master=")]
    cluster_conf = [*local, *OVERRIDES, "spark.master=null", "spark.delta_jars=provided"]
    return cluster_conf, load_config(env="local", overrides=[*local, *OVERRIDES])


def test_executors_import_the_packaged_library(
    cluster: Standalone, package: Path, executor_python: Path, tmp_path: Path
) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    out = _json_out(_submit(cluster, package, executor_python, tmp_path, str(probe)))
    assert out["master"] == cluster.master_url
    pids = {pid for pid, *_ in out["executors"]}
    assert len(pids) >= N_WORKERS, f"expected work on {N_WORKERS} executors: {out['executors']}"
    for _, module, python, cwd in out["executors"]:
        assert "watchnext.zip" in module, module  # from --py-files, not the checkout
        assert Path(python) == executor_python
        assert not cwd.startswith(str(ROOT))
    assert "watchnext.zip" in out["driver"], out["driver"]


@pytest.mark.timeout(E2E_TIMEOUT)  # three jobs on the cluster plus their local-mode references
def test_pipeline_jobs_on_a_standalone_cluster(
    spark: SparkSession, cluster: Standalone, package: Path, executor_python: Path, tmp_path: Path
) -> None:
    cluster_dir, local_dir, workdir = tmp_path / "cluster", tmp_path / "local", tmp_path / "cwd"
    workdir.mkdir()
    conf, _ = _configs(cluster_dir)
    summaries: dict[str, dict] = {}
    for stage in STAGES:
        args = ["--run-date", RUN_DATE.isoformat(), "--json"]
        for o in conf:
            args += ["--conf", o]
        t0 = time.perf_counter()
        proc = _submit(cluster, package, executor_python, workdir, str(ROOT / "jobs" / f"{stage}.py"), *args)
        summaries[stage] = _json_out(proc)[stage]
        print(f"cluster {stage}: {time.perf_counter() - t0:.1f} s")
    apps = cluster.status()["completedapps"]
    assert {a["name"] for a in apps} >= {"watchnext"} and len(apps) >= len(STAGES)

    _, cluster_cfg = _configs(cluster_dir)
    _, local_cfg = _configs(local_dir)

    def read(cfg: Config, table: str):
        return tables.read_run_date(spark, cfg.table_path(table), RUN_DATE)

    # Ingest: the same seeded source gives the same tables, row for row.
    pipeline.run_stage(spark, local_cfg.with_overrides("mlflow.enabled=false"), RUN_DATE, "ingest")
    for table in (TABLE_INTERACTIONS, TABLE_ITEMS, TABLE_REJECTS):
        assertDataFrameEqual(read(cluster_cfg, table), read(local_cfg, table))
    for table in (TABLE_USER_INDEX, TABLE_ITEM_INDEX):
        assertDataFrameEqual(
            tables.read(spark, cluster_cfg.table_path(table)), tables.read(spark, local_cfg.table_path(table))
        )

    # ALS: the same blocks and seed give the same factors (up to float summation order).
    pipeline.run_stage(spark, local_cfg.with_overrides("mlflow.enabled=false"), RUN_DATE, "als")
    for table in (TABLE_USER_FACTORS, TABLE_ITEM_FACTORS):
        ids = read(local_cfg, table).columns[:2]  # (user_id, user_idx) / (item_id, item_idx)
        cols = [*ids, F.posexplode("features").alias("dim", "value")]
        assertDataFrameEqual(
            read(cluster_cfg, table).select(*cols),
            read(local_cfg, table).select(*cols),
            atol=1e-4,
            rtol=1e-3,
        )

    # Similarities from the same inputs: with the cluster's factors written over the local ones, every
    # source (ALS cosine, co-occurrence), the user neighbours and the kNN lists must come out the same.
    for table in (TABLE_USER_FACTORS, TABLE_ITEM_FACTORS):
        tables.overwrite_run_date(
            read(cluster_cfg, table), local_cfg.table_path(table), RUN_DATE, "cluster's"
        )
    pipeline.run_stage(spark, local_cfg.with_overrides("mlflow.enabled=false"), RUN_DATE, "similarities")

    def lineage_free(cfg: Config, table: str):
        return read(cfg, table).drop("run_date", "run_id")

    for table in (TABLE_ITEM_SIMILARITIES, TABLE_USER_NEIGHBORS):
        assertDataFrameEqual(lineage_free(cluster_cfg, table), lineage_free(local_cfg, table), atol=1e-6)
    knn = "model IN ('item_knn', 'user_knn')"
    cluster_knn, local_knn = (
        lineage_free(cfg, TABLE_EVAL_RECS).where(knn) for cfg in (cluster_cfg, local_cfg)
    )
    assertDataFrameEqual(cluster_knn, local_knn, atol=1e-6)
    sources = {
        r.source for r in read(cluster_cfg, TABLE_ITEM_SIMILARITIES).select("source").distinct().collect()
    }
    assert sources == {"als", "cooccurrence"}

    # MLflow: one finished run per stage, tagged with the stage and the run date, in the driver's store.
    client = mlflow.MlflowClient(tracking_uri=cluster_cfg.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(cluster_cfg.mlflow.experiment)
    runs = client.search_runs([exp.experiment_id])
    assert sorted(r.data.tags["watchnext.stage"] for r in runs) == sorted(STAGES)
    for r in runs:
        assert r.info.status == "FINISHED"
        assert r.data.tags["watchnext.run_date"] == RUN_DATE.isoformat()
        assert r.info.run_id == summaries[r.data.tags["watchnext.stage"]]["mlflow_run_id"]
