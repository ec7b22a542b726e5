"""What a person sees of a command: the progress events, the log file redirection, the live lines and
the summary (watchnext.progress, watchnext.runlog, watchnext.summary, watchnext.console, the CLI).

No Spark here: the Delta tables are written with ``deltalake``, the command-line tests replace the session
and the stage functions, and the terminal is a pseudo-terminal, so the CLI takes its interactive path.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import write_deltalake
from rich.console import Console

from support.common import local_overrides
from watchnext import console, pipeline, progress, runlog
from watchnext.config import load_config
from watchnext.models.blend_tuning import TuningData, tune_weights
from watchnext.summary import (
    RunSummary,
    StageLine,
    TableLine,
    error_text,
    program,
    summarize,
    table_rows,
    written_tables,
)

RUN_DATE = dt.date(2024, 6, 1)
OTHER_DATE = dt.date(2024, 5, 31)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _text(renderable: object, width: int = 160) -> str:
    con = Console(file=io.StringIO(), width=width, color_system=None)
    con.print(renderable)
    return con.file.getvalue()  # type: ignore[attr-defined]


class Events(progress.Observer):
    def __init__(self) -> None:
        self.seen: list[tuple] = []

    def stage_started(self, name: str) -> None:
        self.seen.append(("started", name))

    def stage_finished(self, name: str, seconds: float) -> None:
        self.seen.append(("finished", name))

    def stage_failed(self, name: str, seconds: float, error: BaseException) -> None:
        self.seen.append(("failed", name, type(error).__name__))

    def trial_finished(self, event: progress.TrialEvent) -> None:
        self.seen.append(("trial", event))


# ----------------------------------------------------------------------------------------- progress
def test_no_observer_is_a_no_op_and_observing_restores_the_previous_one() -> None:
    before = progress.observer()
    progress.stage_started("x")  # nothing installed: nothing happens, nothing raises
    with progress.observing(Events()) as ev:
        assert progress.observer() is ev
        progress.stage_started("als")
        progress.trial_finished("als tuning", 1, 3, 0.2, 0.2, "ndcg_at_10")
    assert progress.observer() is before
    assert ev.seen == [
        ("started", "als"),
        ("trial", progress.TrialEvent("als tuning", 1, 3, 0.2, 0.2, "ndcg_at_10")),
    ]


def test_an_observer_that_raises_does_not_stop_the_work(caplog: pytest.LogCaptureFixture) -> None:
    class Broken(progress.Observer):
        def stage_started(self, name: str) -> None:
            raise RuntimeError("ui bug")

    with progress.observing(Broken()):
        progress.stage_started("ingest")
    assert "progress observer Broken.stage_started failed" in caplog.text


def test_tune_weights_reports_every_trial_of_its_optuna_study() -> None:
    rng = np.random.default_rng(0)
    users, per_user = 6, 8
    n = users * per_user
    data = TuningData(
        sources=("als", "popular"),
        features=rng.random((n, 2)),
        prior=rng.random(n),
        user=np.repeat(np.arange(users), per_user),
        item=np.tile(np.arange(per_user), users),
        cluster=np.tile(np.arange(per_user) % 3, users),
        relevant=rng.random(n) < 0.3,
        n_relevant=np.full(users, 3),
    )
    with progress.observing(Events()) as ev:
        search = tune_weights(data, 5, None, n_trials=7, seed=1, start={"als": 1.0, "popular": 0.5})
    trials = [e for kind, e in ev.seen if kind == "trial"]
    assert [t.done for t in trials] == list(range(1, 8))  # the two enqueued trials count once each
    assert {(t.search, t.total, t.metric) for t in trials} == {("blend weights", 7, "ndcg_at_5")}
    assert [t.value for t in trials] == pytest.approx([v for _, v in search.trials])
    running_best = np.maximum.accumulate([v for _, v in search.trials])
    assert [t.best for t in trials] == pytest.approx(list(running_best))
    assert trials[-1].best == pytest.approx(search.value)


def test_run_stage_reports_start_end_and_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(env="local", overrides=[*local_overrides(tmp_path), "mlflow.enabled=false"])

    def ok(spark: object, cfg: object, run_date: dt.date) -> dict:
        return {"rows": 3}

    def bad(spark: object, cfg: object, run_date: dt.date) -> dict:
        raise ValueError("no column 'user_id'")

    monkeypatch.setattr(pipeline, "stage_function", lambda name: ok if name == "ingest" else bad)
    with progress.observing(progress.Fanout(Events(), progress.Recorder())) as fan:
        ev, rec = fan.observers
        assert pipeline.run_stage(None, cfg, RUN_DATE, "ingest")["rows"] == 3  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="no column"):
            pipeline.run_stage(None, cfg, RUN_DATE, "als")  # type: ignore[arg-type]
    assert ev.seen == [
        ("started", "ingest"),
        ("finished", "ingest"),
        ("started", "als"),
        ("failed", "als", "ValueError"),
    ]  # type: ignore[attr-defined]
    assert rec.stages["ingest"].status == "done" and rec.stages["ingest"].seconds is not None  # type: ignore[attr-defined]
    assert rec.stages["als"].status == "failed" and rec.current == "als"  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------- runlog
def test_log_dir_sits_beside_a_local_lakehouse_and_in_the_working_folder_otherwise(tmp_path: Path) -> None:
    assert runlog.log_dir(f"file://{tmp_path}/lake") == tmp_path / "logs"
    assert runlog.log_dir(f"{tmp_path}/data/lake/") == tmp_path / "data" / "logs"
    assert runlog.log_dir("s3a://bucket/lake") == Path("logs").resolve()
    path = runlog.log_path(f"file:{tmp_path}/lake", RUN_DATE, dt.datetime(2026, 12, 6, 9, 5, 7))
    assert path == tmp_path / "logs" / "watchnext-2024-06-01-20261206T090507.log"


def test_open_log_falls_back_to_the_temporary_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Path] = []

    class Fake:
        def __init__(self, path: Path) -> None:
            opened.append(path)
            if path.parent == tmp_path / "logs":
                raise PermissionError(13, "Permission denied")  # what a read-only folder says
            self.path = path

    monkeypatch.setattr(runlog, "Redirect", Fake)
    got = runlog.open_log(str(tmp_path / "lake"), RUN_DATE, dt.datetime(2026, 12, 6, 9, 5, 7))
    name = "watchnext-2024-06-01-20261206T090507.log"
    assert opened == [tmp_path / "logs" / name, Path(tempfile.gettempdir()) / "watchnext-logs" / name]
    assert got.path == opened[-1]


CHILD = """
import logging, os, subprocess, sys
from watchnext.runlog import Redirect

logging.basicConfig(level=logging.INFO)  # a handler on sys.stderr, made before the redirection
r = Redirect(sys.argv[1])
print("python print")
logging.getLogger("lib").warning("python log record")
subprocess.run(["sh", "-c", "echo child stdout; echo child stderr noise >&2"], check=True)
os.write(2, b"raw fd 2 noise\\n")
r.terminal.out.write("for the person\\n")
r.terminal.err.write("progress line\\n")
r.restore()
print("after restore")
"""


def test_redirect_sends_the_process_and_its_children_to_the_log_file(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "run.log"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(log_file)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "for the person\nafter restore\n"
    assert proc.stderr == "progress line\n"
    logged = log_file.read_text()
    for line in ("python print", "python log record", "child stdout", "child stderr noise", "raw fd 2 noise"):
        assert line in logged
    assert "for the person" not in logged and "after restore" not in logged


# ------------------------------------------------------------------------------------------ summary
def _lakehouse(root: Path) -> None:
    """Small Delta tables: two run dates of interactions, an index, evaluation rows and a serving table."""
    write_deltalake(
        root / "interactions",
        pa.table({"user_id": ["u1", "u2", "u3", "u1", "u2"], "run_date": [RUN_DATE] * 3 + [OTHER_DATE] * 2}),
        partition_by=["run_date"],
    )
    write_deltalake(root / "user_index", pa.table({"user_id": ["u1", "u2", "u3", "u4"]}))
    rows = [
        ("blend", "ndcg", 10, 0.31), ("blend", "precision", 10, 0.12), ("blend", "catalog_coverage", 10, 0.5),
        ("als", "ndcg", 10, 0.29), ("popularity", "ndcg", 10, 0.11), ("trending", "ndcg", 10, 0.07),
        ("blend", "ndcg", 5, 0.25), ("blend", "rmse", None, 0.9),
    ]  # fmt: skip
    model, metric, k, value = zip(*rows, strict=True)
    write_deltalake(
        root / "evaluation",
        pa.table(
            {
                "model": [*model, "blend"],
                "metric": [*metric, "ndcg"],
                "k": pa.array([*k, 10], pa.int32()),
                "value": [*value, 0.99],  # another run date's
                "run_date": [RUN_DATE] * len(rows) + [OTHER_DATE],
            }
        ),
        partition_by=["run_date"],
    )
    write_deltalake(
        root / "recommendations_latest",
        pa.table({"user_id": ["u2", "u2", "u3"], "rank": [1, 2, 1], "item_id": ["i1", "i2", "i1"]}),
    )


def test_table_rows_come_from_the_log_statistics(tmp_path: Path) -> None:
    _lakehouse(tmp_path)
    assert table_rows(tmp_path / "interactions", RUN_DATE) == (3, "run date")
    assert table_rows(tmp_path / "interactions", OTHER_DATE) == (2, "run date")
    assert table_rows(tmp_path / "user_index", RUN_DATE) == (4, "table")
    assert written_tables(str(tmp_path), RUN_DATE, since=time.time() + 60) == []  # older than the run
    assert [t.name for t in written_tables(f"file://{tmp_path}", RUN_DATE, since=time.time() - 60)] == [
        "evaluation", "interactions", "recommendations_latest", "user_index",
    ]  # fmt: skip


def _vector_table(path: Path, committed_ms: int, rows: int) -> None:
    """A one-commit Delta log as Spark writes it for a table with an ML vector column (a ``udt``
    type, which ``deltalake`` refuses to open)."""
    byte = {"name": "type", "type": "byte", "nullable": False, "metadata": {}}
    values = {"name": "values", "type": {"type": "array", "elementType": "double", "containsNull": False}}
    vector = {
        "type": "udt",
        "class": "org.apache.spark.ml.linalg.VectorUDT",
        "pyClass": "pyspark.ml.linalg.VectorUDT",
        "sqlType": {"type": "struct", "fields": [byte, {**values, "nullable": True, "metadata": {}}]},
    }
    schema = {
        "type": "struct",
        "fields": [{"name": "features", "type": vector, "nullable": True, "metadata": {}}],
    }
    actions = [
        {"commitInfo": {"timestamp": committed_ms, "operation": "WRITE",
                        "operationMetrics": {"numFiles": "0", "numOutputRows": str(rows)}}},
        {"protocol": {"minReaderVersion": 1, "minWriterVersion": 2}},
        {"metaData": {"id": "t", "format": {"provider": "parquet", "options": {}}, "partitionColumns": [],
                      "schemaString": json.dumps(schema), "configuration": {}, "createdTime": committed_ms}},
    ]  # fmt: skip
    (path / "_delta_log").mkdir(parents=True)
    (path / "_delta_log" / f"{0:020d}.json").write_text("".join(json.dumps(a) + "\n" for a in actions))


def test_a_table_deltalake_cannot_open_counts_its_last_commit(tmp_path: Path) -> None:
    now = time.time()
    _vector_table(tmp_path / "item_features", int(now * 1000), 150)
    _vector_table(tmp_path / "old_features", int((now - 3600) * 1000), 99)
    with pytest.raises(Exception, match="udt"):
        table_rows(tmp_path / "item_features")
    assert written_tables(str(tmp_path), RUN_DATE, since=now - 60) == [
        TableLine("item_features", 150, "last commit", str(tmp_path / "item_features"))
    ]  # the old table is left out by its commit time, though deltalake cannot read its log
    assert [t.name for t in written_tables(str(tmp_path), RUN_DATE)] == ["item_features", "old_features"]


def test_summary_of_a_results_dict(tmp_path: Path) -> None:
    lake = tmp_path / "lakehouse"
    since = time.time()
    _lakehouse(lake)
    cfg = load_config(env="local", overrides=local_overrides(tmp_path))
    rec = progress.Recorder()
    with progress.observing(rec):
        progress.stage_started("ingest")
        progress.stage_finished("ingest", 3.25)
        progress.stage_started("als")
        progress.trial_finished("als tuning", 2, 2, 0.4, 0.4515, "ndcg_at_10")
        progress.stage_finished("als", 125.0)
    results = {
        "ingest": {"seconds": 3.0},
        "als": {},
        "evaluate": {"ndcg_at_10": {"blend": 0.31}},
        "report": {"path": "/r/report-2024-06-01.html"},
        "pipeline": {"mlflow_run_id": "abc"},
    }
    args = ["--conf", f"storage.lakehouse={lake}"]
    s = summarize(cfg, "run", RUN_DATE, results, recorder=rec, since=since, seconds=130.0, location_args=args)
    assert [(x.name, x.seconds, x.status) for x in s.stages] == [
        ("ingest", 3.25, "done"),
        ("als", 125.0, "done"),
        ("evaluate", None, "done"),
        ("report", None, "done"),
    ]
    assert {t.name: (t.rows, t.scope) for t in s.tables}["interactions"] == (3, "run date")
    assert s.metrics == {
        "blend": {"ndcg": 0.31, "precision": 0.12, "catalog_coverage": 0.5},
        "als": {"ndcg": 0.29},
        "popularity": {"ndcg": 0.11},
    }  # trending is not a headline model; K=5, rmse and the other date are left out
    watchnext, mlflow_cmd = program("watchnext"), program("mlflow")
    assert watchnext.endswith("watchnext") and mlflow_cmd.endswith("mlflow")
    assert s.recommend == f"{watchnext} recommend --user u2 --conf storage.lakehouse={lake}"

    text = _text(console.render_summary(s), width=260)  # the commands hold long temporary paths
    for expected in (
        "watchnext run · run date 2024-06-01 · 2 min 10 s",
        "✓ ingest",
        "3.2 s",
        "2 min 05 s",
        "als tuning: 2 trials, best ndcg_at_10 0.4515",
        f"Delta tables written under {lake}",
        "ndcg@10",
        "coverage@10",
        "/r/report-2024-06-01.html",
        f"{watchnext} recommend --user u2 --conf storage.lakehouse={lake}",
        f"{mlflow_cmd} ui --backend-store-uri {cfg.mlflow.tracking_uri}",
    ):
        assert expected in text, expected
    lines = text.splitlines()
    assert re.search(r"^interactions\s+3\s+of the run date", next(x for x in lines if "interactions" in x))
    assert re.search(r"^user_index\s+4\s+whole table", next(x for x in lines if "user_index" in x))
    assert re.search(r"^blend\s+0\.3100\s+0\.1200\s+0\.5000", next(x for x in lines if x.startswith("blend")))
    assert re.search(r"^popularity\s+0\.1100\s*$", next(x for x in lines if x.startswith("popularity")))


def test_summary_without_evaluate_shows_no_metrics_and_a_missing_stage_time() -> None:
    s = RunSummary("ingest", RUN_DATE, None, [StageLine("ingest", None, "failed", "OSError: disk")], "/l")
    text = _text(console.render_summary(s))
    assert "✗ ingest" in text and "OSError: disk" in text
    assert "model (K=" not in text and "Delta tables" not in text
    s2 = RunSummary("run", RUN_DATE, 1.0, [], "/l", [TableLine("t", None, "table", "/l/t")])
    assert re.search(r"^t\s+\?\s+whole table", _text(console.render_summary(s2)).splitlines()[-1])


def test_error_text_is_one_line_and_prefers_the_java_exception() -> None:
    assert error_text(ValueError("bad value\n  details")) == "ValueError: bad value"
    assert error_text(KeyboardInterrupt()) == "KeyboardInterrupt"

    class JavaError(Exception):
        class java_exception:  # noqa: N801 - what py4j's Py4JJavaError carries
            @staticmethod
            def toString() -> str:  # noqa: N802
                return "org.apache.spark.SparkException: Job aborted.\n\tat ..."

    assert error_text(JavaError("An error occurred while calling o12.save.")) == (
        "org.apache.spark.SparkException: Job aborted."
    )


# ------------------------------------------------------------------------------- the command line
CLI_CHILD = """
import subprocess, sys, time
from deltalake import write_deltalake
import pyarrow as pa
from watchnext import cli, pipeline, progress

lake = sys.argv[1]

def ingest(spark, cfg, run_date):
    print("py4j-like print noise")
    subprocess.run(["sh", "-c", "echo WARN WindowExec: No Partition Defined >&2"], check=True)
    write_deltalake(lake + "/interactions", pa.table({"user_id": ["u1", "u2"]}))
    progress.trial_finished("als tuning", 1, 2, 0.3, 0.3, "ndcg_at_10")
    return {"seconds": 0.1}

def als(spark, cfg, run_date):
    raise ValueError("rank must be positive, got -1\\nmore detail")

pipeline.session_for = lambda cfg: None
pipeline.stage_function = {"ingest": ingest, "als": als}.__getitem__
sys.exit(cli.main(sys.argv[2:]))
"""


def _run_on_a_terminal(tmp_path: Path, stages: str, *extra: str) -> tuple[int, str, str]:
    """The CLI in a child whose stderr is a pseudo-terminal (so it takes the interactive path) and whose
    stdout is a pipe; returns its exit status, the terminal's text (ANSI codes removed) and stdout."""
    lake = tmp_path / "lakehouse"
    conf = [*local_overrides(tmp_path), "mlflow.enabled=false"]
    argv = ["run", "--stages", stages, "--run-date", RUN_DATE.isoformat(), *extra]
    for c in conf:
        argv += ["--conf", c]
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI_CHILD, str(lake), *argv],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200", "TERM": "xterm"},
    )  # fmt: skip
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    out = proc.stdout.read().decode() if proc.stdout else ""
    rc = proc.wait(timeout=30)
    return rc, ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")).replace("\r", "\n"), out


def test_a_failing_stage_ends_with_one_line_naming_it_and_the_log(tmp_path: Path) -> None:
    rc, terminal, out = _run_on_a_terminal(tmp_path, "ingest,als")
    assert rc == 1, terminal
    logs = list((tmp_path / "logs").glob("watchnext-2024-06-01-*.log"))
    assert len(logs) == 1, terminal
    final = [x for x in terminal.splitlines() if x.startswith("watchnext: ")]
    assert final == [
        f"watchnext: stage als failed: ValueError: rank must be positive, got -1 (log: {logs[0]})"
    ]
    assert "✓ ingest" in terminal and "✗ als" in terminal
    assert "als tuning 1/2 · best ndcg_at_10 0.3000" in terminal
    for noise in ("py4j-like print noise", "WindowExec", "Traceback"):
        assert noise not in terminal and noise not in out
        assert noise in logs[0].read_text()
    assert "more detail" in logs[0].read_text()  # the whole message and traceback are in the log


def test_a_run_on_a_terminal_ends_with_the_summary_on_stdout(tmp_path: Path) -> None:
    rc, terminal, out = _run_on_a_terminal(tmp_path, "ingest")
    assert rc == 0, terminal + out
    assert "✓ ingest" in terminal and "WindowExec" not in terminal + out
    assert re.search(r"^interactions\s+2\s+whole table", out, re.M), out
    log_file = next((tmp_path / "logs").glob("*.log"))
    assert re.search(rf"^log\s+{re.escape(str(log_file))}", out, re.M)
    assert "WindowExec" in log_file.read_text()


def test_json_goes_to_the_real_stdout_on_a_terminal(tmp_path: Path) -> None:
    rc, terminal, out = _run_on_a_terminal(tmp_path, "ingest", "--json")
    assert rc == 0, terminal + out
    assert json.loads(out)["ingest"]["seconds"] == 0.1  # stdout holds the JSON and nothing else
    assert "✓ ingest" in terminal and "Delta tables" not in terminal


def test_live_lines_keep_marks_and_times_when_a_note_is_too_long() -> None:
    con = Console(file=io.StringIO(), width=70, force_terminal=True, color_system=None)
    with console.LiveView(con) as view:
        view.stage_started("als")
        view.trial_finished(progress.TrialEvent("als tuning", 2, 3, 0.4, 0.4427, "ndcg_at_10"))
        view.stage_finished("als", 2.0)
        view.stage_started("recommend")
        view.stage_failed("recommend", 3.0, RuntimeError("9 users would get a list other than 10 items " * 3))
    last = ANSI.sub("", con.file.getvalue()).split("\r")[-1].splitlines()  # type: ignore[attr-defined]
    assert re.match(r"✓ als +0:00:0\d ━+ +als tuning 2/3", last[0]), last
    assert re.match(r"✗ recommend +0:00:0\d +RuntimeError: 9 u.*…$", last[1].rstrip()), last
    assert max(len(x.rstrip()) for x in last) <= 70


def test_failure_line_names_the_step_the_cause_and_the_log() -> None:
    err = OSError("disk full\nat /data")
    assert console.failure_line("stage ingest", err, "/l/x.log") == (
        "watchnext: stage ingest failed: OSError: disk full (log: /l/x.log)"
    )
    assert console.failure_line("spark start", KeyboardInterrupt(), None) == (
        "watchnext: interrupted during spark start"
    )


def test_format_seconds() -> None:
    assert [console.format_seconds(x) for x in (None, 0.04, 59.94, 60, 3599.6, 3725)] == [
        "", "0.0 s", "59.9 s", "1 min 00 s", "1 h 00 min", "1 h 02 min",
    ]  # fmt: skip
    assert json.dumps(console.trial_note(progress.TrialEvent("clusters k", 2, None, 0.1, None))) == (
        '"clusters k 2"'
    )
