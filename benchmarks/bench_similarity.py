"""Item-item top-K on the same factors: blocked exact vs Spark's LSH join vs a naive crossJoin.

    .venv/bin/python benchmarks/bench_similarity.py [--k 20] [--rank 64] [--naive-items 3000]

Factors: ALS item factors fitted on ml-latest-small when present (``--data``), else random low-rank
cluster-structured factors for ``--items`` items. Every method gets the same L2-normalised factors,
cached in Spark, and is timed end to end to a materialised top-K (a ``noop`` write) after a warm-up:

* **blocked exact**: ``models/similarity.item_neighbors_from_factors`` (BLAS per block pair, top-K per
  block, merge);
* **LSH**: ``BucketedRandomProjectionLSH`` + ``approxSimilarityJoin`` at a Euclidean threshold that
  covers the exact K-th neighbour of ``--threshold-quantile`` of the items (for unit vectors
  ``dist^2 = 2 - 2 cos``), then a window top-K; a grid of bucket lengths and table counts, each
  reported with its recall@K against the exact lists;
* **naive**: ``crossJoin`` of all pairs with a SQL dot product and a window top-K, on the first
  ``--naive-items`` items (it is quadratic in rows), the blocked engine timed on the same subset.

Prints every timing and the ratios; the target is exact blocked >= 3x faster than LSH at equal recall.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.ml.feature import BucketedRandomProjectionLSH
from pyspark.ml.functions import array_to_vector
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from watchnext.config import SparkConfig
from watchnext.constants import COL_FEATURES, COL_ITEM_IDX, COL_NEIGHBOR_IDX, COL_RANK, COL_SCORE
from watchnext.models.neighbors import item_neighbors_from_factors
from watchnext.session import build_session

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bench_similarity.json"


def factors(spark: SparkSession, data: Path, rank: int, n_items: int, seed: int) -> tuple[pd.DataFrame, str]:
    ratings = data / "ratings.csv"
    if ratings.exists():
        from watchnext.models import AlsParams, fit_als

        pdf = pd.read_csv(ratings).rename(columns={"userId": "user_idx", "movieId": "item_idx"})
        df = spark.createDataFrame(pdf[["user_idx", "item_idx", "rating"]])
        model = fit_als(
            df, AlsParams(rank=rank, max_iter=10, reg_param=0.3, alpha=3.0, implicit_prefs=True, seed=seed)
        )
        f = model.itemFactors.toPandas().rename(columns={"id": COL_ITEM_IDX})
        return f, f"ALS rank {rank} item factors of ml-latest-small ({len(f)} items)"
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(50, rank))
    x = centres[rng.integers(0, 50, n_items)] + 0.7 * rng.normal(size=(n_items, rank))
    f = pd.DataFrame({COL_ITEM_IDX: np.arange(n_items), COL_FEATURES: list(x.astype(np.float32))})
    return f, f"random clustered factors ({n_items} items, rank {rank})"


def timed(df: DataFrame) -> float:
    t = time.perf_counter()
    df.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - t


def exact(f: DataFrame, k: int, block_size: int) -> DataFrame:
    return item_neighbors_from_factors(f, k, block_size=block_size)


def top_k(pairs: DataFrame, k: int) -> DataFrame:
    w = Window.partitionBy(COL_ITEM_IDX).orderBy(F.col(COL_SCORE).desc(), F.col(COL_NEIGHBOR_IDX))
    return pairs.withColumn(COL_RANK, F.row_number().over(w)).where(F.col(COL_RANK) <= k)


def lsh(unit: DataFrame, k: int, bucket: float, tables: int, threshold: float, seed: int) -> DataFrame:
    model = BucketedRandomProjectionLSH(
        inputCol="v", outputCol="h", bucketLength=bucket, numHashTables=tables, seed=seed
    ).fit(unit)
    hashed = model.transform(unit).persist(StorageLevel.MEMORY_AND_DISK)
    joined = model.approxSimilarityJoin(hashed, hashed, threshold, distCol="dist")
    pairs = joined.select(
        F.col("datasetA.item_idx").alias(COL_ITEM_IDX),
        F.col("datasetB.item_idx").alias(COL_NEIGHBOR_IDX),
        (1 - F.col("dist") * F.col("dist") / 2).alias(COL_SCORE),  # unit vectors: cos = 1 - d^2/2
    ).where(F.col(COL_ITEM_IDX) != F.col(COL_NEIGHBOR_IDX))
    return top_k(pairs, k)


def naive(unit_arr: DataFrame, k: int) -> DataFrame:
    a = unit_arr.select(F.col(COL_ITEM_IDX), F.col("u").alias("a"))
    b = unit_arr.select(F.col(COL_ITEM_IDX).alias(COL_NEIGHBOR_IDX), F.col("u").alias("b"))
    dot = F.aggregate(F.zip_with("a", "b", lambda x, y: x * y), F.lit(0.0), lambda acc, x: acc + x)
    pairs = (
        a.crossJoin(b)
        .where(F.col(COL_ITEM_IDX) != F.col(COL_NEIGHBOR_IDX))
        .select(COL_ITEM_IDX, COL_NEIGHBOR_IDX, dot.alias(COL_SCORE))
    )
    return top_k(pairs, k)


def recall(found: pd.DataFrame, unit: np.ndarray, ids: np.ndarray, kth: np.ndarray, k: int) -> float:
    """recall@K, tie-aware: a returned neighbour counts when its exact (float64) cosine reaches the
    item's exact K-th best cosine (minus 1e-6). ALS factors of items rated by the same one or two
    users are near-duplicates, so the identity of the K-th neighbour is arbitrary; its score is not."""
    pos = pd.Series(np.arange(len(ids)), index=ids)
    a = pos[found[COL_ITEM_IDX].to_numpy()].to_numpy()
    b = pos[found[COL_NEIGHBOR_IDX].to_numpy()].to_numpy()
    cos = np.einsum("ij,ij->i", unit[a], unit[b])
    return float(np.sum(cos >= kth[a] - 1e-6)) / (len(ids) * k)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "ml-latest-small")
    p.add_argument("--items", type=int, default=10_000, help="synthetic items when --data is absent")
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--block-size", type=int, default=2048)
    p.add_argument("--naive-items", type=int, default=3000)
    p.add_argument("--buckets", default="0.1,0.2,0.4,0.8")
    p.add_argument("--tables", default="1,2,4")
    p.add_argument("--threshold-quantile", type=float, default=0.99)
    p.add_argument("--lsh-budget", type=float, default=1200.0, help="stop the LSH grid after this many s")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON of the figures")
    args = p.parse_args(argv)

    spark = build_session(
        SparkConfig(
            master="local[*]",
            shuffle_partitions=8,
            log_level="ERROR",
            driver_memory="6g",
            conf={"spark.ui.showConsoleProgress": "false"},
        ),
        checkpoint_dir="/tmp/watchnext-bench-ckpt",
    )
    fpdf, name = factors(spark, args.data, args.rank, args.items, args.seed)
    x = np.stack(fpdf[COL_FEATURES].to_numpy()).astype(np.float64)
    unit_np = x / np.linalg.norm(x, axis=1)[:, None]
    base = spark.createDataFrame(
        pd.DataFrame({COL_ITEM_IDX: fpdf[COL_ITEM_IDX].astype("int32"), "u": list(unit_np)})
    ).persist(StorageLevel.MEMORY_AND_DISK)
    n = base.count()
    f = base.select(COL_ITEM_IDX, F.col("u").alias(COL_FEATURES))
    unit_vec = base.select(COL_ITEM_IDX, array_to_vector("u").alias("v")).persist(
        StorageLevel.MEMORY_AND_DISK
    )
    unit_vec.count()
    print(f"factors: {name}; K={args.k}; cores={spark.sparkContext.defaultParallelism}", flush=True)

    # warm-up (Python workers, code paths), then the exact lists (the recall reference)
    timed(exact(f.limit(500), args.k, args.block_size))
    t_exact = timed(exact(f, args.k, args.block_size))
    truth = exact(f, args.k, args.block_size).toPandas()
    print(f"blocked exact        {t_exact:8.2f} s", flush=True)

    # the exact lists against numpy in float64 (the engine scores in float32)
    sims = unit_np @ unit_np.T
    np.fill_diagonal(sims, -np.inf)
    kth = -np.partition(-sims, args.k - 1, axis=1)[:, args.k - 1]
    del sims
    ids = fpdf[COL_ITEM_IDX].to_numpy()
    print(f"  exact blocked vs numpy float64: recall@{args.k} {recall(truth, unit_np, ids, kth, args.k):.4f}")

    # LSH grid at a threshold that admits the exact K-th neighbour of most items
    dist_k = np.sqrt(np.maximum(0.0, 2 - 2 * kth))
    threshold = float(np.quantile(dist_k, args.threshold_quantile))
    print(
        f"LSH threshold (Euclidean) {threshold:.3f} (covers {args.threshold_quantile:.0%} of K-th neighbours)"
    )
    lsh_rows = []
    spent = 0.0
    for tables in [int(t) for t in args.tables.split(",")]:
        for bucket in [float(b) for b in args.buckets.split(",")]:
            if spent > args.lsh_budget:
                print(f"LSH grid stopped: {spent:.0f} s spent (--lsh-budget)")
                break
            t = time.perf_counter()
            res = lsh(unit_vec, args.k, bucket, tables, threshold, args.seed).select(
                COL_ITEM_IDX, COL_NEIGHBOR_IDX
            )
            got = res.toPandas()
            dt = time.perf_counter() - t
            spent += dt
            r = recall(got, unit_np, ids, kth, args.k)
            lsh_rows.append({"bucket": bucket, "tables": tables, "seconds": dt, "recall": r})
            print(f"LSH b={bucket:<5} L={tables:<2}   {dt:8.2f} s   recall@{args.k} {r:.3f}", flush=True)

    # naive crossJoin on a subset, with the blocked engine on the same subset
    sub = base.orderBy(COL_ITEM_IDX).limit(args.naive_items).persist(StorageLevel.MEMORY_AND_DISK)
    m = sub.count()
    t_naive = timed(naive(sub, args.k))
    t_exact_sub = timed(
        exact(sub.select(COL_ITEM_IDX, F.col("u").alias(COL_FEATURES)), args.k, args.block_size)
    )
    print(f"naive crossJoin      {t_naive:8.2f} s   on {m} items (blocked exact there: {t_exact_sub:.2f} s)")

    print("\nratios (higher = blocked exact faster)")
    out = {"factors": name, "items": n, "k": args.k, "exact_s": t_exact, "naive_items": m}
    out.update({"naive_s": t_naive, "exact_on_naive_items_s": t_exact_sub, "lsh_runs": lsh_rows})
    out["cores"] = spark.sparkContext.defaultParallelism
    out["naive_over_exact"] = t_naive / t_exact_sub
    print(f"  naive crossJoin / blocked exact ({m} items): {out['naive_over_exact']:.1f}x")
    for target in (0.8, 0.9, 0.95, 0.99):
        ok = [row for row in lsh_rows if row["recall"] >= target]
        if ok:
            best = min(ok, key=lambda row: row["seconds"])
            ratio = best["seconds"] / t_exact
            out[f"lsh_over_exact_at_recall_{target}"] = ratio
            print(
                f"  fastest LSH with recall >= {target}: b={best['bucket']} L={best['tables']} "
                f"{best['seconds']:.1f} s -> {ratio:.1f}x slower than exact (recall 1.0)"
            )
        else:
            print(f"  no LSH configuration reached recall {target}")
    best_recall = max(lsh_rows, key=lambda row: row["recall"]) if lsh_rows else None
    if best_recall:
        out["lsh_best_recall"] = best_recall["recall"]
        out["lsh_best_recall_over_exact"] = best_recall["seconds"] / t_exact
        print(
            f"  most accurate LSH: recall {best_recall['recall']:.3f} in {best_recall['seconds']:.1f} s "
            f"({best_recall['seconds'] / t_exact:.1f}x the exact time)"
        )
    print(json.dumps(out))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
