"""The candidate pool to the capped top-N: ``blend.rank_candidates`` vs the Spark windows it replaced.

    .venv/bin/python benchmarks/bench_blend.py [--users 20000 --items 40000 --m 100] [--quick]

The recommend stage's last step at the 20M-interaction shape: per user, 6 sources x ``--m``
candidates plus 40 cluster-backfill rows (~640 rows a user), min-max normalised per user and source,
pooled per (user, item), blended with cold users on their own weights, capped at 2 per genre
cluster, top 10. The candidates are generated once (skewed item popularity, so sources overlap; tied
scores) and written to Parquet; both versions read them, in one session, and write the top-N to the
``noop`` sink:

* **Spark windows** (``watchnext.models.blend_windows``, the code before): repartition by user, a min-max
  window, a ``groupBy(user, item)`` with ``collect_set``, a join for the cold flag, the cap window,
  the pick window and the rank window;
* **rank_candidates**: one shuffle by user (the counts shuffled with the candidates), then pool,
  blend and cap in numpy on each whole partition.

Warm-up on a slice, then the best of ``--repeats``. Agreement: the two top-N tables are compared
whole (``exceptAll`` both ways). Figures go to ``benchmarks/results/bench_blend.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchtools import best
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from watchnext.config import SparkConfig
from watchnext.constants import COL_CLUSTER, COL_ITEM_IDX, COL_RANK, COL_SCORE, COL_USER_IDX
from watchnext.models import blend
from watchnext.models.blend_windows import spark_reference_ranking
from watchnext.session import build_session

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bench_blend.json"

SOURCES = ["als", "item", "user", "cluster", "popular", "trending"]
WEIGHTS = {"als": 1.0, "item": 0.8, "user": 0.5, "cluster": 0.2, "popular": 0.1, "trending": 0.1}
COLD = {"cluster": 1.0, "trending": 0.5}
CLUSTERS, CAP, N, BACKFILL = 20, 2, 10, 40


def candidates(spark: SparkSession, users: int, items: int, m: int, parts: int) -> DataFrame:
    """Per user and source up to ``m`` distinct items (popular ones more often), scores on a 1e-3 grid
    (ties), ranked; ``item`` rows carry an anchor; plus ``BACKFILL`` backfill rows."""
    per_user = len(SOURCES) * m + BACKFILL
    sources = F.array(*[F.lit(s) for s in [*SOURCES, "backfill"]])
    k = F.col("id") % per_user
    src = F.element_at(sources, F.least(k / m, F.lit(len(SOURCES))).cast("int") + 1)
    raw = spark.range(0, users * per_user, numPartitions=parts).select(
        (F.col("id") / per_user).cast("int").alias(COL_USER_IDX),
        src.alias("source"),
        F.floor(F.lit(items) * F.pow(F.rand(7), 2)).cast("int").alias(COL_ITEM_IDX),
        F.round(F.rand(8), 3).alias(COL_SCORE),
    )
    raw = raw.dropDuplicates([COL_USER_IDX, "source", COL_ITEM_IDX])
    order = Window.partitionBy(COL_USER_IDX, "source").orderBy(F.col(COL_SCORE).desc(), COL_ITEM_IDX)
    anchor = F.when(F.col("source") == "item", (F.col(COL_ITEM_IDX) * 31 + 7) % items)
    return raw.select(
        COL_USER_IDX,
        COL_ITEM_IDX,
        "source",
        COL_SCORE,
        F.row_number().over(order).cast("int").alias(COL_RANK),
        anchor.cast("int").alias(blend.COL_ANCHOR_IDX),
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=20_000)
    p.add_argument("--items", type=int, default=40_000)
    p.add_argument("--m", type=int, default=100)
    p.add_argument("--partitions", type=int, default=0, help="0: about 2M candidate rows each")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="2,000 users")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.users, args.repeats = 2_000, 1

    tmp = Path(tempfile.mkdtemp(prefix="bench-blend-"))
    spark = build_session(
        SparkConfig(
            app_name="bench-blend",
            master="local[*]",
            shuffle_partitions=8,
            log_level="ERROR",
            driver_memory="6g",
            local_dir=str(tmp / "local"),
            conf={"spark.ui.showConsoleProgress": "false"},
        ),
        checkpoint_dir=str(tmp / "ckpt"),
    )
    cores = spark.sparkContext.defaultParallelism
    t = time.perf_counter()
    path = str(tmp / "candidates")
    candidates(spark, args.users, args.items, args.m, 8).write.parquet(path)
    cand = spark.read.parquet(path)
    rows = cand.count()
    print(f"candidates: {rows:,} rows for {args.users:,} users, generated in {time.perf_counter() - t:.0f} s")
    parts = args.partitions or max(8, -(-rows // 2_000_000))
    items = args.items
    popularity = spark.range(items).select(
        F.col("id").cast("int").alias(COL_ITEM_IDX),
        (F.lit(items) - F.col("id") % 5000).cast("double").alias(COL_SCORE),
    )
    clusters = spark.range(items).select(
        F.col("id").cast("int").alias(COL_ITEM_IDX),
        F.when(F.col("id") % 50 != 0, F.col("id") % CLUSTERS).cast("int").alias(COL_CLUSTER),
    )
    counts = spark.range(args.users).select(
        F.col("id").cast("int").alias(COL_USER_IDX), ((F.col("id") * 7) % 60).alias("count")
    )
    common = (SOURCES, args.m, "minmax")

    def ours(users: int) -> DataFrame:
        c = cand.where(F.col(COL_USER_IDX) < users)
        scored = blend.rank_candidates(
            c, *common, WEIGHTS, clusters, N, CAP, popularity=popularity, counts=counts,
            cold_threshold=5, cold_weights=COLD, partitions=parts,
        )  # fmt: skip
        return scored.where(F.col(COL_RANK).isNotNull())

    def reference(users: int) -> DataFrame:
        c = cand.where(F.col(COL_USER_IDX) < users)
        return spark_reference_ranking(
            c, *common, popularity, counts, 5, WEIGHTS, COLD, clusters, N, CAP, every=False
        )

    def run(fn, users: int):  # type: ignore[no-untyped-def]
        return lambda: fn(users).write.format("noop").mode("overwrite").save()

    warm = max(1, args.users // 20)
    run(ours, warm)()
    run(reference, warm)()
    t_ref = best(run(reference, args.users), args.repeats)
    t_ours = best(run(ours, args.users), args.repeats)
    print(f"Spark windows {t_ref:.1f} s, rank_candidates {t_ours:.1f} s: {t_ref / t_ours:.2f}x")

    a = ours(args.users)
    b = reference(args.users).select(*a.columns)
    diff = a.exceptAll(b).count() + b.exceptAll(a).count()
    n_top = a.count()
    print(f"agreement: {n_top:,} top-N rows, {diff} differ")
    res = {
        "users": args.users,
        "items": items,
        "m": args.m,
        "candidate_rows": rows,
        "partitions": parts,
        "cores": cores,
        "reference_s": t_ref,
        "ours_s": t_ours,
        "speedup": t_ref / t_ours,
        "top_rows": n_top,
        "differing_rows": diff,
        "loadavg": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    spark.stop()
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if diff == 0 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
