"""User-user co-occurrence top-K: the blocked sparse kernel vs the textbook Spark self-join.

    .venv/bin/python benchmarks/bench_cooccurrence.py [--interactions 400000] [--k 50] [--min-overlap 2]

Data: the synthetic generator's interactions (``ingest/synthetic.py``: users = interactions / 40,
clustered tastes, popular items), users and items as int indices, cached in Spark. Both methods
compute each user's top ``--k`` neighbours by binary cosine ``|I_u & I_v| / sqrt(|I_u| |I_v|)`` over
pairs sharing at least ``--min-overlap`` items (the similarities stage's ``user_source:
cooccurrence``), and are timed end to end to a materialised table (a ``noop`` write) after a warm-up:

* **blocked**: ``models/neighbors.user_neighbors_from_cooccurrence`` (users packed into CSR blocks,
  one sparse product per block pair, only nonzeros at or above each row's running K-th score ranked);
* **self-join** (the reference): interactions joined with themselves on the item, pair overlaps
  counted with ``groupBy``, the same score in SQL, a window top-K: what a Spark user writes first.
  Its cost grows with the sum over items of (item's users)^2, the blocked one with the product's
  nonzeros.

The two outputs are compared exactly (``assertDataFrameEqual``, no tolerance: same counts, same IEEE
operations, same tie rule). Figures go to ``benchmarks/results/bench_cooccurrence.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from watchnext.config import SparkConfig, SyntheticConfig
from watchnext.constants import (
    COL_ITEM,
    COL_ITEM_IDX,
    COL_NEIGHBOR_IDX,
    COL_RANK,
    COL_SCORE,
    COL_USER,
    COL_USER_IDX,
)
from watchnext.ingest.synthetic import generate
from watchnext.models.neighbors import user_neighbors_from_cooccurrence
from watchnext.session import build_session

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "bench_cooccurrence.json"


def self_join(inter: DataFrame, k: int, min_overlap: int) -> DataFrame:
    """The reference: all user pairs sharing an item, by a self-join on the item."""
    sizes = inter.groupBy(COL_USER_IDX).agg(F.count(F.lit(1)).cast("double").alias("n"))
    a = inter.select(F.col(COL_USER_IDX).alias("u"), COL_ITEM_IDX)
    b = inter.select(F.col(COL_USER_IDX).alias("v"), COL_ITEM_IDX)
    pairs = (
        a.join(b, COL_ITEM_IDX)
        .where(F.col("u") != F.col("v"))
        .groupBy("u", "v")
        .agg(F.count(F.lit(1)).cast("double").alias("c"))
        .where(F.col("c") >= min_overlap)
        .join(sizes.select(F.col(COL_USER_IDX).alias("u"), F.col("n").alias("nu")), "u")
        .join(sizes.select(F.col(COL_USER_IDX).alias("v"), F.col("n").alias("nv")), "v")
        .select("u", "v", F.sqrt((F.col("c") * F.col("c")) / (F.col("nu") * F.col("nv"))).alias(COL_SCORE))
    )
    order = Window.partitionBy("u").orderBy(F.col(COL_SCORE).desc(), F.col("v").asc())
    return (
        pairs.withColumn(COL_RANK, F.row_number().over(order).cast("int"))
        .where(F.col(COL_RANK) <= k)
        .select(F.col("u").alias(COL_USER_IDX), F.col("v").alias(COL_NEIGHBOR_IDX), COL_SCORE, COL_RANK)
    )


def timed(df: DataFrame) -> float:
    t0 = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - t0


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--interactions", type=int, default=400_000)
    ap.add_argument("--mean", type=float, default=40.0, help="mean interactions per user")
    ap.add_argument("--items", type=int, default=5_000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--min-overlap", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per method (best kept)")
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--quick", action="store_true", help="60,000 interactions, one repeat")
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON of the figures")
    args = ap.parse_args(argv)
    if args.quick:
        args.interactions, args.items, args.repeats = 60_000, 2_000, 1

    spark = build_session(
        SparkConfig(
            app_name="bench-cooccurrence",
            master=args.master,
            log_level="ERROR",
            driver_memory="6g",
            shuffle_partitions=2 * os.cpu_count(),
        )
    )
    cfg = SyntheticConfig(
        n_users=max(1, round(args.interactions / args.mean)),
        n_items=args.items,
        n_clusters=20,
        mean_interactions_per_user=args.mean,
        partitions=2 * spark.sparkContext.defaultParallelism,
        seed=42,
    )
    inter = (
        generate(spark, cfg)
        .source.interactions.select(
            F.col(COL_USER).cast("int").alias(COL_USER_IDX), F.col(COL_ITEM).cast("int").alias(COL_ITEM_IDX)
        )
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    n = inter.count()
    stats = (
        inter.groupBy(COL_ITEM_IDX)
        .agg(F.count(F.lit(1)).alias("c"))
        .agg(F.sum(F.col("c") * F.col("c")).alias("join_rows"))
    )
    join_rows = int(stats.first()["join_rows"])
    print(
        f"{n:,} interactions, {cfg.n_users:,} users, {cfg.n_items:,} items; the self-join makes "
        f"{join_rows:,} (user, user, item) rows",
        flush=True,
    )

    def blocked() -> DataFrame:
        return user_neighbors_from_cooccurrence(
            inter, args.k, min_overlap=args.min_overlap, block_size=args.block_size
        )

    def reference() -> DataFrame:
        return self_join(inter, args.k, args.min_overlap)

    times: dict[str, list[float]] = {"blocked": [], "self_join": []}
    timed(blocked())  # warm-up: Python workers, JIT
    timed(reference())
    for _ in range(args.repeats):
        for name, make in (("blocked", blocked), ("self_join", reference)):
            times[name].append(timed(make()))
            print(f"  {name}: {times[name][-1]:.1f} s", flush=True)
    ours, ref = blocked(), reference()
    assertDataFrameEqual(ours, ref, rtol=0.0, atol=0.0)
    rows = ours.count()
    best = {name: min(v) for name, v in times.items()}
    print(
        f"identical ({rows:,} neighbour rows); best blocked {best['blocked']:.1f} s, best self-join "
        f"{best['self_join']:.1f} s: blocked / self-join = {best['blocked'] / best['self_join']:.3f} "
        f"({best['self_join'] / best['blocked']:.1f}x faster)"
    )
    res = {
        "interactions": n,
        "users": cfg.n_users,
        "items": cfg.n_items,
        "k": args.k,
        "min_overlap": args.min_overlap,
        "block_size": args.block_size,
        "self_join_rows": join_rows,
        "neighbour_rows": rows,
        "identical": True,
        "blocked_s": best["blocked"],
        "self_join_s": best["self_join"],
        "runs": times,
        "cores": spark.sparkContext.defaultParallelism,
        "loadavg": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
