"""Blend weights tuned on a validation split: the recommend path's weight search.

The sources are fitted on the train split minus a validation split; their pooled candidates for a
sample of validation users go to the driver, where ``models/blend.py`` searches the weights (Optuna)
by NDCG@K of the capped list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from watchnext.config import Config
from watchnext.constants import COL_CLUSTER, COL_ITEM_IDX, COL_USER_IDX
from watchnext.models import blend, blend_tuning
from watchnext.models.als import AlsParams
from watchnext.models.tuning import validation_split
from watchnext.recommend.candidates import scored_pool
from watchnext.recommend.sources import fit_sources


@dataclass(frozen=True)
class BlendTuning:
    """A weight search's outcome: the best weights, the configured weights' value, the data it ran on."""

    search: blend_tuning.WeightSearch
    configured: float  # validation NDCG@k of recommend.weights
    k: int
    users: int
    rows: int

    @property
    def weights(self) -> dict[str, float]:
        return self.search.weights

    def summary(self) -> dict[str, Any]:
        k = self.k
        return {
            "users": self.users,
            "rows": self.rows,
            "trials": len(self.search.trials),
            f"validation_ndcg_at_{k}": round(self.search.value, 4),
            f"configured_ndcg_at_{k}": round(self.configured, 4),
            "single_source": {s: round(v, 4) for s, v in self.search.single_source.items()},
        }


def tune_blend(cfg: Config, train: DataFrame, item_clusters: DataFrame, params: AlsParams) -> BlendTuning:
    """Blend weights maximising validation NDCG@K (``evaluation.k``) of the capped list."""
    rc, t = cfg.recommend, cfg.recommend.tuning
    fit, valid = validation_split(train, t.validation_ratio, t.seed)
    fit = fit.persist(StorageLevel.MEMORY_AND_DISK)
    valid = valid.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        users = sample_users(valid.select(COL_USER_IDX).distinct(), t.max_users, t.seed)
        src = fit_sources(cfg, fit, item_clusters, params)
        scored = scored_pool(cfg, src, users, rc.weights, item_clusters, cfg.evaluation.k)
        truth = valid.select(COL_USER_IDX, COL_ITEM_IDX).distinct().join(users, COL_USER_IDX, "left_semi")
        feats = [blend.feature(s) for s in rc.sources]
        # Warm users only: the cold ones are scored by the fixed cold weights, not by these.
        rows = (
            scored.where(~F.col(blend.COL_COLD))
            .join(truth.withColumn("relevant", F.lit(True)), [COL_USER_IDX, COL_ITEM_IDX], "left")
            .select(
                COL_USER_IDX,
                COL_ITEM_IDX,
                COL_CLUSTER,
                F.coalesce("relevant", F.lit(False)).alias("relevant"),
                *feats,
                blend.COL_PRIOR,
            )
            .toPandas()
        )
        per_user: pd.DataFrame = truth.groupBy(COL_USER_IDX).count().toPandas()
        n_rel = per_user.set_index(COL_USER_IDX)["count"]
        src.release()
    finally:
        fit.unpersist()
        valid.unpersist()
    data = blend_tuning.TuningData.from_pandas(rows, n_rel, rc.sources)
    k = cfg.evaluation.k
    start = blend_tuning.ndcg_at_k(data, rc.weights, k, rc.max_per_cluster)
    search = blend_tuning.tune_weights(
        data, k, rc.max_per_cluster, n_trials=t.n_trials, seed=t.seed, method=t.method, start=rc.weights
    )
    return BlendTuning(search, start, k, data.n_users, len(rows))


def sample_users(users: DataFrame, max_users: int, seed: int) -> DataFrame:
    """At most about ``max_users`` of ``users`` (a seeded hash sample; all of them when few)."""
    n = users.count()
    if n <= max_users:
        return users
    fraction = max_users / n
    u = F.abs(F.xxhash64(F.lit(seed), F.col(COL_USER_IDX))) % 1_000_000 / 1_000_000.0
    return users.where(u < fraction)
