"""What a person sees of a command: one live line per stage, then a summary (rich).

:class:`LiveView` is a :class:`~watchnext.progress.Observer`: a spinner and the elapsed time per stage,
and while a stage searches (ALS tuning, blend weights, the number of clusters) a bar of its trials with
the best value so far. :func:`render_summary` turns a :class:`~watchnext.summary.RunSummary` into tables:
stage times, the Delta tables written with their rows, the headline metrics, and the next commands.
:func:`failure_line` is the one line a failed command ends with.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, TextIO

from rich import box
from rich.console import Console, Group, RenderableType
from rich.progress import Progress, ProgressColumn, SpinnerColumn, Task, TextColumn, TimeElapsedColumn
from rich.progress_bar import ProgressBar
from rich.table import Column, Table
from rich.text import Text

from watchnext.progress import Observer, TrialEvent
from watchnext.summary import RunSummary, error_text, local_dir

STATUS_MARK = {"done": ("✓", "green"), "failed": ("✗", "red"), "skipped": ("–", "dim")}
SCOPE_LABEL = {
    "run date": "of the run date",
    "table": "whole table",
    "last commit": "written by the last commit",
}
METRIC_LABEL = {"catalog_coverage": "coverage", "hit_rate": "hit rate"}
BAR_WIDTH = 20
LINE_RESERVED = 2 + 16 + 8 + BAR_WIDTH + 4  # a live line's mark, name, time, bar and gaps


def make_console(stream: TextIO, width: int | None = None) -> Console:
    """A console writing to ``stream`` (the terminal's copy of a descriptor, while fds 1 and 2 go to
    the log file); no markup or highlighting in what it prints, so paths and messages show as they are."""
    return Console(file=stream, width=width, markup=False, highlight=False, emoji=False)


def format_seconds(seconds: float | None) -> str:
    """``"8.2 s"``, ``"3 min 05 s"``, ``"1 h 02 min"``; ``""`` for None."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def trial_note(event: TrialEvent) -> str:
    """``"als tuning 3/20 · best ndcg_at_10 0.4515"``."""
    count = f"{event.done}/{event.total}" if event.total else f"{event.done}"
    note = f"{event.search} {count}"
    if event.best is not None:
        note += f" · best {event.metric + ' ' if event.metric else ''}{event.best:.4f}"
    return note


class _Status(SpinnerColumn):
    """A spinner while the step runs, then ✓, ✗ or – (skipped)."""

    def render(self, task: Task) -> RenderableType:
        mark = STATUS_MARK.get(task.fields.get("status", "running"))
        return Text(mark[0], style=mark[1]) if mark else super().render(task)


class _Trials(ProgressColumn):
    """The bar of a searching stage's trials; empty for the other stages."""

    def render(self, task: Task) -> RenderableType:
        total = task.fields.get("trial_total")
        if not total:
            return Text("")
        return ProgressBar(total=total, completed=task.fields.get("trial_done", 0), width=BAR_WIDTH)


class _Note(ProgressColumn):
    """The stage's note (its search, or its error), cut to what the terminal has left beside the other
    columns: rich would otherwise shrink every column alike and drop the marks and times first."""

    def __init__(self, console: Console) -> None:
        super().__init__(table_column=Column(no_wrap=True))
        self.console = console

    def render(self, task: Task) -> RenderableType:
        text = Text(str(task.fields.get("note", "")), no_wrap=True)
        text.truncate(max(10, self.console.width - LINE_RESERVED), overflow="ellipsis")
        return text


class LiveView(Observer):
    """One live line per stage on ``console``; use it as a context manager around the work."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.progress = Progress(
            _Status(finished_text=" ", table_column=Column(no_wrap=True)),
            TextColumn("{task.description}", table_column=Column(min_width=14, no_wrap=True)),
            TimeElapsedColumn(table_column=Column(no_wrap=True)),
            _Trials(table_column=Column(no_wrap=True)),
            _Note(console),
            console=console,
            # Not the default True: rich would then replace sys.stdout/sys.stderr and print everything
            # written there (third-party noise) above the live lines, on the terminal.
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.tasks: dict[str, Any] = {}
        self.current: str | None = None

    def __enter__(self) -> LiveView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def stage_started(self, name: str) -> None:
        self.tasks[name] = self.progress.add_task(name, total=None, status="running", note="")
        self.current = name

    def stage_finished(self, name: str, seconds: float) -> None:
        self._end(name, "done")

    def stage_failed(self, name: str, seconds: float, error: BaseException) -> None:
        self._end(name, "failed", note=error_text(error))

    def trial_finished(self, event: TrialEvent) -> None:
        task = self.tasks.get(self.current) if self.current else None
        if task is not None:
            self.progress.update(
                task, trial_total=event.total, trial_done=event.done, note=trial_note(event), refresh=True
            )

    def _end(self, name: str, status: str, note: str | None = None) -> None:
        task = self.tasks.get(name)
        if task is None:
            return
        fields: dict[str, Any] = {"status": status}
        if note is not None:
            fields["note"] = note
        self.progress.update(task, **fields)
        self.progress.stop_task(task)
        self.progress.refresh()
        if self.current == name:
            self.current = None


def header(command: str, run_date: dt.date, log_file: str | Path | None) -> Text:
    """``watchnext run · run date 2024-06-01 · log /data/logs/watchnext-...log``."""
    text = Text(f"watchnext {command}", style="bold")
    text.append(f" · run date {run_date.isoformat()}")
    if log_file:
        text.append(" · log ", style="dim")
        text.append(str(log_file), style="dim")
    return text


def render_summary(s: RunSummary) -> Group:
    """The end-of-command summary: stages, tables written, metrics at K, and where to look next."""
    title = Text(f"watchnext {s.command}", style="bold")
    title.append(f" · run date {s.run_date.isoformat()}")
    if s.seconds is not None:
        title.append(f" · {format_seconds(s.seconds)}")
    parts: list[RenderableType] = [Text(""), title]

    stages = _table("stage", "time")
    stages.add_column("")
    for line in s.stages:
        mark, style = STATUS_MARK.get(line.status, ("…", "yellow"))
        name = Text(mark + " ", style=style).append(line.name, style="default")
        stages.add_row(name, format_seconds(line.seconds), line.note)
    parts += [Text(""), stages]

    if s.tables:
        where = local_dir(s.lakehouse) or s.lakehouse
        tables = _table(f"Delta tables written under {where}", "rows")
        tables.add_column("")
        for t in s.tables:
            rows = "?" if t.rows is None else f"{t.rows:,}"
            tables.add_row(t.name, rows, SCOPE_LABEL.get(t.scope, t.scope))
        parts += [Text(""), tables]

    if s.metrics:
        names = [m for m in ("ndcg", "precision", "recall", "map", "hit_rate", "catalog_coverage")
                 if any(m in v for v in s.metrics.values())]  # fmt: skip
        metrics = _table(f"model (K={s.k})", *(f"{METRIC_LABEL.get(m, m)}@{s.k}" for m in names))
        for model, values in s.metrics.items():
            metrics.add_row(model, *(f"{values[m]:.4f}" if m in values else "" for m in names))
        parts += [Text(""), metrics]

    if s.left_out:  # what the data could not feed (data_profile.py)
        notes = Text("\n".join(f"· {line}" for line in s.left_out), style="yellow")
        parts += [Text(""), Text("What the data could not feed", style="bold"), notes]

    nexts = Table.grid(padding=(0, 2))
    nexts.add_column(style="bold")
    nexts.add_column(overflow="fold")
    for label, value in (
        ("report", s.report),
        ("one user's list", s.recommend),
        ("MLflow", s.mlflow_ui),
        ("log", s.log_file),
    ):
        if value:
            nexts.add_row(label, value)
    if nexts.row_count:
        parts += [Text(""), nexts]
    return Group(*parts)


def _table(first: str, *right: str) -> Table:
    """A borderless table: ``first`` left-aligned, the ``right`` columns right-aligned."""
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
    table.add_column(first)
    for name in right:
        table.add_column(name, justify="right")
    return table


def failure_line(stage: str, error: BaseException, log_file: str | Path | None) -> str:
    """``watchnext: stage als failed: ValueError: ... (log: /data/logs/....log)``: one line (``watchnext:
    interrupted during stage als (log: ...)`` after Ctrl-C)."""
    if isinstance(error, KeyboardInterrupt):
        line = f"watchnext: interrupted during {stage}"
    else:
        line = f"watchnext: {stage} failed: {error_text(error)}"
    return f"{line} (log: {log_file})" if log_file else line
