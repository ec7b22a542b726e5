"""The Delta write path (``tables.overwrite_run_date``) against a plain Parquet write of the same frame.

    .venv/bin/python benchmarks/bench_delta_write.py [--rows 2000000] [--repeats 3] [--quick]

The frame has the ``interactions`` table's schema (user_id, item_id, user_idx, item_idx, rating,
timestamp, run_date), is generated once and cached, so every write reads the same in-memory rows:

* **plain Parquet**: ``df.write.mode("overwrite").partitionBy("run_date").parquet(path)``, the floor;
* **Delta, first write**: ``tables.overwrite_run_date`` into a new table (commit 0: the log, the
  schema and the per-file statistics Delta collects for data skipping);
* **Delta, re-run of the date**: the same call on the existing table (``replaceWhere`` of that date,
  the steady state of a daily job: the old files are logically removed in the same commit).

Each is the best of ``--repeats`` after a warm-up. Reported: seconds and the Delta / Parquet ratios.
Figures go to ``benchmarks/results/bench_delta_write.json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from benchtools import best
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from watchnext import tables
from watchnext.config import SparkConfig
from watchnext.constants import (
    COL_ITEM,
    COL_ITEM_IDX,
    COL_RATING,
    COL_RUN_DATE,
    COL_TIMESTAMP,
    COL_USER,
    COL_USER_IDX,
)
from watchnext.session import build_session

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bench_delta_write.json"
RUN_DATE = dt.date(2024, 6, 1)


def frame(spark: SparkSession, rows: int, users: int, items: int, partitions: int) -> DataFrame:
    """``rows`` interactions-shaped rows (deterministic), cached and materialised."""
    u = (F.col("id") % users).cast("int")
    i = ((F.col("id") * 7919) % items).cast("int")
    df = (
        spark.range(0, rows, numPartitions=partitions)
        .select(
            u.cast("string").alias(COL_USER),
            i.cast("string").alias(COL_ITEM),
            u.alias(COL_USER_IDX),
            i.alias(COL_ITEM_IDX),
            ((F.col("id") % 10) / 2 + 0.5).alias(COL_RATING),
            F.timestamp_seconds(F.lit(1_672_531_200) + F.col("id") % 31_536_000).alias(COL_TIMESTAMP),
            F.lit(RUN_DATE).alias(COL_RUN_DATE),
        )
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    df.count()
    return df


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--users", type=int, default=50_000)
    p.add_argument("--items", type=int, default=20_000)
    p.add_argument("--partitions", type=int, default=0, help="0: the local cores")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="200,000 rows")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.rows = 200_000

    tmp = Path(tempfile.mkdtemp(prefix="bench-delta-"))
    spark = build_session(
        SparkConfig(
            app_name="bench-delta-write",
            master="local[*]",
            shuffle_partitions=8,
            log_level="ERROR",
            driver_memory="3g",
            local_dir=str(tmp / "local"),
            conf={"spark.ui.showConsoleProgress": "false"},
        ),
        checkpoint_dir=str(tmp / "ckpt"),
    )
    cores = spark.sparkContext.defaultParallelism
    df = frame(spark, args.rows, args.users, args.items, args.partitions or cores)
    parts = df.rdd.getNumPartitions()
    print(f"frame: {args.rows:,} interactions-shaped rows, {parts} partitions, {cores} cores")

    parquet = str(tmp / "parquet")
    delta_new = str(tmp / "delta_new")
    delta = str(tmp / "delta")

    def plain() -> None:
        df.write.mode("overwrite").partitionBy(COL_RUN_DATE).parquet(parquet)

    def first() -> None:
        shutil.rmtree(delta_new, ignore_errors=True)
        tables.overwrite_run_date(df, delta_new, RUN_DATE, "bench")

    def rerun() -> None:
        tables.overwrite_run_date(df, delta, RUN_DATE, "bench")

    plain()  # warm-up: Parquet writer, Delta classes, the table the re-runs replace into
    rerun()
    t_plain = best(plain, args.repeats)
    t_first = best(first, args.repeats)
    t_rerun = best(rerun, args.repeats)
    n = spark.read.format("delta").load(delta).count()
    assert n == args.rows, (n, args.rows)
    size = sum(f.stat().st_size for f in Path(parquet).rglob("*.parquet")) / 2**20

    res = {
        "rows": args.rows,
        "cores": cores,
        "parquet_mib": size,
        "parquet_s": t_plain,
        "delta_first_write_s": t_first,
        "delta_rerun_s": t_rerun,
        "delta_first_over_parquet": t_first / t_plain,
        "delta_rerun_over_parquet": t_rerun / t_plain,
        "loadavg": os.getloadavg(),
    }
    print("| write | seconds | vs plain Parquet |\n|---|---|---|")
    print(f"| df.write.parquet (partitionBy run_date) | {t_plain:.2f} | 1.00x |")
    print(f"| tables.overwrite_run_date, new table | {t_first:.2f} | {t_first / t_plain:.2f}x |")
    print(f"| tables.overwrite_run_date, re-run of the date | {t_rerun:.2f} | {t_rerun / t_plain:.2f}x |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    spark.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
