"""A run's log file, and sending everything the process and its children print into it.

Redirecting at the file-descriptor level is what reaches all of it: the JVM that py4j starts inherits
fds 1 and 2, and so do Horovod's rank processes; TensorFlow's C++ logging writes to fd 2 directly; Python
``logging`` handlers, ``print`` and ``warnings`` write through ``sys.stdout``/``sys.stderr``, which are fds
1 and 2 underneath. Replacing ``sys.stdout`` alone would catch only the last group. The terminal stays
reachable through copies of the original descriptors (:class:`Terminal`).
"""

from __future__ import annotations

import datetime as dt
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from watchnext.locations import local_path

LOG_FOLDER = "logs"


def log_dir(lakehouse: str) -> Path:
    """Where run logs go: a ``logs`` folder beside a local lakehouse (``/data/lakehouse`` ->
    ``/data/logs``), else ``./logs`` (an object-store lakehouse has no local folder to sit beside)."""
    local = local_path(lakehouse)
    if local is None:
        return Path(LOG_FOLDER).resolve()
    return local.expanduser().resolve().parent / LOG_FOLDER


def log_path(lakehouse: str, run_date: dt.date, started: dt.datetime) -> Path:
    """``<log_dir>/watchnext-<run date>-<start time>.log``: one file per invocation, sorted by date."""
    return log_dir(lakehouse) / f"watchnext-{run_date.isoformat()}-{started:%Y%m%dT%H%M%S}.log"


def open_log(lakehouse: str, run_date: dt.date, started: dt.datetime) -> Redirect:
    """Redirect to :func:`log_path`; where that folder cannot be written, to the same name under the
    system's temporary folder (a read-only checkout must not stop a run for want of a log)."""
    path = log_path(lakehouse, run_date, started)
    try:
        return Redirect(path)
    except OSError:
        return Redirect(Path(tempfile.gettempdir()) / "watchnext-logs" / path.name)


@dataclass
class Terminal:
    """Text streams on copies of the original stdout and stderr, while fds 1 and 2 point elsewhere."""

    out: TextIO
    err: TextIO


class Redirect:
    """Fds 1 and 2 of this process sent to ``path`` (appended to) until :meth:`restore`.

    Children started meanwhile keep writing to the file even after a restore; the process's own output
    goes back to the terminal. Use as a context manager, or keep it to the end of the process (the
    command line does, so what the JVM and py4j print while shutting down stays in the file too).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _flush(sys.stdout, sys.stderr)
        saved = os.dup(1), os.dup(2)
        target = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.dup2(target, 1)
            os.dup2(target, 2)
        finally:
            os.close(target)
        self.terminal = Terminal(
            out=os.fdopen(saved[0], "w", buffering=1, encoding="utf-8", errors="replace"),
            err=os.fdopen(saved[1], "w", buffering=1, encoding="utf-8", errors="replace"),
        )
        self.active = True

    def restore(self) -> None:
        """Point fds 1 and 2 back at the terminal and close its copies (once; later calls do nothing)."""
        if not self.active:
            return
        self.active = False
        _flush(sys.stdout, sys.stderr, self.terminal.out, self.terminal.err)
        os.dup2(self.terminal.out.fileno(), 1)
        os.dup2(self.terminal.err.fileno(), 2)
        self.terminal.out.close()
        self.terminal.err.close()

    def __enter__(self) -> Terminal:
        return self.terminal

    def __exit__(self, *exc: object) -> None:
        self.restore()


def can_redirect() -> bool:
    """True when ``sys.stdout``/``sys.stderr`` are the process's fds 1 and 2 and stderr is a terminal:
    a person is watching. Not under a scheduler, a pipe or a host that replaced the streams (pytest's
    capture, a notebook): there the log stays on stderr, where that host collects it."""
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2 and os.isatty(2)
    except (AttributeError, OSError, ValueError):
        return False


def _flush(*streams: TextIO | None) -> None:
    for s in streams:
        if s is not None and not s.closed:
            s.flush()
