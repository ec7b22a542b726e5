"""NCF training throughput with Horovod on Spark: 1 rank against N ranks, same data, same epochs.

    .venv/bin/python benchmarks/bench_ncf.py [--epochs 3] [--procs 1,2] [--data PATH]

Data: the positives of ml-latest-small when present (``--data``), else planted-cluster synthetic
pairs; ``--negatives`` sampled negatives per positive, written once as Parquet shards. Each
configuration is one ``horovod.spark.run`` of NeuMF (the stage's model: mf_dim 64, MLP 128-64, softmax
loss, ``--batch-size`` positives per rank, dense gradient allreduce) in the same Spark session, one
after the other. Reported per
configuration: the training loop's wall time on rank 0 (epochs only), the whole run's wall time
(rank start-up, TF import, Gloo rendezvous, saving), and training samples ((user, item) pairs scored)
per second. The target:
N = 2 ranks take <= 1.2x the wall time of 1 rank on CPU (each rank gets cores / N TensorFlow
threads); on a GPU machine each rank pins its local GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from watchnext.config import SparkConfig  # noqa: E402
from watchnext.models import ncf_data  # noqa: E402
from watchnext.models.ncf import NcfSpec  # noqa: E402
from watchnext.models.ncf_train import TrainParams, fit, samples_per_second  # noqa: E402
from watchnext.session import build_session  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pairs(data: Path, seed: int) -> tuple[pd.DataFrame, str]:
    ratings = data / "ratings.csv"
    if ratings.exists():
        pdf = pd.read_csv(ratings)
        pdf["user_idx"] = pdf.userId.rank(method="dense").astype(int) - 1
        pdf["item_idx"] = pdf.movieId.rank(method="dense").astype(int) - 1
        return pdf[["user_idx", "item_idx"]], f"ml-latest-small positives ({len(pdf)} ratings)"
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(2000), 40)
    items = (users % 10) * 100 + rng.integers(0, 100, len(users))
    pdf = pd.DataFrame({"user_idx": users, "item_idx": items}).drop_duplicates()
    return pdf, f"synthetic planted clusters ({len(pdf)} pairs)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "ml-latest-small"))
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--negatives", type=int, default=20)
    p.add_argument("--procs", default="1,2")
    p.add_argument("--batch-size", type=int, default=512, help="positives per rank and step")
    p.add_argument("--loss", default="softmax", choices=["softmax", "bce"])
    p.add_argument("--sparse-slices", action="store_true", help="allgather embedding slices, not dense")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "bench_ncf.json"))
    args = p.parse_args(argv)
    procs = [int(x) for x in args.procs.split(",")]
    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-ncf-"))
    spark = build_session(
        SparkConfig(
            app_name="bench-ncf",
            master=f"local[{max(cores, max(procs))}]",
            shuffle_partitions=8,
            log_level="ERROR",
            driver_memory="4g",
            local_dir=str(tmp / "local"),
        )
    )
    pdf, what = pairs(Path(args.data), args.seed)
    n_users, n_items = int(pdf.user_idx.max()) + 1, int(pdf.item_idx.max()) + 1
    pos = spark.createDataFrame(pdf.astype("int32"))
    rows = ncf_data.training_rows(
        pos, n_items, num_negatives=args.negatives, rounds=args.epochs, seed=args.seed
    )
    data = ncf_data.write_shards(rows, str(tmp / "train"), shards=16, seed=args.seed)
    spec = NcfSpec(n_users=n_users, n_items=n_items, mf_dim=64, mlp_layers=[128, 64], l2=1e-4)
    params = TrainParams(
        epochs=args.epochs,
        batch_size=args.batch_size,
        loss=args.loss,
        learning_rate=0.001,
        seed=args.seed,
        sparse_as_dense=not args.sparse_slices,
    )

    results = []
    for n in procs:
        t = time.perf_counter()
        res = fit(spark, spec, params, data, str(tmp / f"w{n}"), num_proc=n)
        wall = time.perf_counter() - t
        r0 = res.rank0
        rate = samples_per_second(r0, args.batch_size)
        results.append(
            {
                "num_proc": n,
                "device": r0.device,
                "train_seconds": round(r0.train_seconds, 2),
                "run_seconds": round(wall, 2),
                "samples": round(rate * r0.train_seconds),
                "samples_per_second": round(rate),
                "final_loss": round(r0.global_losses[-1], 4),
            }
        )
    base = results[0]
    print(
        f"\nNCF training, {what}: {data.rows} positives x (1 + {args.negatives}) pairs per epoch, "
        f"{args.epochs} epochs, {args.loss} loss, batch {args.batch_size} positives per rank, {cores} cores"
    )
    print("| ranks | device | train s | run s | samples/s | train time vs 1 rank | run time vs 1 rank |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        r["train_ratio"] = round(r["train_seconds"] / base["train_seconds"], 3)
        r["run_ratio"] = round(r["run_seconds"] / base["run_seconds"], 3)
        print(
            f"| {r['num_proc']} | {r['device']} | {r['train_seconds']:.1f} | {r['run_seconds']:.1f} | "
            f"{r['samples_per_second']:,} | {r['train_ratio']:.2f}x | {r['run_ratio']:.2f}x |"
        )
    target = all(r["train_ratio"] <= 1.2 for r in results)
    print(f"target: N ranks <= 1.2x the training wall time of 1 rank: {'met' if target else 'NOT met'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "dataset": what,
                "cores": cores,
                "machine": platform.platform(),
                "epochs": args.epochs,
                "negatives": args.negatives,
                "batch_size": args.batch_size,
                "loss": args.loss,
                "results": results,
            },
            indent=2,
        )
    )
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
