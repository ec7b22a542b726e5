"""The ``watchnext`` command line: ``run``, one command per stage, ``config`` and ``generate``.

``watchnext recommend --user ID`` is the serving read: it prints the user's latest top-N from the
``recommendations_latest`` table (watchnext.serving) without starting Spark; without ``--user`` it runs
the recommend stage like any other.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Keras 2 API for Horovod (see STACK.md)

log = logging.getLogger("watchnext")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", help="config environment: conf/<env>.yaml (default: $WATCHNEXT_ENV or local)")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="extra YAML config layer")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument(
        "--experiment",
        metavar="NAME",
        help="enable this experiment of the config's `experiments` (and no other) for this run",
    )
    p.add_argument("--run-date", type=_date, default=dt.date.today(), help="YYYY-MM-DD (default: today)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-v", "--verbose", action="store_true")


def _date(s: str) -> dt.date:
    try:
        return dt.date.fromisoformat(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--run-date must be YYYY-MM-DD, got {s!r}") from None


SERVE_COMMAND = "recommend"


def _serve_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("serving read (no Spark)")
    g.add_argument("--user", metavar="ID", help="print this user's latest recommendations instead of running")
    g.add_argument("--n", type=_positive, metavar="N", help="at most N items (default: the whole list)")


def _positive(s: str) -> int:
    try:
        n = int(s)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--n must be a positive integer, got {s!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    from watchnext.pipeline import STAGES

    parser = argparse.ArgumentParser(prog="watchnext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the whole pipeline (pipeline.stages)")
    p.add_argument("--stages", help="comma-separated subset of stages, in order")
    _common(p)
    for name in STAGES:
        p = sub.add_parser(name, help=f"run the {name} stage")
        _common(p)
        if name == SERVE_COMMAND:
            _serve_args(p)
    if SERVE_COMMAND not in STAGES:  # the serving read works before (and without) the stage
        p = sub.add_parser(SERVE_COMMAND, help="print a user's latest recommendations (--user)")
        _common(p)
        _serve_args(p)
    p = sub.add_parser("config", help="print the resolved config (or one key, --get) as JSON; no Spark")
    p.add_argument("--get", metavar="KEY", help="a dotted key, e.g. ncf.enabled (the Airflow DAG's branch)")
    _common(p)
    p = sub.add_parser("generate", help="write a synthetic dataset as a MovieLens-style CSV folder")
    p.add_argument("--out", required=True, help="folder to write ratings.csv and movies.csv into")
    _common(p)
    return parser


def drop_py4j_retry_notices(record: logging.LogRecord) -> bool:
    """False for py4j's INFO notices logged on the root logger: "Exception while sending command." with
    a ConnectionResetError traceback when a pooled connection was closed (Horovod's forked helpers
    close their inherited copies); py4j then retries on a fresh connection. Errors still pass."""
    return not (record.levelno <= logging.INFO and f"{os.sep}py4j{os.sep}" in record.pathname)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("py4j", "alembic", "mlflow", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not args.verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(drop_py4j_retry_notices)

    from watchnext.config import ConfigError, load_config

    try:
        cfg = load_config(env=args.env, files=args.config, overrides=args.conf)
        if args.experiment:
            cfg = cfg.enable_experiment(args.experiment)
    except ConfigError as exc:
        print(f"watchnext: {exc}", file=sys.stderr)
        return 2
    if args.command == "config":
        return show_config(cfg, args.get)
    if getattr(args, "user", None) is not None:
        return serve(cfg, args.user, args.n, as_json=args.json)
    from watchnext import pipeline

    if args.command not in ("run", "generate") and args.command not in pipeline.STAGES:
        parser.error(f"'{args.command}' is not a registered stage yet; use --user ID for the serving read")
    if getattr(args, "n", None) is not None:
        parser.error("--n needs --user")
    return run_command(args, cfg)


def run_command(args: argparse.Namespace, cfg: Any) -> int:
    """The commands that start Spark: ``run``, a stage, ``generate``.

    On a terminal (and without ``-v``) everything the process and its children print goes to a log file
    (watchnext.runlog) and the terminal shows one live line per stage and a summary; otherwise the log
    stays on stderr, as a scheduler or a pipe expects. A failure ends with one line naming the stage and
    the cause (the traceback is in the log) and exit status 1.
    """
    from watchnext import console, progress, runlog
    from watchnext.session import PreflightError
    from watchnext.summary import summarize

    route_optuna_logging()
    started, t0 = time.time(), time.perf_counter()
    log_file: Path | None = None
    out, err = sys.stdout, sys.stderr
    if not args.verbose and runlog.can_redirect():
        # Kept to the end of the process: what the JVM and py4j print while shutting down goes there too.
        redirect = runlog.open_log(cfg.storage.lakehouse, args.run_date, dt.datetime.now())
        log_file, out, err = redirect.path, redirect.terminal.out, redirect.terminal.err
    screen = console.make_console(err, width=_width(err))
    recorder = progress.Recorder()
    live = console.LiveView(screen) if log_file else None
    if live is not None:
        screen.print(console.header(args.command, args.run_date, log_file))
    try:
        with progress.observing(progress.Fanout(recorder, *([live] if live else []))), live or nullcontext():
            result = _run(args, cfg)
    except PreflightError as exc:
        print(str(exc), file=err)
        return 3
    except (Exception, KeyboardInterrupt) as exc:
        stage = _failed_step(recorder.current, args.command)
        log.error("%s failed", stage, exc_info=exc)
        screen.print(console.failure_line(stage, exc, log_file), style="red", soft_wrap=True)
        return 130 if isinstance(exc, KeyboardInterrupt) else 1
    if args.json:
        print(json.dumps(result, indent=2, default=str), file=out, flush=True)
        return 0
    summary = summarize(
        cfg,
        args.command,
        args.run_date,
        result,
        recorder=recorder,
        since=started,
        seconds=time.perf_counter() - t0,
        log_file=str(log_file) if log_file else None,
        location_args=location_args(args),
    )
    console.make_console(out, width=_width(out)).print(console.render_summary(summary))
    return 0


_STARTUP = "spark start"  # the step before the first stage: JVM, Delta jars, session


def _failed_step(current: str | None, command: str) -> str:
    if current is None:  # between stages: the pipeline's own checks
        return f"watchnext {command}"
    return current if current == _STARTUP else f"stage {current}"


def _run(args: argparse.Namespace, cfg: Any) -> dict[str, Any]:
    from watchnext import pipeline, progress

    progress.stage_started(_STARTUP)
    t0 = time.perf_counter()
    try:
        # Only the commands that run Spark get a session (and pay for the JVM).
        spark = pipeline.session_for(cfg)
    except BaseException as exc:
        progress.stage_failed(_STARTUP, time.perf_counter() - t0, exc)
        raise
    progress.stage_finished(_STARTUP, time.perf_counter() - t0)
    if args.command == "generate":
        from watchnext.ingest.synthetic import generate, write_csv

        progress.stage_started("generate")
        t0 = time.perf_counter()
        data = generate(spark, cfg.ingest.synthetic)
        # Plain files for local folders (the MovieLens reader's layout); part-file folders on URIs.
        write_csv(data, args.out, single_file="://" not in args.out)
        progress.stage_finished("generate", time.perf_counter() - t0)
        return {"generate": {"out": args.out}}
    if args.command == "run":
        stages = args.stages.split(",") if args.stages else None
        return pipeline.run_pipeline(spark, cfg, args.run_date, stages)
    return {args.command: pipeline.run_stage(spark, cfg, args.run_date, args.command)}


def route_optuna_logging() -> None:
    """Optuna logs through a stderr handler of its own with propagation off, so its "Trial N finished"
    lines bypassed the log file and repeated the line watchnext.models.tuning logs for every trial. Its
    records now go through the root handlers like every other library's, warnings and up."""
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    optuna.logging.set_verbosity(logging.WARNING)


def location_args(args: argparse.Namespace) -> list[str]:
    """The arguments that say where the tables are (``--env``, ``--config``, ``--conf storage.*``), to
    repeat in a suggested command."""
    out: list[str] = ["--env", args.env] if args.env else []
    for f in args.config:
        out += ["--config", f]
    for kv in args.conf:
        if kv.strip().startswith("storage."):
            out += ["--conf", kv]
    return out


def _width(stream: Any) -> int | None:
    """The terminal's width (rich would ask fds 0-2, now the log file); None: rich's fallback."""
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, OSError, ValueError):
        return None
    return columns or None  # 0 on a terminal that never had its size set


def show_config(cfg: Any, key: str | None = None) -> int:
    """Print the resolved config, or the value of one dotted ``key``, as JSON; exit 2 on an unknown key."""
    node: Any = cfg.model_dump(mode="json")
    for part in key.split(".") if key else ():
        if not isinstance(node, dict) or part not in node:
            print(f"watchnext: config key '{key}': unknown key", file=sys.stderr)
            return 2
        node = node[part]
    print(json.dumps(node, indent=None if key else 2))
    return 0


def serve(cfg: Any, user: str, n: int | None, as_json: bool = False) -> int:
    """Print ``user``'s latest recommendations; exit 1 with one line if the user or the table is missing."""
    from watchnext.serving import UnknownUserError, recommendations_for

    try:
        recs = recommendations_for(cfg, user, n)
    except (UnknownUserError, FileNotFoundError) as exc:
        print(f"watchnext: {exc}", file=sys.stderr)
        return 1
    print(
        json.dumps(recs.to_dict(), indent=2, ensure_ascii=False) if as_json else format_recommendations(recs)
    )
    return 0


def format_recommendations(recs: Any) -> str:
    """``Top N for user U (run_date D, run R):`` then one line per item: rank, title, score, reason. A
    user in an A/B experiment: ``(run_date D, run R; experiment E, variant V)``."""
    width = min(max((len(r.display_title) for r in recs.items), default=0), 60)
    run_date = recs.run_date.isoformat() if recs.run_date else "?"
    run = recs.run_id or "?"
    arm = f"; experiment {recs.experiment}, variant {recs.variant or '?'}" if recs.experiment else ""
    lines = [f"Top {len(recs.items)} for user {recs.user_id} (run_date {run_date}, run {run}{arm}):"]
    for r in recs.items:
        line = f"{r.rank:>2}. {r.display_title:<{width}}  {r.score:.3f}"
        lines.append(f"{line}  {r.reason}" if r.reason else line)
    return "\n".join(lines)


def delta_tables(lakehouse: str) -> list[tuple[str, str]]:
    """``(name, absolute path)`` of the Delta tables in a local lakehouse folder (none for remote URIs)."""
    from watchnext.locations import local_path

    root = local_path(lakehouse)
    if root is None or not root.is_dir():
        return []
    return [(p.name, str(p.resolve())) for p in sorted(root.iterdir()) if (p / "_delta_log").is_dir()]


if __name__ == "__main__":
    sys.exit(main())
