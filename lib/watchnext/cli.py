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
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Keras 2 API for Horovod (see STACK.md)

log = logging.getLogger("watchnext")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--env", help="config environment: conf/<env>.yaml (default: $WATCHNEXT_ENV or local)")
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="extra YAML config layer")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
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

    from watchnext.config import ConfigError, load_config

    try:
        cfg = load_config(env=args.env, files=args.config, overrides=args.conf)
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
    # Only the commands that run Spark get a session (and pay for the JVM).
    from watchnext.session import PreflightError

    try:
        spark = pipeline.session_for(cfg)
    except PreflightError as exc:
        print(str(exc), file=sys.stderr)
        return 3
    if args.command == "generate":
        from watchnext.ingest.synthetic import generate, write_csv

        data = generate(spark, cfg.ingest.synthetic)
        # Plain files for local folders (the MovieLens reader's layout); part-file folders on URIs.
        write_csv(data, args.out, single_file="://" not in args.out)
        result: dict[str, Any] = {"generate": {"out": args.out}}
    elif args.command == "run":
        stages = args.stages.split(",") if args.stages else None
        result = pipeline.run_pipeline(spark, cfg, args.run_date, stages)
    else:
        result = {args.command: pipeline.run_stage(spark, cfg, args.run_date, args.command)}
    print(json.dumps(result, indent=2, default=str) if args.json else format_summary(result, cfg))
    return 0


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
    """``Top N for user U (run_date D, run R):`` then one line per item: rank, title, score, reason."""
    width = min(max((len(r.display_title) for r in recs.items), default=0), 60)
    run_date = recs.run_date.isoformat() if recs.run_date else "?"
    run = recs.run_id or "?"
    lines = [f"Top {len(recs.items)} for user {recs.user_id} (run_date {run_date}, run {run}):"]
    for r in recs.items:
        line = f"{r.rank:>2}. {r.display_title:<{width}}  {r.score:.3f}"
        lines.append(f"{line}  {r.reason}" if r.reason else line)
    return "\n".join(lines)


def format_summary(result: dict[str, dict[str, Any]], cfg: Any) -> str:
    """A short human summary of each stage's result."""
    lines = []
    for stage, summary in result.items():
        lines.append(f"== {stage}")
        for k, v in summary.items():
            if isinstance(v, dict):
                lines.append(f"   {k}:")
                lines.extend(f"      {kk:<40} {vv}" for kk, vv in v.items())
            else:
                lines.append(f"   {k:<30} {v}")
    lines.append(f"Delta tables under {cfg.storage.lakehouse}:")
    lines.extend(f"   {name:<24} {path}" for name, path in delta_tables(cfg.storage.lakehouse))
    lines.append(f"MLflow store {cfg.mlflow.tracking_uri}")
    if "recommend" in result:
        lines.append("Serve one user's list: watchnext recommend --user <user_id>")
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
