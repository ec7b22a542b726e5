"""NCF stage: NeuMF trained with Horovod on Spark, scored offline and published as ``ncf_scores``.

1. **Offline** (the shared protocol): train on the protocol's train split, with the paper's sampled
   validation each epoch (each test user's latest held-out item among ``eval_negatives`` items the
   user never touched); write the full-catalogue top-K of the test users (training items excluded)
   to ``eval_recommendations`` as model ``ncf``, so the evaluate stage scores it beside ALS.
2. **Paper protocol** (``ncf.paper_protocol``): leave-last-out training and HR@K / NDCG@K of the last
   item among 99 sampled negatives, as in He et al. 2017.
3. **Serving**: train on every interaction and write each known user's top ``recommend.candidates``
   unseen items with their probabilities to ``ncf_scores`` for the recommend stage's blend; only when
   the blend reads them (``"ncf"`` in ``recommend.sources``) or ``ncf.publish_scores`` is true.

Each training is one ``horovod.spark.run`` of ``ncf.num_proc`` ranks; rank 0 logs its params and
per-epoch metrics (prefixed ``offline.``, ``paper.``, ``serving.``) into this stage's MLflow run.
With ``ncf.enabled: false`` the stage does nothing (the Airflow DAG branches around it).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from watchnext import tables, tracking
from watchnext.config import Config
from watchnext.constants import (
    COL_ITEM,
    COL_ITEM_IDX,
    COL_RANK,
    COL_RUN_DATE,
    COL_RUN_ID,
    COL_SCORE,
    COL_USER,
    COL_USER_IDX,
    TABLE_INTERACTIONS,
    TABLE_ITEM_INDEX,
    TABLE_NCF_SCORES,
    TABLE_USER_INDEX,
)
from watchnext.evaluation import protocol
from watchnext.evaluation.splits import leave_last_n_split
from watchnext.models import ncf_data
from watchnext.models.ncf import NcfSpec
from watchnext.models.ncf_score import score_topk
from watchnext.models.ncf_train import FitResult, TrainParams, fit

log = logging.getLogger(__name__)

MODEL_NAME = "ncf"


def spec_for(cfg: Config, n_users: int, n_items: int) -> NcfSpec:
    n = cfg.ncf
    return NcfSpec(
        n_users=n_users,
        n_items=n_items,
        model=n.model,
        mf_dim=n.mf_dim,
        mlp_layers=list(n.mlp_layers),
        dropout=n.dropout,
        l2=n.l2,
    )


def params_for(cfg: Config) -> TrainParams:
    n = cfg.ncf
    return TrainParams(
        epochs=n.epochs,
        batch_size=n.batch_size,
        loss=n.loss,
        learning_rate=n.learning_rate,
        scale_lr=n.scale_lr,
        seed=n.seed,
        eval_k=n.eval_k,
        threads=n.threads_per_proc,
        sparse_as_dense=n.sparse_as_dense,
    )


def train_on(
    spark: SparkSession,
    cfg: Config,
    train: DataFrame,
    work_dir: str,
    n_users: int,
    n_items: int,
    *,
    holdout: DataFrame | None = None,
    known: DataFrame | None = None,
    prefix: str,
) -> FitResult:
    """Sample, shard and train on ``train`` (user_idx, item_idx, rating); with ``holdout`` (one
    (user_idx, item_idx) per user) and ``known`` (all the users' pairs), validate each epoch on the
    paper's sampled protocol."""
    n = cfg.ncf
    pos = ncf_data.positives(train, n.positive_threshold)
    # The positives go to the ranks, which draw each round's negatives themselves (ncf_data).
    sampling = ncf_data.NegativeSampling(n_items, n.num_negatives, n.negative_rounds, n.seed)
    rows = ncf_data.training_positives(pos, n_items)
    data = ncf_data.write_shards(rows, f"{work_dir}/train", n.shards, n.seed, sampling=sampling)
    evaluation = None
    if holdout is not None and known is not None:
        ev_rows = ncf_data.sampled_eval_rows(holdout, known, n_items, n.eval_negatives, n.seed + 1)
        evaluation = ncf_data.write_shards(ev_rows, f"{work_dir}/eval", n.shards, n.seed, by_user=True)
    run_id = tracking.active_run_id()
    uri = None
    if cfg.mlflow.enabled and run_id != tracking.NO_RUN:
        import mlflow

        uri = mlflow.get_tracking_uri()
    result = fit(
        spark,
        spec_for(cfg, n_users, n_items),
        params_for(cfg),
        data,
        work_dir,
        num_proc=n.num_proc,
        eval_data=evaluation,
        pretrain={"epochs": n.pretrain_epochs, "alpha": n.pretrain_alpha} if n.pretrain else None,
        tracking_uri=uri,
        run_id=run_id if uri else None,
        prefix=prefix,
        start_timeout=n.start_timeout,
    )
    log.info("ncf %s: %s", prefix, result.summary())
    return result


def run(spark: SparkSession, cfg: Config, run_date: dt.date) -> dict[str, Any]:
    if not cfg.ncf.enabled:
        log.info("ncf.enabled is false: skipping the NCF stage")
        return {"skipped": True}
    t0 = time.perf_counter()
    n = cfg.ncf
    run_id = tracking.active_run_id()
    work = f"{cfg.storage.checkpoint_dir.rstrip('/')}/ncf/{run_date.isoformat()}"
    interactions = protocol.protocol_frame(
        tables.read_run_date(spark, cfg.table_path(TABLE_INTERACTIONS), run_date)
    ).persist(StorageLevel.MEMORY_AND_DISK)
    user_index = tables.read(spark, cfg.table_path(TABLE_USER_INDEX)).select(COL_USER, COL_USER_IDX)
    item_index = tables.read(spark, cfg.table_path(TABLE_ITEM_INDEX)).select(COL_ITEM, COL_ITEM_IDX)
    n_users = int(user_index.agg(F.max(COL_USER_IDX)).head(1)[0][0]) + 1
    n_items = int(item_index.agg(F.max(COL_ITEM_IDX)).head(1)[0][0]) + 1
    known = interactions.select(COL_USER_IDX, COL_ITEM_IDX)
    summary: dict[str, Any] = {"n_users": n_users, "n_items": n_items}
    tracking.log_params({"ncf.n_users": n_users, "ncf.n_items": n_items})
    try:
        # -- offline: the shared protocol
        train, test = (
            df.persist(StorageLevel.MEMORY_AND_DISK) for df in protocol.split(interactions, cfg.evaluation)
        )
        try:
            res = train_on(
                spark,
                cfg,
                train,
                f"{work}/offline",
                n_users,
                n_items,
                holdout=ncf_data.holdout_latest(test),
                known=known,
                prefix="offline",
            )
            k = max(cfg.evaluation.ks + [cfg.evaluation.k])
            recs = score_topk(
                test.select(COL_USER_IDX), res.model_dir, n_items, k, train, block=n.score_block
            )
            protocol.write_recommendations(recs, cfg, MODEL_NAME, run_date, run_id)
            summary["offline"] = res.summary()
        finally:
            train.unpersist()
            test.unpersist()

        # -- the paper's protocol: leave the latest item out, rank it among sampled negatives
        if n.paper_protocol:
            tr, te = leave_last_n_split(interactions, 1)
            res = train_on(
                spark,
                cfg,
                tr,
                f"{work}/paper",
                n_users,
                n_items,
                holdout=te.select(COL_USER_IDX, COL_ITEM_IDX),
                known=known,
                prefix="paper",
            )
            summary["paper"] = res.summary()
            tracking.log_metrics(
                {f"paper_hr_at_{n.eval_k}": res.rank0.hr[-1], f"paper_ndcg_at_{n.eval_k}": res.rank0.ndcg[-1]}
            )

        # -- serving: every interaction, top-M unseen items of every known user
        if not cfg.ncf_publishes_scores:
            log.info("ncf: no serving model (recommend.sources has no 'ncf'; ncf.publish_scores is unset)")
            summary["serving"] = "skipped: 'ncf' is not in recommend.sources (ncf.publish_scores forces it)"
        else:
            res = train_on(spark, cfg, interactions, f"{work}/serving", n_users, n_items, prefix="serving")
            summary["serving"] = res.summary()
            scores = score_topk(
                user_index.select(COL_USER_IDX),
                res.model_dir,
                n_items,
                cfg.recommend.candidates,
                known,
                block=n.score_block,
            )
            out = scores.select(
                COL_USER_IDX,
                COL_ITEM_IDX,
                COL_SCORE,
                COL_RANK,
                F.lit(run_id).alias(COL_RUN_ID),
                F.lit(run_date).alias(COL_RUN_DATE),
            )
            tables.overwrite_run_date(out, cfg.table_path(TABLE_NCF_SCORES), run_date, f"ncf run_id={run_id}")
            summary["model_dir"] = res.model_dir
    finally:
        interactions.unpersist()
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    tracking.log_metrics({"ncf_seconds": summary["seconds"]})
    return summary
