"""ALS confidence schemes on implicit values: binary, log and rating, and what ``auto`` picks.

    .venv/bin/python benchmarks/quality_confidence.py [--data DIR] [--skip-auto]

Datasets: (a) the default synthetic data with planted play counts (``ingest.synthetic`` of
conf/base.yaml with ``play_counts: true``: 1 + Poisson counts, larger in the user's own cluster);
(b) ml-latest-small with its ratings as the implicit values (0.5 to 5).

Protocol (the evaluation protocol's, ``evaluation`` of conf/base.yaml): per-user stratified 75/25 split,
seed 42; implicit ALS at the ``als`` defaults (rank, reg_param, alpha, max_iter) under each scheme,
fitted on the train split; top 10 per test user with the user's training items excluded; held-out
NDCG@10 with every held-out item relevant (for the synthetic data also with only the held-out items of
the user's own cluster relevant). ``auto``: :func:`resolve_confidence` on the data as implicit
feedback, then (for counts) the stage's search on a validation split carved from train
(``als.tuning``), refitted on all of train and scored the same way.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from quality_als import bench_session, load_ratings

from watchnext.config import Config, load_config
from watchnext.constants import COL_ITEM, COL_ITEM_IDX, COL_RATING, COL_TIMESTAMP, COL_USER, COL_USER_IDX
from watchnext.evaluation import protocol
from watchnext.evaluation.metrics import ranking_metrics
from watchnext.ingest.synthetic import COL_CLUSTER, generate
from watchnext.models.als import AlsParams, Confidence, fit_als, resolve_confidence, top_k_items
from watchnext.models.tuning import tune_from_config

K = 10
REPO = Path(__file__).resolve().parents[1]
SCHEMES: tuple[Confidence, ...] = ("binary", "log", "rating")


def synthetic_counts(spark: SparkSession, cfg: Config) -> tuple[DataFrame, DataFrame]:
    """The default synthetic data with play counts as ``(user_idx, item_idx, rating, timestamp)``, and
    ``(user_idx, item_idx)`` of the pairs inside the user's primary cluster."""
    data = generate(spark, cfg.ingest.synthetic.model_copy(update={"play_counts": True}))
    raw = data.source.interactions
    df = raw.select(
        F.col(COL_USER).cast("int").alias(COL_USER_IDX),
        F.col(COL_ITEM).cast("int").alias(COL_ITEM_IDX),
        F.col(COL_RATING).cast("double").alias(COL_RATING),
        F.timestamp_seconds(F.col(COL_TIMESTAMP).cast("long")).alias(COL_TIMESTAMP),
    )
    own = (
        raw.join(data.item_clusters, COL_ITEM)
        .join(data.user_clusters.withColumnRenamed(COL_CLUSTER, "_primary"), COL_USER)
        .where(F.col(COL_CLUSTER) == F.col("_primary"))
        .select(
            F.col(COL_USER).cast("int").alias(COL_USER_IDX), F.col(COL_ITEM).cast("int").alias(COL_ITEM_IDX)
        )
    )
    return df, own


def study(
    name: str, df: DataFrame, cfg: Config, own: DataFrame | None, auto: bool
) -> list[tuple[str, float, float | None, float]]:
    """Rows ``(scheme, ndcg@10, ndcg@10 own cluster or None, seconds)``; prints as it goes."""
    df = df.persist(StorageLevel.MEMORY_AND_DISK)
    train, test = (d.persist(StorageLevel.MEMORY_AND_DISK) for d in protocol.split(df, cfg.evaluation))
    users = test.select(COL_USER_IDX).distinct().persist()
    own_test = (
        test.join(own, [COL_USER_IDX, COL_ITEM_IDX], "left_semi").persist() if own is not None else None
    )
    lo, hi = df.agg(F.min(COL_RATING), F.max(COL_RATING)).head(1)[0]
    print(
        f"{name}: {train.count():,} train / {test.count():,} test interactions, {users.count()} test users, "
        f"values {lo:g} to {hi:g}",
        flush=True,
    )
    rows: list[tuple[str, float, float | None, float]] = []

    def score(label: str, params: AlsParams, t0: float) -> None:
        recs = top_k_items(fit_als(train, params), users, K, train).persist()
        ndcg = ranking_metrics(recs, test, K)[f"ndcg_at_{K}"]
        ndcg_own = ranking_metrics(recs, own_test, K)[f"ndcg_at_{K}"] if own_test is not None else None
        recs.unpersist()
        rows.append((label, ndcg, ndcg_own, time.perf_counter() - t0))
        extra = f", own cluster {ndcg_own:.4f}" if ndcg_own is not None else ""
        print(f"  {label}: ndcg@10 {ndcg:.4f}{extra} ({rows[-1][3]:.0f} s)", flush=True)

    for scheme in SCHEMES:
        score(scheme, AlsParams.from_config(cfg.als, confidence=scheme), time.perf_counter())

    if auto:
        t0 = time.perf_counter()
        a = cfg.als
        decision = resolve_confidence(
            df, "auto", "implicit", tuning=a.tuning.enabled, candidates=a.tuning.space.confidence
        )
        print(f"  auto: {decision.describe()}", flush=True)
        result = tune_from_config(train, a, log_to_mlflow=False, confidence=decision)
        tried = ", ".join(f"{t.params.confidence} {t.value:.4f}" for t in result.trials)
        print(f"  auto: validation ndcg@10 per trial: {tried}", flush=True)
        best = result.best_params
        tuned = best.model_dump(include={"confidence", "rank", "reg_param", "alpha", "max_iter"})
        print(f"  auto: best {tuned}", flush=True)
        score(f"auto -> {best.confidence} (tuned)", best, t0)
    for d in (df, train, test, users, own_test):
        if d is not None:
            d.unpersist()
    return rows


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "ml-latest-small")
    ap.add_argument("--skip-auto", action="store_true", help="only the three schemes at the defaults")
    ap.add_argument("--master", default="local[*]")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    spark = bench_session("quality-confidence", args.master)
    cfg = load_config(env="local", conf_dir=REPO / "conf")
    counts, own = synthetic_counts(spark, cfg)
    results = {
        "synthetic play counts": study("synthetic play counts", counts, cfg, own, not args.skip_auto),
        "ml-latest-small (ratings as values)": study(
            "ml-latest-small", load_ratings(spark, args.data), cfg, None, not args.skip_auto
        ),
    }
    a = cfg.als
    print(
        f"\nImplicit ALS, rank {a.rank}, reg_param {a.reg_param}, alpha {a.alpha}, {a.max_iter} iterations; "
        f"stratified 75/25 (seed {cfg.evaluation.seed}), top-{K} excluding training items"
    )
    for name, rows in results.items():
        print(f"\n{name}")
        print(f"{'scheme':<24}{'ndcg@10':>10}{'own cluster':>13}{'seconds':>9}")
        for label, ndcg, ndcg_own, seconds in rows:
            own_txt = f"{ndcg_own:.4f}" if ndcg_own is not None else "-"
            print(f"{label:<24}{ndcg:>10.4f}{own_txt:>13}{seconds:>9.0f}")
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
