"""Drives Airflow from its own environment for the tests: ``.venv-airflow/bin/python airflow_driver.py``.

Airflow cannot be imported by the job environment's pytest (protobuf 7 vs TensorFlow 2.18), so
tests/e2e/test_airflow_dag.py runs this script in a subprocess, with ``AIRFLOW_HOME`` in a temporary
folder, and reads the one JSON document it prints on its last line:

- ``dagbag``: load the DAG folder; the import errors and, per DAG, its schedule, flags, params and
  tasks (operator, trigger rule, retries, timeout, upstream / downstream task ids).
- ``test DAG_ID RUNS_JSON``: ``airflow db migrate`` (sqlite), then one real ``dag.test()`` run per
  spec in the JSON list (``logical_date``, ``conf``, ``mark_success_pattern``); per run its state,
  duration, every task instance's state and duration (seconds) and the XComs.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time
from typing import Any

# What a DAG file must not import at parse time (the scheduler parses it every few seconds).
HEAVY_MODULES = ("pyspark", "watchnext", "mlflow", "tensorflow", "horovod", "pandas", "numpy")


def dagbag(dag_folder: str) -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=dag_folder)
    dags: dict[str, Any] = {}
    for dag_id, dag in bag.dags.items():
        tasks = {
            t.task_id: {
                "operator": type(t).__name__,
                "trigger_rule": str(t.trigger_rule),
                "retries": t.retries,
                "execution_timeout_s": t.execution_timeout.total_seconds() if t.execution_timeout else None,
                "upstream": sorted(t.upstream_task_ids),
                "downstream": sorted(t.downstream_task_ids),
                "application": getattr(t, "application", None),
            }
            for t in dag.tasks
        }
        dags[dag_id] = {
            "schedule": getattr(dag.timetable, "expression", None),
            "timetable": type(dag.timetable).__name__,
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "tags": sorted(dag.tags),
            "has_doc_md": bool(dag.doc_md),
            "params": {k: dag.params.get_param(k).value for k in dag.params},
            "tasks": tasks,
        }
    heavy = sorted(m for m in HEAVY_MODULES if m in sys.modules)
    return {
        "import_errors": {str(k): str(v) for k, v in bag.import_errors.items()},
        "heavy_modules_loaded": heavy,
        "dags": dags,
    }


def run_tests(dag_folder: str, dag_id: str, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``dag.test()`` once per run spec: ``logical_date``, optional ``conf`` and ``mark_success_pattern``."""
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, stdout=sys.stderr)
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.xcom import XComModel

    bag = DagBag(dag_folder=dag_folder)
    if bag.import_errors:
        raise SystemExit(f"import errors: {bag.import_errors}")
    dag = bag.dags[dag_id]
    for t in dag.tasks:  # a failing stage fails the test now instead of after the retry delays
        t.retries = 0
    results = []
    for spec in runs:
        when = dt.datetime.fromisoformat(spec["logical_date"]).replace(tzinfo=dt.UTC)
        t0 = time.perf_counter()
        dr = dag.test(
            logical_date=when,
            run_conf=spec.get("conf") or {},
            mark_success_pattern=spec.get("mark_success_pattern"),
        )
        seconds = time.perf_counter() - t0
        with settings.Session() as session:
            xcoms = session.scalars(XComModel.get_many(run_id=dr.run_id, dag_ids=dag_id)).all()
            values = {f"{x.task_id}.{x.key}": XComModel.deserialize_value(x) for x in xcoms}
            tis = dr.get_task_instances(session=session)
            states = {ti.task_id: str(ti.state) for ti in tis}
            durations = {ti.task_id: ti.duration for ti in tis if ti.duration is not None}
        results.append(
            {
                "state": str(dr.state),
                "run_id": dr.run_id,
                "seconds": seconds,
                "tasks": states,
                "task_seconds": durations,
                "xcom": values,
            }
        )
    return results


def main(argv: list[str]) -> int:
    mode, dag_folder, *rest = argv
    if mode == "dagbag":
        result = dagbag(dag_folder)
    elif mode == "test":
        dag_id, runs = rest
        result = run_tests(dag_folder, dag_id, json.loads(runs))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    sys.stdout.flush()
    print("\n" + json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
