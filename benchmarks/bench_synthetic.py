"""Generation rate of the synthetic source in local mode.

    .venv/bin/python benchmarks/bench_synthetic.py --interactions 2000000

Generates about ``--interactions`` rows (users = interactions / mean per user), drains them into the
``noop`` sink while an Observation counts the rows, and prints rows/second. The catalogue build and the
per-user count job of ``generate`` are timed separately from the drain.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from pyspark.sql import Observation
from pyspark.sql import functions as F

from watchnext.config import SparkConfig, SyntheticConfig
from watchnext.ingest.synthetic import generate
from watchnext.session import build_session


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interactions", type=int, default=2_000_000)
    ap.add_argument("--mean", type=float, default=40.0, help="mean interactions per user")
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--clusters", type=int, default=20)
    ap.add_argument("--partitions", type=int, default=0, help="0: 2 x the local cores")
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args(argv)
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
    print(
        f"synthetic: {rows:,} interactions, {cfg.n_users:,} users, {cfg.n_items:,} items, "
        f"{partitions} partitions on {spark.sparkContext.master} ({os.cpu_count()} cpus)\n"
        f"  generate() (catalogue + count job): {t1 - t0:.1f} s\n"
        f"  drain to noop sink: {t2 - t1:.1f} s -> {rows / (t2 - t1):,.0f} rows/s"
    )
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
