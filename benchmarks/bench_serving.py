"""Serving read latency: one user's top-N from ``recommendations_latest`` via watchnext.serving vs Spark.

    .venv/bin/python benchmarks/bench_serving.py [--users 100000] [--k 10] [--files 4] [--json PATH]

Writes a ``recommendations_latest`` table of ``--users`` x ``--k`` rows with Spark, in the recommend
stage's layout (the full schema, sorted by user_id, ``--files`` files by ``repartitionByRange``), under
``--dir`` (reused when it already holds a table of that size; ``--rewrite`` forces a new one). Then:

* **cold**: ``RecommendationStore(path)`` (reads the Delta log) plus the first lookup, in this process
  (imports already done), and ``python -m watchnext.cli recommend --user ID`` end to end in a fresh
  interpreter (imports, config, open, lookup, print);
* **warm**: ``--lookups`` random users on one open store: p50 / p95 / p99 / mean per lookup (ms), with
  the default engine (DataFusion: file, row-group and page-index pruning), and ``--pyarrow-lookups``
  with the ``pyarrow`` engine (a filtered pyarrow dataset: file and row-group pruning only);
* **Spark**: the same lookup as ``spark.read.format("delta").load(path).where(user_id = X).collect()``
  on a warm session, ``--spark-lookups`` random users; every answer is checked against the API's.

Prints the timings and the ratios Spark p50 / API p50 (and pyarrow p50 / DataFusion p50).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from watchnext.config import SparkConfig
from watchnext.constants import COL_USER, TABLE_RECOMMENDATIONS_LATEST
from watchnext.serving import RecommendationStore
from watchnext.session import build_session

REPO = Path(__file__).resolve().parents[1]
SCRATCH = Path("/tmp/wn_serve")


def write_table(spark: SparkSession, path: str, users: int, k: int, files: int) -> None:
    """``users`` x ``k`` rows with the recommend stage's schema, sorted by user_id."""
    ranks = spark.range(1, k + 1).select(F.col("id").cast("int").alias("rank"))
    item = (F.col("user_idx") * 7919 + F.col("rank") * 104729) % 50000
    df = (
        spark.range(users)
        .select(F.col("id").cast("int").alias("user_idx"))
        .crossJoin(ranks)
        .select(
            (F.col("user_idx") + 1).cast("string").alias("user_id"),  # MovieLens-style numeric ids
            "user_idx",
            "rank",
            item.cast("string").alias("item_id"),
            F.concat(F.lit("Movie number "), item.cast("string"), F.lit(" (1995)")).alias("title"),
            (F.lit(1.0) / F.col("rank") + F.rand(7) * 0.01).alias("score"),
            F.when(
                F.col("rank") % 3 == 0,
                F.concat(F.lit("Popular in cluster "), (item % 40).cast("string")),
            )
            .otherwise(
                F.concat(F.lit("Because you watched Movie number "), ((item + 1) % 50000).cast("string"))
            )
            .alias("reason"),
            F.when(F.col("rank") % 2 == 0, F.array(F.lit("als"), F.lit("item_knn")))
            .otherwise(F.array(F.lit("als")))
            .alias("sources"),
            F.create_map(F.lit("als"), F.lit("7"), F.lit("clusters"), F.lit("3")).alias("model_versions"),
            F.lit("0123456789abcdef0123456789abcdef").alias("run_id"),
            F.to_date(F.lit("2024-06-01")).alias("run_date"),
        )
    )
    (
        df.repartitionByRange(files, COL_USER)
        .sortWithinPartitions(COL_USER, "rank")
        .write.format("delta")
        .mode("overwrite")
        .option("overwriteSchema", "true")
        .save(path)
    )


def explain(store: RecommendationStore, user: str) -> dict[str, str]:
    """The scan's pruning metrics from DataFusion's EXPLAIN ANALYZE (best effort)."""
    query = store._snapshot.query
    assert query is not None
    sql = f"EXPLAIN ANALYZE SELECT * FROM recs WHERE {COL_USER} = '{user}'"
    plan = " ".join(str(v) for v in pa.RecordBatchReader.from_stream(query.execute(sql)).read_all()["plan"])
    keys = ("row_groups_pruned_statistics", "page_index_rows_pruned", "bytes_scanned", "files_opened")
    out = {}
    for key in keys:
        m = re.search(rf"{key}=([^,\]]+)", plan)
        if m:
            out[key] = m.group(1).strip()
    return out


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))]


def summary(ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": pct(ms, 50),
        "p95_ms": pct(ms, 95),
        "p99_ms": pct(ms, 99),
        "mean_ms": statistics.fmean(ms),
        "n": len(ms),
    }


def fmt(s: dict[str, float]) -> str:
    return (
        f"p50 {s['p50_ms']:8.2f} ms   p95 {s['p95_ms']:8.2f} ms   p99 {s['p99_ms']:8.2f} ms   "
        f"mean {s['mean_ms']:8.2f} ms   (n={s['n']})"
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--k", type=int, default=10, help="rows per user")
    p.add_argument("--files", type=int, default=4, help="Parquet files (repartitionByRange on user_id)")
    p.add_argument("--lookups", type=int, default=2000, help="warm API lookups (DataFusion engine)")
    p.add_argument("--pyarrow-lookups", type=int, default=200, help="warm API lookups (pyarrow engine)")
    p.add_argument("--spark-lookups", type=int, default=20)
    p.add_argument("--cli-runs", type=int, default=3, help="end-to-end CLI invocations")
    p.add_argument("--dir", type=Path, default=SCRATCH / "bench")
    p.add_argument("--rewrite", action="store_true", help="write the table even if one of that size exists")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results here as JSON")
    args = p.parse_args(argv)

    lakehouse = args.dir / f"u{args.users}_k{args.k}_f{args.files}" / "lakehouse"
    path = str(lakehouse / TABLE_RECOMMENDATIONS_LATEST)
    rng = random.Random(args.seed)
    spark = build_session(
        SparkConfig(
            master="local[*]",
            shuffle_partitions=max(4, args.files),
            log_level="ERROR",
            driver_memory="3g",
            local_dir=str(args.dir / "spark-local"),
            conf={"spark.ui.showConsoleProgress": "false"},
        ),
        checkpoint_dir=str(args.dir / "checkpoints"),
    )
    rows = args.users * args.k
    reuse = not args.rewrite and (Path(path) / "_delta_log").is_dir() and DeltaTable(path).count() == rows
    if not reuse:
        t = time.perf_counter()
        write_table(spark, path, args.users, args.k, args.files)
        print(f"wrote {rows:,} rows ({args.users:,} users x {args.k}) in {time.perf_counter() - t:.1f} s")
    else:
        print(f"reusing the table at {path}")
    data_files = sorted(Path(path).glob("*.parquet"))
    size_mb = sum(f.stat().st_size for f in data_files) / 2**20
    print(f"table {path}: {len(data_files)} files, {size_mb:.1f} MiB; cores {os.cpu_count()}")

    # ---- cold: open (Delta log) + first lookup, in process
    user = str(rng.randint(1, args.users))
    t = time.perf_counter()
    store = RecommendationStore(path)
    t_open = time.perf_counter() - t
    first = store.for_user(user)
    t_cold = time.perf_counter() - t
    assert len(first) == args.k and store.active_engine == "datafusion"
    print(f"cold open {t_open * 1e3:.1f} ms; open + first lookup {t_cold * 1e3:.1f} ms")
    pruning = explain(store, user)
    print(f"DataFusion pruning for one lookup: {pruning}")

    # ---- cold: the CLI end to end, fresh interpreter each time
    cli_s = []
    for _ in range(args.cli_runs):
        u = str(rng.randint(1, args.users))
        cmd = [sys.executable, "-m", "watchnext.cli", "recommend", "--user", u, "--env", "local"]
        cmd += ["--conf", f"storage.lakehouse={lakehouse}"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        cli_s.append(time.perf_counter() - t)
        assert proc.returncode == 0 and proc.stdout.startswith(f"Top {args.k} for user {u} "), proc.stderr
    print(f"CLI `watchnext recommend --user ID` end to end: {', '.join(f'{s:.2f}' for s in cli_s)} s")

    # ---- warm API lookups
    users = [str(rng.randint(1, args.users)) for _ in range(args.lookups)]
    for u in users[:20]:  # warm-up
        store.for_user(u)
    api_ms = []
    for u in users:
        t = time.perf_counter()
        recs = store.for_user(u)
        api_ms.append((time.perf_counter() - t) * 1e3)
        assert len(recs) == args.k and recs.user_id == u
    api = summary(api_ms)
    print(f"API   warm lookup   {fmt(api)}   [engine datafusion]")

    pa_store = RecommendationStore(path, engine="pyarrow")
    assert pa_store.active_engine == "pyarrow"
    assert pa_store._snapshot.dataset is not None
    frags = len(list(pa_store._snapshot.dataset.get_fragments(filter=pc.field(COL_USER) == user)))
    pa_ms = []
    for u in users[: args.pyarrow_lookups]:
        t = time.perf_counter()
        recs = pa_store.for_user(u)
        pa_ms.append((time.perf_counter() - t) * 1e3)
        assert recs.items == store.for_user(u).items
    pa_api = summary(pa_ms)
    print(f"API   warm lookup   {fmt(pa_api)}   [engine pyarrow; files read per lookup: {frags}]")

    # ---- Spark reference
    def spark_lookup(u: str) -> list[tuple[int, str, float, str]]:
        got = spark.read.format("delta").load(path).where(F.col(COL_USER) == u).collect()
        return sorted((r["rank"], r["item_id"], r["score"], r["reason"]) for r in got)

    for u in users[:3]:  # warm-up (JIT, Delta snapshot cache)
        spark_lookup(u)
    spark_ms = []
    for u in users[: args.spark_lookups]:
        t = time.perf_counter()
        got = spark_lookup(u)
        spark_ms.append((time.perf_counter() - t) * 1e3)
        want = [(r.rank, r.item_id, r.score, r.reason) for r in store.for_user(u).items]
        assert got == want, u
    sp = summary(spark_ms)
    print(f"Spark warm lookup   {fmt(sp)}")
    ratio = sp["p50_ms"] / api["p50_ms"]
    print(f"ratio Spark p50 / API p50: {ratio:.0f}x")
    print(f"ratio pyarrow engine p50 / DataFusion engine p50: {pa_api['p50_ms'] / api['p50_ms']:.1f}x")

    out = {
        "users": args.users,
        "k": args.k,
        "rows": rows,
        "files": len(data_files),
        "table_mib": size_mb,
        "cold_open_ms": t_open * 1e3,
        "cold_open_first_lookup_ms": t_cold * 1e3,
        "datafusion_pruning": pruning,
        "pyarrow_files_read_per_lookup": frags,
        "cli_end_to_end_s": cli_s,
        "api": api,
        "api_pyarrow_engine": pa_api,
        "spark": sp,
        "spark_over_api_p50": ratio,
        "pyarrow_over_datafusion_p50": pa_api["p50_ms"] / api["p50_ms"],
        "load_average": os.getloadavg(),
    }
    print(json.dumps(out))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
