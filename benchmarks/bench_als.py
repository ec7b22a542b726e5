"""Seconds per ALS iteration: Spark MLlib vs the ``implicit`` library, side by side on the same data.

    OPENBLAS_NUM_THREADS=1 .venv/bin/python benchmarks/bench_als.py [--rank 128] [--iters 10]

Needs ``pip install implicit`` (the ``bench`` extra). Data: ml-latest-small when present (``--data``),
else the project's synthetic generator, else uniform random pairs. Both libraries fit implicit ALS with
binary preferences, the same rank and the same number of iterations, on the same cores (Spark
``local[*]``, implicit's OpenMP threads = the machine's cores).

Spark's per-iteration time is the *marginal* cost, ``(t(iters) - t(1)) / (iters - 1)``, so the fixed
cost of a fit (job setup, block building, the final factor materialisation) is reported apart; each
timing is the best of ``--repeats`` fits after a warm-up fit. ``implicit`` is timed per epoch through
its callback, both with exact Cholesky solves (like Spark) and with its default conjugate gradient.
Confidence is made equal (Spark ``1 + alpha``, implicit ``alpha + 1`` for a value of 1); the
regularisation is not (Spark scales it by each row's rating count), which does not change the work.
"""

from __future__ import annotations

import os

# implicit warns (and slows down) when OpenBLAS runs its own threads inside its OpenMP threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from pyspark import StorageLevel  # noqa: E402
from pyspark.sql import SparkSession  # noqa: E402

from watchnext.config import SparkConfig  # noqa: E402
from watchnext.constants import COL_ITEM_IDX, COL_RATING, COL_USER_IDX  # noqa: E402
from watchnext.models import AlsParams, fit_als  # noqa: E402
from watchnext.session import build_session  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results" / "bench_als.json"


def load_pairs(
    spark: SparkSession, data: Path, n_users: int, n_items: int, per_user: int
) -> tuple[pd.DataFrame, str]:
    """``(user_idx, item_idx, rating)`` as pandas (a benchmark may hold it on the driver) and its name."""
    ratings = data / "ratings.csv"
    if ratings.exists():
        pdf = pd.read_csv(ratings)
        if (data / "movies.csv").exists():  # as ingest validation: drop ratings of unknown movies
            pdf = pdf[pdf["movieId"].isin(pd.read_csv(data / "movies.csv")["movieId"])]
        pdf = pdf.rename(columns={"userId": COL_USER_IDX, "movieId": COL_ITEM_IDX})
        return pdf[[COL_USER_IDX, COL_ITEM_IDX, COL_RATING]], f"ml-latest-small ({ratings})"
    try:
        from watchnext.config import SyntheticConfig
        from watchnext.ingest.synthetic import generate

        cfg = SyntheticConfig(n_users=n_users, n_items=n_items, mean_interactions_per_user=per_user)
        raw = generate(spark, cfg).source.interactions.toPandas()
        pdf = pd.DataFrame(
            {
                COL_USER_IDX: raw["user_id"].astype(np.int64),
                COL_ITEM_IDX: raw["item_id"].astype(np.int64),
                COL_RATING: raw["rating"].astype(np.float64),
            }
        )
        return pdf, f"synthetic ({n_users} users, {n_items} items)"
    except ImportError:
        rng = np.random.default_rng(0)
        n = n_users * per_user
        pdf = pd.DataFrame(
            {
                COL_USER_IDX: rng.integers(0, n_users, n),
                COL_ITEM_IDX: rng.integers(0, n_items, n),
                COL_RATING: np.ones(n),
            }
        ).drop_duplicates([COL_USER_IDX, COL_ITEM_IDX])
        return pdf, f"random ({n_users} users, {n_items} items)"


def time_spark(train, params: AlsParams, repeats: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fit_als(train, params)  # fit materialises both factor RDDs (finalStorageLevel)
        best = min(best, time.perf_counter() - t0)
    return best


def time_implicit(csr, rank: int, iters: int, alpha: float, reg: float, use_cg: bool, repeats: int) -> float:  # type: ignore[no-untyped-def]
    from implicit.cpu.als import AlternatingLeastSquares

    best = float("inf")
    for _ in range(repeats):
        epochs: list[float] = []
        model = AlternatingLeastSquares(
            factors=rank, regularization=reg, alpha=alpha, iterations=iters, use_cg=use_cg, random_state=42
        )
        model.fit(
            csr, show_progress=False, callback=lambda _it, elapsed, _loss, ep=epochs: ep.append(elapsed)
        )
        best = min(best, float(np.mean(epochs)))
    return best


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "datasets" / "ml-latest-small")
    ap.add_argument("--rank", type=int, default=128)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--alpha", type=float, default=10.0, help="Spark alpha (confidence 1 + alpha)")
    ap.add_argument("--reg", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--master", default="local[*]")
    ap.add_argument("--synthetic-users", type=int, default=20_000)
    ap.add_argument("--synthetic-items", type=int, default=5_000)
    ap.add_argument("--out", type=Path, default=RESULTS, help="JSON of the figures")
    args = ap.parse_args(argv)
    if args.iters < 2:
        raise SystemExit("--iters must be >= 2 (the marginal time needs two fits)")
    import scipy.sparse as sp

    tmp = tempfile.mkdtemp(prefix="bench-als-")
    spark = build_session(
        SparkConfig(
            app_name="bench-als",
            master=args.master,
            log_level="ERROR",
            driver_memory="4g",
            local_dir=tmp,
            conf={"spark.ui.showConsoleProgress": "false"},
        ),
        checkpoint_dir=f"{tmp}/checkpoints",
    )
    pdf, name = load_pairs(spark, args.data, args.synthetic_users, args.synthetic_items, 40)
    users, u_idx = np.unique(pdf[COL_USER_IDX].to_numpy(), return_inverse=True)
    items, i_idx = np.unique(pdf[COL_ITEM_IDX].to_numpy(), return_inverse=True)
    csr = sp.csr_matrix((np.ones(len(pdf), dtype=np.float32), (u_idx, i_idx)), shape=(len(users), len(items)))
    train = spark.createDataFrame(pdf).persist(StorageLevel.MEMORY_AND_DISK)
    train.count()
    cores = spark.sparkContext.defaultParallelism
    print(
        f"data: {name}: {len(pdf):,} ratings, {len(users):,} users, {len(items):,} items; rank {args.rank}, "
        f"{args.iters} iterations, {cores} Spark cores, {os.cpu_count()} CPUs",
        flush=True,
    )

    params = AlsParams(
        rank=args.rank, reg_param=args.reg, alpha=args.alpha, max_iter=args.iters, implicit_prefs=True
    )
    fit_als(train, params.model_copy(update={"max_iter": 2}))  # warm-up: JIT, broadcast, shuffle paths
    t_full = time_spark(train, params, args.repeats)
    t_one = time_spark(train, params.model_copy(update={"max_iter": 1}), args.repeats)
    spark_iter = (t_full - t_one) / (args.iters - 1)
    spark_fixed = t_one - spark_iter
    # implicit's confidence is alpha * value: alpha + 1 matches Spark's 1 + alpha for a value of 1.
    imp_exact = time_implicit(csr, args.rank, args.iters, args.alpha + 1, args.reg, False, args.repeats)
    imp_cg = time_implicit(csr, args.rank, args.iters, args.alpha + 1, args.reg, True, args.repeats)

    print(f"\n{'library':<40}{'s / iteration':>15}{'fit total (s)':>15}")
    print(f"{'Spark MLlib ALS (Cholesky)':<40}{spark_iter:>15.3f}{t_full:>15.2f}")
    print(f"{'implicit ALS, exact (use_cg=False)':<40}{imp_exact:>15.4f}{imp_exact * args.iters:>15.2f}")
    print(f"{'implicit ALS, CG (its default)':<40}{imp_cg:>15.4f}{imp_cg * args.iters:>15.2f}")
    print(
        f"\nSpark fixed cost per fit (outside the iterations): {spark_fixed:.2f} s\n"
        f"ratio Spark / implicit per iteration: {spark_iter / imp_exact:.1f}x (exact), "
        f"{spark_iter / imp_cg:.1f}x (CG); whole fit: {t_full / (imp_exact * args.iters):.1f}x (exact)"
    )
    res = {
        "data": name,
        "ratings": len(pdf),
        "users": len(users),
        "items": len(items),
        "rank": args.rank,
        "iters": args.iters,
        "cores": cores,
        "spark_s_per_iter": spark_iter,
        "spark_fit_s": t_full,
        "spark_fixed_s": spark_fixed,
        "implicit_exact_s_per_iter": imp_exact,
        "implicit_cg_s_per_iter": imp_cg,
        "spark_over_implicit_exact_per_iter": spark_iter / imp_exact,
        "spark_over_implicit_cg_per_iter": spark_iter / imp_cg,
        "spark_over_implicit_exact_fit": t_full / (imp_exact * args.iters),
        "loadavg": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")
    spark.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
