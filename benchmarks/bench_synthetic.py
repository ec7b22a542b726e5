"""Generation rate of the synthetic source in local mode.

    .venv/bin/python benchmarks/bench_synthetic.py --interactions 2000000

Generates about ``--interactions`` rows (users = interactions / mean per user), drains them into the
``noop`` sink while an Observation counts the rows, and prints rows/second. The catalogue build and the
per-user count job of ``generate`` are timed separately from the drain.

Reference, side by side: the same number of rows with the same four string columns made by Spark
alone (``spark.range`` + arithmetic, no Python) and drained the same way: the floor of producing
rows in this Spark; the ratio says what the planted structure (numpy in ``mapInPandas``) costs on
top. Figures go to ``benchmarks/results/bench_synthetic.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

from pyspark.sql import Observation
from pyspark.sql import functions as F

from watchnext.config import SparkConfig, SyntheticConfig
from watchnext.ingest.synthetic import generate
from watchnext.session import build_session

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "bench_synthetic.json"


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interactions", type=int, default=2_000_000)
    ap.add_argument("--mean", type=float, default=40.0, help="mean interactions per user")
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--clusters", type=int, default=20)
    ap.add_argument("--partitions", type=int, default=0, help="0: 2 x the local cores")
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--quick", action="store_true", help="200,000 interactions")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON of the figures")
    args = ap.parse_args(argv)
    if args.quick:
        args.interactions = 200_000
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    spark = build_session(
        SparkConfig(app_name="bench-synthetic", master=args.master, log_level="ERROR", driver_memory="4g")
    )
    partitions = args.partitions or 2 * spark.sparkContext.defaultParallelism
    cfg = SyntheticConfig(
        n_users=max(1, round(args.interactions / args.mean)),
        n_items=args.items,
        n_clusters=args.clusters,
        mean_interactions_per_user=args.mean,
        partitions=partitions,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    data = generate(spark, cfg)
    t1 = time.perf_counter()
    obs = Observation("rows")
    data.source.interactions.observe(obs, F.count(F.lit(1)).alias("rows")).write.format("noop").mode(
        "overwrite"
    ).save()
    t2 = time.perf_counter()
    rows = obs.get["rows"]
    assert rows == data.n_interactions, (rows, data.n_interactions)
    # The reference: as many rows of four string columns from Spark alone.
    plain = spark.range(0, rows, numPartitions=partitions).select(
        (F.col("id") % cfg.n_users).cast("string").alias("user_id"),
        (F.col("id") * 7919 % cfg.n_items).cast("string").alias("item_id"),
        (F.col("id") % 10 / 2 + 0.5).cast("string").alias("rating"),
        (F.lit(1_672_531_200) + F.col("id") % 31_536_000).cast("string").alias("timestamp"),
    )
    plain.write.format("noop").mode("overwrite").save()  # warm-up
    t3 = time.perf_counter()
    plain.write.format("noop").mode("overwrite").save()
    t_plain = time.perf_counter() - t3
    print(
        f"synthetic: {rows:,} interactions, {cfg.n_users:,} users, {cfg.n_items:,} items, "
        f"{partitions} partitions on {spark.sparkContext.master} ({os.cpu_count()} cpus)\n"
        f"  generate() (catalogue + count job): {t1 - t0:.1f} s\n"
        f"  drain to noop sink: {t2 - t1:.1f} s -> {rows / (t2 - t1):,.0f} rows/s\n"
        f"  reference, Spark-only rows of the same shape: {t_plain:.1f} s -> {rows / t_plain:,.0f} rows/s; "
        f"ratio {(t2 - t1) / t_plain:.1f}x"
    )
    res = {
        "interactions": rows,
        "users": cfg.n_users,
        "items": cfg.n_items,
        "partitions": partitions,
        "cores": spark.sparkContext.defaultParallelism,
        "generate_s": t1 - t0,
        "drain_s": t2 - t1,
        "rows_per_s": rows / (t2 - t1),
        "spark_only_s": t_plain,
        "spark_only_rows_per_s": rows / t_plain,
        "drain_over_spark_only": (t2 - t1) / t_plain,
        "loadavg": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
