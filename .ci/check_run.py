"""What a user gets from `make run`, checked after CI ran it as the README says (default config).

    .venv/bin/python .ci/check_run.py check --snapshot DIR   # after the first `make run`
    .venv/bin/python .ci/check_run.py same-as DIR            # after a second `make run` of the same date

`check` asserts, from the tables the run wrote (paths from the config, resolved as the CLI does):
  - `recommendations_latest` holds exactly `recommend.n` distinct items for every user of `user_index`,
    none of them an item the user interacted with;
  - the report page of the run date exists and has a row for every stage of `pipeline.stages`;
  - `watchnext recommend --user <id>` prints that user's list;
and writes every Delta table (lineage columns dropped: run ids, model versions) to DIR as Parquet.
`same-as` asserts that every table now equals that snapshot (doubles compared to 1e-6).
Exit status 1 with one line per failed check.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
from pathlib import Path

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext import tables
from watchnext.cli import delta_tables
from watchnext.config import Config, load_config
from watchnext.locations import local_path
from watchnext.pipeline import session_for
from watchnext.stages.report import report_path

ROOT = Path(__file__).resolve().parents[1]
# Columns that name the run rather than hold its results: a second run has new MLflow runs and model
# versions by design.
LINEAGE = {"run_id", "mlflow_run_id", "model_versions", "model_version", "created_at", "written_at"}
TOLERANCE_DIGITS = 6
SHOWN_DIFFERENCES = 5  # rows of each side printed when a re-run changed a table


def fail(problems: list[str], msg: str) -> None:
    print(f"check_run: FAIL {msg}", file=sys.stderr)
    problems.append(msg)


def check_lists(spark: SparkSession, cfg: Config, problems: list[str]) -> tuple[dt.date, str]:
    latest = tables.read(spark, cfg.table_path("recommendations_latest"))
    dates = [r[0] for r in latest.select("run_date").distinct().collect()]
    if len(dates) != 1:
        fail(problems, f"recommendations_latest holds {len(dates)} run dates, expected 1: {dates}")
    run_date = max(dates)
    users = tables.read(spark, cfg.table_path("user_index")).select("user_id")
    seen = tables.read_run_date(spark, cfg.table_path("interactions"), run_date).select("user_id", "item_id")
    n = cfg.recommend.n
    per_user = latest.groupBy("user_id").agg(
        F.count("*").alias("rows"), F.countDistinct("item_id").alias("items")
    )
    bad = (
        users.join(per_user, "user_id", "left")
        .where(F.coalesce("rows", F.lit(0)) != n)
        .unionByName(users.join(per_user, "user_id").where(F.col("items") != n))
    )
    n_bad = bad.count()
    if n_bad:
        fail(problems, f"{n_bad} users of user_index lack exactly {n} distinct items, e.g. {bad.head(3)}")
    seen_recs = latest.join(seen, ["user_id", "item_id"]).count()
    if seen_recs:
        fail(problems, f"{seen_recs} recommended items were already seen by their user")
    n_users = users.count()
    print(f"check_run: ok  recommendations_latest: {n} distinct unseen items for each of {n_users} users")
    return run_date, str(latest.select("user_id").orderBy("user_id").first()[0])


def check_report(cfg: Config, run_date: dt.date, problems: list[str]) -> None:
    path = local_path(report_path(cfg.report.out_dir, run_date))
    if path is None or not path.is_file():
        fail(problems, f"no report page at {path}")
        return
    page = path.read_text(encoding="utf-8")
    rows = set(re.findall(r'data-stage="([^"]+)"', page))
    missing = [s for s in cfg.pipeline.stages if s not in rows]
    if missing:
        fail(problems, f"the report {path} has no row for the stages {missing} (rows: {sorted(rows)})")
    else:
        print(f"check_run: ok  report {path} names every stage: {', '.join(cfg.pipeline.stages)}")


def check_serving(cfg: Config, user: str, problems: list[str]) -> None:
    cmd = [str(ROOT / ".venv" / "bin" / "watchnext"), "recommend", "--user", user]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    items = [ln for ln in lines[1:] if re.match(r"\s*\d+\. ", ln)]
    if out.returncode != 0 or not lines or not lines[0].startswith(f"Top {cfg.recommend.n} for user {user}"):
        tail = f"{out.stdout[-500:]}{out.stderr[-500:]}"
        fail(problems, f"`{' '.join(cmd[1:])}` exited {out.returncode}: {tail}")
    elif len(items) != cfg.recommend.n:
        fail(problems, f"`watchnext recommend --user {user}` printed {len(items)} items:\n{out.stdout}")
    else:
        print(f"check_run: ok  `watchnext recommend --user {user}` printed:\n{out.stdout.rstrip()}")


def _rounded(field: T.StructField) -> Column:
    c, t = F.col(f"`{field.name}`"), field.dataType
    if isinstance(t, T.DoubleType | T.FloatType):
        return F.round(c, TOLERANCE_DIGITS).alias(field.name)
    if isinstance(t, T.ArrayType) and isinstance(t.elementType, T.DoubleType | T.FloatType):
        return F.transform(c, lambda x: F.round(x, TOLERANCE_DIGITS)).alias(field.name)
    return c


def comparable(df: DataFrame) -> DataFrame:
    """The table without lineage columns, doubles rounded; maps (unorderable) as sorted entry arrays."""
    cols = []
    for f in df.schema.fields:
        if f.name in LINEAGE:
            continue
        if isinstance(f.dataType, T.MapType):
            cols.append(F.array_sort(F.map_entries(f"`{f.name}`")).alias(f.name))
        else:
            cols.append(_rounded(f))
    return df.select(*cols)


def snapshot(spark: SparkSession, cfg: Config, out: Path) -> list[str]:
    names = []
    for name, path in delta_tables(cfg.storage.lakehouse):
        comparable(tables.read(spark, path)).write.mode("overwrite").parquet(str(out / name))
        names.append(name)
    print(f"check_run: ok  snapshot of {len(names)} tables in {out}")
    return names


def same_as(spark: SparkSession, cfg: Config, snap: Path, problems: list[str]) -> None:
    before = sorted(p.name for p in snap.iterdir() if p.is_dir())
    now = dict(delta_tables(cfg.storage.lakehouse))
    if sorted(now) != before:
        fail(problems, f"tables differ: before {before}, now {sorted(now)}")
    for name in before:
        if name not in now:
            continue
        a = spark.read.parquet(str(snap / name))
        b = comparable(tables.read(spark, now[name]))
        if a.schema != b.schema:
            fail(problems, f"{name}: schema changed: {a.schema.simpleString()} -> {b.schema.simpleString()}")
            continue
        only_a, only_b = a.exceptAll(b).count(), b.exceptAll(a).count()
        if only_a or only_b:
            fail(problems, f"{name}: {only_a} rows only before, {only_b} rows only after the second run")
            for label, rows in (("before", a.exceptAll(b)), ("after", b.exceptAll(a))):
                for row in rows.limit(SHOWN_DIFFERENCES).collect():
                    print(f"check_run:   only {label}: {row.asDict()}")
    if not problems:
        print(f"check_run: ok  the second run left all {len(before)} tables equal (lineage columns aside)")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check")
    c.add_argument("--snapshot", type=Path, required=True)
    s = sub.add_parser("same-as")
    s.add_argument("snapshot", type=Path)
    args = p.parse_args(argv)
    cfg = load_config()  # what `make run` used: the default env, paths resolved against this folder
    spark = session_for(cfg.with_overrides("spark.log_level=ERROR"))
    problems: list[str] = []
    if args.command == "check":
        run_date, user = check_lists(spark, cfg, problems)
        check_report(cfg, run_date, problems)
        check_serving(cfg, user, problems)
        snapshot(spark, cfg, args.snapshot.resolve())
    else:
        same_as(spark, cfg, args.snapshot.resolve(), problems)
    spark.stop()
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
