"""Progress events of a run (stages started and finished, search trials finished) for whoever shows them.

Library code reports through the module functions; they go to the one observer installed for the process,
which is a no-op by default, so the library needs no terminal or UI package::

    progress.stage_started("als")
    study.optimize(objective, n_trials=n, callbacks=[progress.optuna_callback("als tuning", n, metric)])

and a front end (the CLI's live view, a test) installs its own for a while::

    with progress.observing(progress.Recorder()) as rec:
        pipeline.run_pipeline(spark, cfg, run_date)
    rec.stages["als"].seconds

An observer that raises is logged and otherwise ignored: what shows progress must not stop the work.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialEvent:
    """One finished trial of a search: the ``done``-th of ``total`` (None when open-ended)."""

    search: str  # what is searched, e.g. "als tuning"
    done: int
    total: int | None
    value: float | None  # this trial's objective (None when it failed)
    best: float | None  # the best objective so far (None before a trial succeeds)
    metric: str = ""  # the objective's name, e.g. "ndcg_at_10"


class Observer:
    """Receives progress events; every method is a no-op here, so a subclass overrides what it shows."""

    def stage_started(self, name: str) -> None:
        """Stage ``name`` starts."""

    def stage_finished(self, name: str, seconds: float) -> None:
        """Stage ``name`` ended normally after ``seconds`` of wall time."""

    def stage_failed(self, name: str, seconds: float, error: BaseException) -> None:
        """Stage ``name`` raised ``error`` after ``seconds``; the error propagates after this call."""

    def trial_finished(self, event: TrialEvent) -> None:
        """A trial of a search (hyperparameters, blend weights, the number of clusters) finished."""


@dataclass
class StageRecord:
    """What a :class:`Recorder` saw of one stage."""

    name: str
    started: float  # time.monotonic() at the start
    seconds: float | None = None  # wall time, once the stage ended
    status: str = "running"  # running | done | failed
    error: BaseException | None = None
    last_trial: TrialEvent | None = None  # the stage's latest search trial, if it searched


@dataclass
class Recorder(Observer):
    """Keeps every stage's wall time, status and last search trial, in the order the stages started."""

    stages: dict[str, StageRecord] = field(default_factory=dict)
    current: str | None = None  # the stage running now (or the one that failed)

    def stage_started(self, name: str) -> None:
        self.stages[name] = StageRecord(name, time.monotonic())
        self.current = name

    def stage_finished(self, name: str, seconds: float) -> None:
        rec = self.stages.setdefault(name, StageRecord(name, time.monotonic() - seconds))
        rec.seconds, rec.status = seconds, "done"
        if self.current == name:
            self.current = None

    def stage_failed(self, name: str, seconds: float, error: BaseException) -> None:
        rec = self.stages.setdefault(name, StageRecord(name, time.monotonic() - seconds))
        rec.seconds, rec.status, rec.error = seconds, "failed", error
        self.current = name

    def trial_finished(self, event: TrialEvent) -> None:
        if self.current is not None and self.current in self.stages:
            self.stages[self.current].last_trial = event


class Fanout(Observer):
    """Sends every event to each of ``observers`` in turn."""

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers

    def stage_started(self, name: str) -> None:
        for o in self.observers:
            o.stage_started(name)

    def stage_finished(self, name: str, seconds: float) -> None:
        for o in self.observers:
            o.stage_finished(name, seconds)

    def stage_failed(self, name: str, seconds: float, error: BaseException) -> None:
        for o in self.observers:
            o.stage_failed(name, seconds, error)

    def trial_finished(self, event: TrialEvent) -> None:
        for o in self.observers:
            o.trial_finished(event)


_NOOP = Observer()
_observer: Observer = _NOOP
_lock = threading.Lock()
ObserverT = TypeVar("ObserverT", bound=Observer)


def observer() -> Observer:
    """The observer installed now (the no-op one by default)."""
    return _observer


def set_observer(obs: Observer | None) -> Observer:
    """Install ``obs`` for the whole process (None: the no-op one); returns the one it replaces."""
    global _observer
    with _lock:
        previous, _observer = _observer, obs if obs is not None else _NOOP
    return previous


@contextmanager
def observing(obs: ObserverT) -> Iterator[ObserverT]:
    """Install ``obs`` for the ``with`` block, then put back the one before."""
    previous = set_observer(obs)
    try:
        yield obs
    finally:
        set_observer(previous)


def _emit(method: str, *args: Any) -> None:
    obs = _observer
    if obs is _NOOP:
        return
    try:
        getattr(obs, method)(*args)
    except Exception:
        log.warning("progress observer %s.%s failed; ignored", type(obs).__name__, method, exc_info=True)


def stage_started(name: str) -> None:
    _emit("stage_started", name)


def stage_finished(name: str, seconds: float) -> None:
    _emit("stage_finished", name, seconds)


def stage_failed(name: str, seconds: float, error: BaseException) -> None:
    _emit("stage_failed", name, seconds, error)


def trial_finished(
    search: str,
    done: int,
    total: int | None,
    value: float | None = None,
    best: float | None = None,
    metric: str = "",
) -> None:
    _emit("trial_finished", TrialEvent(search, done, total, value, best, metric))


def optuna_callback(search: str, total: int | None, metric: str = "") -> Callable[[Any, Any], None]:
    """A ``study.optimize(callbacks=[...])`` callback reporting each finished trial of that call:
    its count so far (enqueued trials still waiting are not counted), its value and the study's best."""
    done = 0

    def callback(study: Any, trial: Any) -> None:
        nonlocal done
        done += 1
        try:
            best: float | None = float(study.best_value)
        except ValueError:  # no trial has completed yet
            best = None
        value = None if trial.value is None else float(trial.value)
        trial_finished(search, done, total, value, best, metric)

    return callback
