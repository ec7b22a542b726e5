"""Constants and helpers the tests share (fixtures live in tests/conftest.py)."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]  # the checkout
SUPPORT = Path(__file__).resolve().parent  # scripts the tests run: airflow_driver.py, fault_job.py

RUN_DATE = dt.date(2024, 6, 1)
# Seconds an end-to-end test (the Airflow DAG run, the standalone cluster) may take: minutes on a quiet
# 2-core machine, far longer when other work shares it; raise it there with WATCHNEXT_E2E_TIMEOUT.
# A DAG run took 10 min on a quiet machine and 35 min on a slowed one (2026-12-05); CI's own limit is
# 90 min for the whole suite.
E2E_TIMEOUT = int(os.environ.get("WATCHNEXT_E2E_TIMEOUT", "3600"))


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
