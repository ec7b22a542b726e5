"""Quality of the baselines and ALS models on MovieLens ml-latest-small (the project's quality bar).

    .venv/bin/python benchmarks/quality_als.py [--data DIR] [--trials 16] [--method tpe]

Protocol: ratings.csv read with pandas (user_idx / item_idx are the MovieLens ids), per-user
``stratified_split(ratio=0.75, seed=42)``; every model recommends the top 10 per test user with the
user's training items excluded, and every held-out item counts as relevant. Coverage is the share of
the training catalogue recommended to anyone.

Rows: popularity, trending (distinct users in the last ``--window-days`` before the latest training
event, backfilled by popularity), explicit ALS ranked by predicted rating, implicit ALS at the config
defaults under each confidence transformation, implicit ALS tuned on a validation split carved from
train (``--method``, ``--trials``; then refitted on all of train), and the biased explicit model ranked
by its predicted rating. RMSE/MAE on the test ratings compare the bias-only model, plain explicit ALS
and the biased ALS.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession

from watchnext.config import SparkConfig, load_config
from watchnext.constants import COL_ITEM_IDX, COL_RATING, COL_TIMESTAMP, COL_USER_IDX
from watchnext.evaluation.metrics import evaluate_all, rmse_mae
from watchnext.evaluation.splits import stratified_split
from watchnext.models import (
    AlsParams,
    fit_als,
    fit_biased_als,
    fit_biases,
    popularity_scores,
    predict,
    predict_biases,
    top_k_items,
    topk_from_item_scores,
    trending_scores,
    tune_als,
    validation_split,
)
from watchnext.session import build_session

K = 10
REPO = Path(__file__).resolve().parents[1]
COLUMNS = [
    ("ndcg@10", f"ndcg_at_{K}"),
    ("prec@10", f"precision_at_{K}"),
    ("recall@10", f"recall_at_{K}"),
    ("map@10", f"map_at_{K}"),
    ("mrr", f"mrr_at_{K}"),
    ("hit rate", f"hit_rate_at_{K}"),
    ("coverage", f"catalog_coverage_at_{K}"),
]


def read_ratings(folder: Path) -> pd.DataFrame:
    """ratings.csv with the MovieLens ids as ``user_idx`` / ``item_idx``.

    Ratings of a movie missing from movies.csv (when it exists) are dropped and reported, as the
    ingest validation would reject them ("unknown item_id").
    """
    pdf = pd.read_csv(folder / "ratings.csv")
    if (folder / "movies.csv").exists():
        known = pdf["movieId"].isin(pd.read_csv(folder / "movies.csv")["movieId"])
        if not known.all():
            bad = pdf.loc[~known, ["userId", "movieId"]].head(5).to_dict("records")
            print(f"dropped {int((~known).sum())} rating(s) of movies not in movies.csv, e.g. {bad}")
        pdf = pdf[known]
    return pdf.rename(columns={"userId": COL_USER_IDX, "movieId": COL_ITEM_IDX})


def load_ratings(spark: SparkSession, folder: Path) -> DataFrame:
    """:func:`read_ratings` as ``(user_idx, item_idx, rating, timestamp: UTC)`` in Spark."""
    pdf = read_ratings(folder)
    pdf[COL_TIMESTAMP] = pd.to_datetime(pdf[COL_TIMESTAMP], unit="s", utc=True)
    return spark.createDataFrame(pdf[[COL_USER_IDX, COL_ITEM_IDX, COL_RATING, COL_TIMESTAMP]])


def bench_session(app_name: str, master: str) -> SparkSession:
    """A quiet benchmark session: 4 GiB driver, 4 shuffle partitions, scratch and checkpoints in a
    fresh temporary folder."""
    tmp = tempfile.mkdtemp(prefix=f"{app_name}-")
    return build_session(
        SparkConfig(
            app_name=app_name,
            master=master,
            log_level="ERROR",
            driver_memory="4g",
            shuffle_partitions=4,
            local_dir=tmp,
            conf={"spark.ui.showConsoleProgress": "false"},
        ),
        checkpoint_dir=f"{tmp}/checkpoints",
    )


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "ml-latest-small")
    ap.add_argument("--method", choices=["grid", "random", "tpe"], default="tpe")
    ap.add_argument("--trials", type=int, default=16, help="tuning trials (0: skip tuning)")
    ap.add_argument("--window-days", type=float, default=365.0, help="trending window")
    ap.add_argument("--no-confidence-study", action="store_true", help="only the default confidence")
    ap.add_argument("--explicit-rank", type=int, default=32)
    ap.add_argument("--explicit-reg", type=float, default=0.15)
    ap.add_argument("--master", default="local[*]")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("watchnext.models.tuning").setLevel(logging.INFO)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    spark = bench_session("quality-als", args.master)
    cfg = load_config(env="local", conf_dir=REPO / "conf").als  # conf/base.yaml (+ local.yaml)
    ratings = load_ratings(spark, args.data)
    train, test = stratified_split(ratings, 0.75, 42)
    train = train.persist(StorageLevel.MEMORY_AND_DISK)
    test = test.persist(StorageLevel.MEMORY_AND_DISK)
    n_train, n_test = train.count(), test.count()
    users = test.select(COL_USER_IDX).distinct().persist()
    print(
        f"ml-latest-small: {n_train:,} train / {n_test:,} test ratings, {users.count()} test users",
        flush=True,
    )

    rows: list[tuple[str, dict[str, float], float]] = []

    def evaluate(name: str, recs_fn) -> None:  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        recs = recs_fn()
        metrics = evaluate_all(recs, test, K, train=train)
        rows.append((name, metrics, time.perf_counter() - t0))
        print(f"  {name}: ndcg@10 {metrics[f'ndcg_at_{K}']:.4f} ({rows[-1][2]:.0f} s)", flush=True)

    evaluate("popularity", lambda: topk_from_item_scores(popularity_scores(train), users, K, train))
    evaluate(
        f"trending ({args.window_days:g} d)",
        lambda: topk_from_item_scores(trending_scores(train, args.window_days), users, K, train),
    )

    # Explicit ALS (plain and on the bias residuals): tuned for RMSE by hand, not searched here.
    explicit = AlsParams(
        rank=args.explicit_rank, reg_param=args.explicit_reg, max_iter=10, implicit_prefs=False, seed=cfg.seed
    )
    explicit_model = fit_als(train, explicit)
    evaluate("explicit ALS", lambda: top_k_items(explicit_model, users, K, train))

    base = AlsParams.from_config(cfg)
    confidences = [base.confidence] if args.no_confidence_study else ["binary", "rating", "log", "centered"]
    for conf in confidences:
        p = base.model_copy(update={"confidence": conf})
        evaluate(
            f"implicit ALS ({conf}, defaults)", lambda p=p: top_k_items(fit_als(train, p), users, K, train)
        )

    best: AlsParams | None = None
    if args.trials > 0:
        fit_part, validation = validation_split(train, cfg.tuning.validation_ratio, cfg.tuning.seed)
        t0 = time.perf_counter()
        result = tune_als(
            fit_part,
            validation,
            cfg.tuning.space,
            base=base,
            method=args.method,
            n_trials=args.trials,
            metric=f"ndcg_at_{K}",
            seed=cfg.tuning.seed,
        )
        best = result.best_params
        tuned = {n: getattr(best, n) for n in ("rank", "reg_param", "alpha", "max_iter")}
        print(
            f"  tuning ({args.method}, {args.trials} trials, {time.perf_counter() - t0:.0f} s): "
            f"validation ndcg@10 {result.best_value:.4f} with {tuned}",
            flush=True,
        )
        evaluate(
            f"implicit ALS (tuned {args.method})", lambda: top_k_items(fit_als(train, best), users, K, train)
        )

    regs = (cfg.bias_reg_user, cfg.bias_reg_item)
    biased = fit_biased_als(train, explicit, regs, cfg.bias_iters)
    evaluate("biased explicit ALS", lambda: top_k_items(biased, users, K, train))

    # Rating prediction on the test pairs.
    pairs = test.select(COL_USER_IDX, COL_ITEM_IDX)
    biases = fit_biases(train, *regs, cfg.bias_iters)
    errors = {
        "bias only (mu + b_u + b_i)": rmse_mae(predict_biases(biases, pairs, clip=(0.5, 5.0)), test),
        "explicit ALS": rmse_mae(predict(explicit_model, pairs, clip=(0.5, 5.0)), test),
        "biased ALS (mu + b_u + b_i + p.q)": rmse_mae(predict(biased, pairs, clip=(0.5, 5.0)), test),
    }

    print(f"\nTop-{K} on ml-latest-small (stratified 75/25, seed 42; training items excluded)")
    head = f"{'model':<34}" + "".join(f"{label:>10}" for label, _ in COLUMNS) + f"{'seconds':>9}"
    print(head)
    print("-" * len(head))
    for name, metrics, seconds in rows:
        print(f"{name:<34}" + "".join(f"{metrics[key]:>10.4f}" for _, key in COLUMNS) + f"{seconds:>9.0f}")
    print(f"\nRating prediction on the {n_test:,} test ratings (clipped to [0.5, 5])")
    print(f"{'model':<34}{'rmse':>10}{'mae':>10}")
    for name, e in errors.items():
        print(f"{name:<34}{e['rmse']:>10.4f}{e['mae']:>10.4f}")
    searched = {"rank", "reg_param", "alpha", "max_iter"}
    print(
        f"\nexplicit ALS: rank {explicit.rank}, regParam {explicit.reg_param}, {explicit.max_iter} iters; "
        f"bias regs {regs}; implicit defaults: {base.model_dump(include=searched)}"
        + (f"; tuned: {best.model_dump(include=searched)}" if best else "")
    )
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
