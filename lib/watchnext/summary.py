"""What a run produced, for the end of a command: stage times, the Delta tables written and their rows,
the headline metrics, and where to look next.

Everything is read back without Spark: row counts from the ``numRecords`` statistics in each table's
Delta log (``deltalake``; no data file is opened), the metrics from the small ``evaluation`` table, a
user id for the serving example from the file statistics of ``recommendations_latest``. A table whose
log cannot be read (an object store without credentials here, a table being rewritten) shows no count
rather than failing the command that has already done its work.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shlex
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from watchnext.constants import (
    COL_K,
    COL_METRIC,
    COL_MODEL,
    COL_RUN_DATE,
    COL_USER,
    COL_VALUE,
    TABLE_EVALUATION,
    TABLE_RECOMMENDATIONS_LATEST,
)
from watchnext.locations import local_path
from watchnext.progress import Recorder

log = logging.getLogger(__name__)

# The published blend against the two references a reader knows: the ALS model alone and popularity.
HEADLINE_MODELS = ("blend", "als", "popularity")
HEADLINE_METRICS = ("ndcg", "precision", "recall", "catalog_coverage")
CLOCK_SLACK_S = 2.0  # a table committed this long before the run started still counts as written by it


@dataclass(frozen=True)
class StageLine:
    name: str
    seconds: float | None
    status: str  # done | failed | skipped | running
    note: str = ""  # e.g. the stage's search: "3 trials, best ndcg_at_10 0.4515"


@dataclass(frozen=True)
class TableLine:
    name: str
    rows: int | None  # None: the log has no row statistics or could not be read
    scope: str  # "run date": the run date's partition; "table": every row; "last commit": rows it wrote
    path: str


@dataclass(frozen=True)
class RunSummary:
    command: str
    run_date: dt.date
    seconds: float | None  # the whole command, Spark start-up included
    stages: list[StageLine]
    lakehouse: str
    tables: list[TableLine] = field(default_factory=list)
    k: int = 10
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # model -> metric -> value at k
    report: str | None = None
    mlflow_ui: str | None = None  # the command that opens the tracking store
    recommend: str | None = None  # the command that prints one user's list
    log_file: str | None = None
    # What the data could not feed: "<source> (<stages>): <why>", and notes such as the cluster features
    left_out: list[str] = field(default_factory=list)


def local_dir(uri: str) -> Path | None:
    """The local folder of a path or ``file:`` URI; None for other schemes (s3a://, abfss://, ...)."""
    path = local_path(uri)
    return None if path is None else path.expanduser()


def program(name: str) -> str:
    """How to type ``name`` (``watchnext``, ``mlflow``) from the working folder: the command beside this
    interpreter (the virtual environment's ``bin``), relative when it is under the working folder
    (``.venv/bin/watchnext``), bare when that is what ``PATH`` finds anyway."""
    beside = Path(sys.executable).parent / name
    if not beside.exists() or shutil.which(name) == str(beside):
        return name
    try:
        return str(beside.relative_to(Path.cwd()))
    except ValueError:
        return str(beside)


def table_rows(path: str | Path, run_date: dt.date | None = None) -> tuple[int | None, str]:
    """``(rows, scope)`` of a Delta table from its log's statistics: the ``run_date`` partition's rows
    when the table is partitioned by run date, else all rows. ``rows`` is None without statistics."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from deltalake import DeltaTable

    table = DeltaTable(str(path))
    adds = pa.table(table.get_add_actions(flatten=True))
    scope = "table"
    part = f"partition.{COL_RUN_DATE}"
    if (
        run_date is not None
        and COL_RUN_DATE in table.metadata().partition_columns
        and part in adds.schema.names
    ):
        adds = adds.filter(pc.equal(adds[part], pa.scalar(run_date, pa.date32())))
        scope = "run date"
    if "num_records" not in adds.schema.names:
        return (None, scope) if adds.num_rows else (0, scope)
    counts = adds["num_records"].to_pylist()
    if any(c is None for c in counts):
        return None, scope
    return int(sum(counts)), scope


def last_commit_ms(path: str | Path) -> int | None:
    """Milliseconds since the epoch of the table's newest commit."""
    from deltalake import DeltaTable

    history = DeltaTable(str(path)).history(1)
    return int(history[0]["timestamp"]) if history and "timestamp" in history[0] else None


def last_commit_info(path: str | Path) -> dict[str, Any]:
    """The ``commitInfo`` action of the newest JSON commit of a local table, read as text: the fallback
    for a table ``deltalake`` cannot open (it rejects Spark ML vector columns, a ``udt`` type)."""
    commits = sorted(Path(path, "_delta_log").glob("[0-9]*.json"))  # zero-padded: name order is version order
    for line in commits[-1].read_text().splitlines() if commits else []:
        action = json.loads(line)
        if "commitInfo" in action:
            return dict(action["commitInfo"])
    return {}


def written_tables(lakehouse: str, run_date: dt.date, since: float | None = None) -> list[TableLine]:
    """The Delta tables of a local ``lakehouse`` whose newest commit is at or after ``since`` (seconds
    since the epoch; None: every table), with their rows. Empty for a lakehouse that is not local."""
    root = local_dir(lakehouse)
    if root is None or not root.is_dir():
        return []
    out: list[TableLine] = []
    for p in sorted(root.iterdir()):
        if not (p / "_delta_log").is_dir():
            continue
        try:
            ms = last_commit_ms(p)
            rows, scope = table_rows(p, run_date)
        except Exception as exc:  # a summary never fails the run it summarises
            log.info("summary: deltalake cannot read %s (%s); its last commit says", p, error_text(exc))
            try:
                info = last_commit_info(p)
            except (OSError, ValueError):
                info = {}
            ms = info.get("timestamp")
            written = (info.get("operationMetrics") or {}).get("numOutputRows")
            rows, scope = (None if written is None else int(written)), "last commit"
        if since is not None and (ms is None or ms < (since - CLOCK_SLACK_S) * 1000):
            continue
        out.append(TableLine(p.name, rows, scope, str(p.resolve())))
    return out


def headline_metrics(
    path: str,
    run_date: dt.date,
    k: int,
    models: Sequence[str] = HEADLINE_MODELS,
    metrics: Sequence[str] = HEADLINE_METRICS,
) -> dict[str, dict[str, float]]:
    """``{model: {metric: value}}`` of the run date's ``evaluation`` rows at ``k``, for the ``models``
    present (in that order) and the ``metrics`` they have."""
    import pyarrow as pa
    from deltalake import DeltaTable, QueryBuilder

    from watchnext.serving import table_uri

    # DataFusion, not ``to_pyarrow_table``: a pyarrow dataset scan of a Delta table can abort the
    # process at interpreter exit ("terminate called without an active exception", delta-rs#2184).
    query = QueryBuilder().register("evaluation", DeltaTable(table_uri(path)))
    cols = ", ".join(f'"{c}"' for c in (COL_MODEL, COL_METRIC, COL_K, COL_VALUE))
    data = pa.table(
        query.execute(
            f"SELECT {cols} FROM evaluation WHERE \"{COL_RUN_DATE}\" = DATE '{run_date.isoformat()}'"
        ).read_all()
    )
    found: dict[str, dict[str, float]] = {}
    for row in data.to_pylist():
        if row[COL_K] == k and row[COL_MODEL] in models and row[COL_METRIC] in metrics:
            found.setdefault(row[COL_MODEL], {})[row[COL_METRIC]] = float(row[COL_VALUE])
    return {m: {name: found[m][name] for name in metrics if name in found[m]} for m in models if m in found}


def sample_user(path: str) -> str | None:
    """A user id that ``recommendations_latest`` holds: the smallest in the file statistics (no data
    read); None when the table is missing or empty."""
    import pyarrow as pa
    from deltalake import DeltaTable

    from watchnext.serving import table_uri

    try:
        adds = pa.table(DeltaTable(table_uri(path)).get_add_actions(flatten=True))
    except Exception:  # no table yet: nothing to suggest
        return None
    col = f"min.{COL_USER}"
    if col not in adds.schema.names:
        return None
    users = [
        u for u, n in zip(adds[col].to_pylist(), adds["num_records"].to_pylist(), strict=True) if u and n
    ]
    return str(min(users)) if users else None


def stage_lines(
    results: Mapping[str, Mapping[str, Any]], recorder: Recorder | None = None
) -> list[StageLine]:
    """One line per stage: those the recorder saw (a failed one included), else the results' stages
    with the ``seconds`` they report."""
    lines: list[StageLine] = []
    seen = recorder.stages if recorder is not None else {}
    names = list(seen) + [n for n in results if n not in seen and n != "pipeline"]
    for name in names:
        summary = results.get(name, {})
        rec = seen.get(name)
        seconds = rec.seconds if rec is not None else summary.get("seconds")
        status = rec.status if rec is not None else "done"
        note = ""
        if summary.get("skipped"):
            status = "skipped"
        if rec is not None and rec.error is not None:
            note = error_text(rec.error)
        elif rec is not None and rec.last_trial is not None:
            t = rec.last_trial
            best = "" if t.best is None else f", best {t.metric + ' ' if t.metric else ''}{t.best:.4f}"
            note = f"{t.search}: {t.done} trials{best}"
        lines.append(StageLine(name, None if seconds is None else float(seconds), status, note))
    return lines


def left_out_lines(results: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """``"<source> (<stages>): <why>"`` for every source a stage left out because the data cannot feed it
    (the stages' ``left_out`` summaries, ``data_profile.py``), then the stages' ``notes``; one line per
    source however many stages left it out, the first stage's reason."""
    why: dict[str, str] = {}
    where: dict[str, list[str]] = {}
    notes: list[str] = []
    for stage, summary in results.items():
        for source, reason in (summary.get("left_out") or {}).items():
            why.setdefault(source, str(reason))
            where.setdefault(source, []).append(stage)
        notes += [f"{stage}: {n}" for n in summary.get("notes") or [] if f"{stage}: {n}" not in notes]
    return [f"{s} left out ({', '.join(where[s])}): {why[s]}" for s in why] + notes


def error_text(error: BaseException) -> str:
    """``Type: first line of the message``; for an error raised in the JVM, the Java exception's."""
    java = getattr(error, "java_exception", None)
    if java is not None:
        try:
            return _first_line(str(java.toString()))
        except Exception:  # the gateway may be gone
            pass
    message = _first_line(str(error))
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def summarize(
    cfg: Any,
    command: str,
    run_date: dt.date,
    results: Mapping[str, Mapping[str, Any]],
    *,
    recorder: Recorder | None = None,
    since: float | None = None,
    seconds: float | None = None,
    log_file: str | None = None,
    location_args: Sequence[str] = (),
) -> RunSummary:
    """The summary of a command's ``results`` (stage -> summary dict) under config ``cfg``.

    ``since`` (seconds since the epoch at the start) picks the tables this command wrote; the metrics
    are shown when it wrote the ``evaluation`` table (or, without ``since``, when it ran ``evaluate``).
    ``location_args`` (``--env``/``--config``/``--conf storage.*``) are repeated in the suggested
    ``watchnext recommend`` command so it finds the same lakehouse.
    """
    k = cfg.evaluation.k
    tables = written_tables(cfg.storage.lakehouse, run_date, since)
    metrics: dict[str, dict[str, float]] = {}
    if "evaluate" in results or any(t.name == TABLE_EVALUATION for t in tables):
        try:
            metrics = headline_metrics(cfg.table_path(TABLE_EVALUATION), run_date, k)
        except Exception as exc:  # fall back to what the stage returned
            log.warning("summary: cannot read the evaluation table: %s", error_text(exc))
        if not metrics:
            ndcg = results.get("evaluate", {}).get(f"ndcg_at_{k}", {})
            metrics = {m: {"ndcg": float(ndcg[m])} for m in HEADLINE_MODELS if m in ndcg}
    user = sample_user(cfg.table_path(TABLE_RECOMMENDATIONS_LATEST))
    serve = [program("watchnext"), "recommend", "--user", user, *location_args] if user else None
    recommend = shlex.join(serve) if serve else None
    mlflow_ui = (
        shlex.join([program("mlflow"), "ui", "--backend-store-uri", cfg.mlflow.tracking_uri])
        if cfg.mlflow.enabled
        else None
    )
    return RunSummary(
        command=command,
        run_date=run_date,
        seconds=seconds,
        stages=stage_lines(results, recorder),
        lakehouse=cfg.storage.lakehouse,
        tables=tables,
        k=k,
        metrics=metrics,
        report=results.get("report", {}).get("path"),
        mlflow_ui=mlflow_ui,
        recommend=recommend,
        log_file=log_file,
        left_out=left_out_lines(results),
    )
