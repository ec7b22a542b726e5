"""Quality report: the real pipeline (ingest -> ALS -> evaluate) on MovieLens ml-latest-small.

Protocol (the project's quality bar): per-user stratified 75/25 split, seed 42, top-10 excluding
each user's training items, every held-out item relevant. Targets: popularity NDCG@10 about 0.21
(a sanity check of the evaluator), ALS >= 0.34.

    make quality                       # or: .venv/bin/python benchmarks/quality.py --data PATH
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from watchnext import pipeline  # noqa: E402
from watchnext.config import load_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RUN_DATE = dt.date(2024, 6, 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "ml-latest-small"))
    p.add_argument("--out", help="lakehouse/MLflow folder (default: a temporary one)")
    p.add_argument("--conf", action="append", default=[], help="extra config overrides")
    p.add_argument("--min-als-ndcg", type=float, default=0.34)
    args = p.parse_args(argv)
    if not Path(args.data).is_dir():
        print(f"no dataset at {args.data}: pass --data", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("py4j", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    out = Path(args.out or tempfile.mkdtemp(prefix="watchnext-quality-"))
    cfg = load_config(
        env="local",
        overrides=[
            f"storage.lakehouse={out / 'lakehouse'}",
            f"storage.checkpoint_dir={out / 'checkpoints'}",
            f"mlflow.tracking_uri=sqlite:///{out / 'mlflow.db'}",
            f"mlflow.artifact_location={out / 'artifacts'}",
            "ingest.source=movielens",
            f"ingest.movielens.path={args.data}",
            "evaluation.split=stratified",
            "evaluation.ratio=0.75",
            "evaluation.seed=42",
            "evaluation.k=10",
            *args.conf,
        ],
    )
    spark = pipeline.session_for(cfg)
    t0 = time.perf_counter()
    results = pipeline.run_pipeline(spark, cfg, RUN_DATE, ["ingest", "als", "evaluate"])
    ev = results["evaluate"]
    secs = time.perf_counter() - t0
    print(f"\nml-latest-small, stratified 75/25 seed 42, K=10 ({secs:.0f} s; outputs in {out})")
    print(ev["table"])
    ndcg = ev["ndcg_at_10"]
    print(f"\nALS params: {results['als']['params']}")
    ok = ndcg["als"] >= args.min_als_ndcg
    print(f"ALS NDCG@10 {ndcg['als']:.4f} (target >= {args.min_als_ndcg}): {'met' if ok else 'NOT met'}")
    print(f"popularity NDCG@10 {ndcg['popularity']:.4f} (expected about 0.21)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
