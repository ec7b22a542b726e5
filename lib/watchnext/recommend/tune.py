"""The recipe tuned on a validation split: the recommend path's weight search and learned ranker.

The sources are fitted on the train split minus a validation split; their pooled candidates for a
sample of validation users go to the driver, where ``models/blend_tuning.py`` searches the linear
weights (Optuna) by NDCG@K of the capped list, and (``recommend.ranker: learned``) the learned ranker
(``models/ranker.py``) is trained over the same pool: on the driver where it already is (up to
``recommend.learned.local_max_rows`` rows), else on Spark; the same trees either way. Both are
fitted on the tuning users only; a held-back slice of the validation users picks the published recipe.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from watchnext.config import Config
from watchnext.constants import COL_CLUSTER, COL_ITEM_IDX, COL_USER_IDX
from watchnext.models import blend, blend_tuning
from watchnext.models.als import AlsParams
from watchnext.models.ranker import (
    COL_LABEL,
    COL_PREDICTION,
    COL_VALIDATION,
    CONTEXT_FEATURES,
    best_iteration,
    fit_ranker,
    fit_ranker_local,
    importances,
    local_features,
    predict,
    predict_local,
    proposed,
    ranker_context,
    weighted_features,
)
from watchnext.models.tuning import validation_split
from watchnext.recommend.candidates import scored_pool
from watchnext.recommend.sources import fit_sources

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlendTuning:
    """The recipe search's outcome: the linear weights, the learned ranker (when trained), the recipe
    chosen on the held-back users, and what each candidate recipe scored there."""

    search: blend_tuning.WeightSearch
    configured: float  # validation NDCG@k of recommend.weights (tuning users)
    k: int
    users: int
    rows: int
    recipe: str = "linear"  # learned | linear | single:<source>
    ranker: Any | None = None  # the SparkXGBRanker model when recipe == learned
    trained: Any | None = None  # the ranker model whether chosen or not (logged)
    holdout: dict[str, float] = field(default_factory=dict)  # held-back NDCG@k by recipe and source
    leave_one_out: dict[str, float] = field(default_factory=dict)  # held-back linear NDCG@k without it
    importances: dict[str, float] = field(default_factory=dict)
    best_iteration: int | None = None

    @property
    def weights(self) -> dict[str, float]:
        if self.recipe.startswith("single:"):
            return {self.recipe.split(":", 1)[1]: 1.0}
        return self.search.weights

    def summary(self) -> dict[str, Any]:
        k = self.k
        return {
            "users": self.users,
            "rows": self.rows,
            "trials": len(self.search.trials),
            "recipe": self.recipe,
            f"validation_ndcg_at_{k}": round(self.search.value, 4),
            f"configured_ndcg_at_{k}": round(self.configured, 4),
            "single_source": {s: round(v, 4) for s, v in self.search.single_source.items()},
            f"holdout_ndcg_at_{k}": {s: round(v, 4) for s, v in self.holdout.items()},
            f"holdout_ndcg_at_{k}_without": {s: round(v, 4) for s, v in self.leave_one_out.items()},
        }


def tune_blend(cfg: Config, train: DataFrame, item_clusters: DataFrame, params: AlsParams) -> BlendTuning:
    """The recipe maximising validation NDCG@K (``evaluation.k``) of the capped list.

    On the train split minus a validation split: the linear weights (Optuna) and, with
    ``recommend.ranker: learned``, the learned ranker are fitted on the tuning users; the held-back
    users (``tuning.holdout_share``) then choose between the learned ranker, the linear blend and the
    best single source (a recipe never publishes below its best single source on users it was not
    fitted on)."""
    rc, t = cfg.recommend, cfg.recommend.tuning
    k = cfg.evaluation.k
    fit, valid = validation_split(train, t.validation_ratio, t.seed)
    fit = fit.persist(StorageLevel.MEMORY_AND_DISK)
    valid = valid.persist(StorageLevel.MEMORY_AND_DISK)
    persisted: list[DataFrame] = [fit, valid]
    src = None
    try:
        users = sample_users(valid.select(COL_USER_IDX).distinct(), t.max_users, t.seed)
        src = fit_sources(cfg, fit, item_clusters, params)
        scored = scored_pool(cfg, src, users, rc.weights, item_clusters, k)
        truth = valid.select(COL_USER_IDX, COL_ITEM_IDX).distinct().join(users, COL_USER_IDX, "left_semi")
        # Warm users only: the cold ones are scored by the fixed cold weights, not by these.
        rows_df = (
            scored.where(~F.col(blend.COL_COLD))
            .join(truth.withColumn("relevant", F.lit(True)), [COL_USER_IDX, COL_ITEM_IDX], "left")
            .withColumn("relevant", F.coalesce("relevant", F.lit(False)))
            .withColumn(_HELD, _slice(t.seed, t.holdout_share))
            .persist(StorageLevel.MEMORY_AND_DISK)
        )
        persisted.append(rows_df)
        feats = [blend.feature(s) for s in rc.sources]
        learned = rc.ranker == "learned"
        collected, context = rows_df, []
        if learned:  # what the ranker's features need beyond the weights, collected with the rows
            collected = ranker_context(
                rows_df, rc.sources, trending=src.trending, affinity=src.affinity, counts=src.user_counts()
            ).withColumn(COL_VALIDATION, _slice(t.seed, rc.learned.early_stopping_share, salt=1))
            context = [*map(proposed, rc.sources), *CONTEXT_FEATURES[1:], COL_VALIDATION]
        rows: pd.DataFrame = collected.select(
            COL_USER_IDX, COL_ITEM_IDX, COL_CLUSTER, "relevant", _HELD, *feats, blend.COL_PRIOR, *context
        ).toPandas()
        per_user: pd.DataFrame = truth.groupBy(COL_USER_IDX).count().toPandas()
        n_rel = per_user.set_index(COL_USER_IDX)["count"]
        held = rows[_HELD].to_numpy(bool)
        data = blend_tuning.TuningData.from_pandas(rows[~held], n_rel, rc.sources)
        start = blend_tuning.ndcg_at_k(data, rc.weights, k, rc.max_per_cluster)
        search = blend_tuning.tune_weights(
            data, k, rc.max_per_cluster, n_trials=t.n_trials, seed=t.seed, method=t.method, start=rc.weights
        )
        trained = None
        held_rows = rows[held]
        hold = blend_tuning.TuningData.from_pandas(held_rows, n_rel, rc.sources)
        # The ablation (numpy, its own thread) runs while the ranker trains: they share nothing.
        with ThreadPoolExecutor(max_workers=1) as pool:
            ablation = pool.submit(leave_one_out, cfg, data, hold, k, search.single_source)
            if learned and _fits_driver(cfg, len(rows)):
                x = local_features(rows, rc.sources, search.weights)
                fit_rows = rows.loc[~held, [COL_USER_IDX, COL_ITEM_IDX, COL_VALIDATION]].assign(
                    **{COL_LABEL: rows.loc[~held, "relevant"].to_numpy(np.float64)}
                )
                batch = int(
                    train.sparkSession.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch") or 10_000
                )
                threads = max(1, min(os.cpu_count() or 1, 4))
                trained = fit_ranker_local(fit_rows, x[~held], rc.learned, rc.sources, t.seed, batch, threads)
                held_rows = held_rows.assign(**{COL_PREDICTION: predict_local(trained, x[held], rc.sources)})
                hold = blend_tuning.TuningData.from_pandas(
                    held_rows, n_rel, rc.sources, extra=[COL_PREDICTION]
                )
            elif learned:  # the context the rows were collected with, its joins not planned again
                ranked = weighted_features(collected.drop(COL_VALIDATION), rc.sources, search.weights)
                trained = _fit_ranker(cfg, ranked.where(~F.col(_HELD)), t.seed)
                pred = predict(trained, ranked.where(F.col(_HELD)), rc.sources)
                pred = pred.select(COL_USER_IDX, COL_ITEM_IDX, COL_PREDICTION)
                held_rows = held_rows.merge(pred.toPandas(), on=[COL_USER_IDX, COL_ITEM_IDX], how="left")
                hold = blend_tuning.TuningData.from_pandas(
                    held_rows, n_rel, rc.sources, extra=[COL_PREDICTION]
                )
            loo = ablation.result()
    finally:
        if src is not None:
            src.release()
        for df in persisted:
            df.unpersist()
    return _choose(cfg, search, start, k, data, len(rows), hold, trained, loo)


_HELD = "held_back"


def _fits_driver(cfg: Config, n_rows: int) -> bool:
    """Whether the ranker trains on the driver (``fit_ranker_local``: the same trees, no Spark job):
    one worker and at most ``recommend.learned.local_max_rows`` pool rows, already collected for the
    weight search."""
    lc = cfg.recommend.learned
    local = lc.num_workers == 1 and n_rows <= lc.local_max_rows
    log.info(
        "learned ranker: %s (%d pool rows, recommend.learned.local_max_rows %d)",
        "trained on the driver" if local else "trained on Spark",
        n_rows,
        lc.local_max_rows,
    )
    return local


def _slice(seed: int, share: float, salt: int = 0) -> Column:
    """A seeded hash slice of the users: true for about ``share`` of them."""
    u = F.abs(F.xxhash64(F.lit(seed), F.lit(salt), F.col(COL_USER_IDX))) % 1_000_000 / 1_000_000.0
    return u < share


def _fit_ranker(cfg: Config, rows: DataFrame, seed: int) -> Any:
    """The ranker on the tuning users' feature rows (not the held-back ones), early-stopped on a
    slice of them."""
    lc = cfg.recommend.learned
    train = rows.select(
        "*",
        F.col("relevant").cast("double").alias(COL_LABEL),
        _slice(seed, lc.early_stopping_share, salt=1).alias(COL_VALIDATION),
    )
    return fit_ranker(train, cfg.recommend.sources, lc, seed)


def pick_recipe(scores: Mapping[str, float], sources: Sequence[str], k: int = 10, users: int = 0) -> str:
    """The published recipe from held-back NDCG@k ``scores`` (by source, ``linear``, and ``learned``
    when a ranker was trained): ``learned`` unless the linear blend beats it, then ``single:<source>``
    if the best single source beats that (each fallback logged as a warning)."""
    recipe = "linear"
    if "learned" in scores:
        if scores["learned"] >= scores["linear"]:
            recipe = "learned"
        else:
            log.warning(
                "learned ranker below the linear blend on %d held-back users (NDCG@%d %.4f < %.4f): "
                "publishing the linear blend",
                users,
                k,
                scores["learned"],
                scores["linear"],
            )
    single = max(sources, key=lambda s: scores[s])
    if scores[recipe] < scores[single]:
        log.warning(
            "%s recipe below %s alone on %d held-back users (NDCG@%d %.4f < %.4f): publishing %s alone",
            recipe,
            single,
            users,
            k,
            scores[recipe],
            scores[single],
            single,
        )
        recipe = f"single:{single}"
    return recipe


def _choose(
    cfg: Config,
    search: blend_tuning.WeightSearch,
    start: float,
    k: int,
    tuning: blend_tuning.TuningData,
    n_rows: int,
    hold: blend_tuning.TuningData,
    trained: Any | None,
    loo: dict[str, float],
) -> BlendTuning:
    """The recipe with the best held-back NDCG@k: learned (when trained) over linear on ties lost,
    the best single source when both fall below it."""
    rc = cfg.recommend
    cap = rc.max_per_cluster
    scores: dict[str, float] = {s: blend_tuning.ndcg_at_k(hold, {s: 1.0}, k, cap) for s in rc.sources}
    scores["linear"] = blend_tuning.ndcg_at_k(hold, search.weights, k, cap)
    if trained is not None:
        scores["learned"] = blend_tuning.ndcg_of_scores(hold, hold.extra[COL_PREDICTION], k, cap)
    recipe = pick_recipe(scores, rc.sources, k, hold.n_users)
    return BlendTuning(
        search,
        start,
        k,
        tuning.n_users + hold.n_users,
        n_rows,
        recipe=recipe,
        ranker=trained if recipe == "learned" else None,
        trained=trained,
        holdout=scores,
        leave_one_out=loo,
        importances=importances(trained, rc.sources) if trained is not None else {},
        best_iteration=best_iteration(trained) if trained is not None else None,
    )


def leave_one_out(
    cfg: Config,
    tuning: blend_tuning.TuningData,
    hold: blend_tuning.TuningData,
    k: int,
    single: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """What each source earns: the linear blend re-tuned on ``tuning`` without it (a short search),
    scored on the held-back users ``hold``; {} with a single source. ``single``: each source's NDCG
    alone on ``tuning`` when known (the full search's: the same pool, so the same values)."""
    rc, t = cfg.recommend, cfg.recommend.tuning
    cap = rc.max_per_cluster
    if len(rc.sources) < 2:
        return {}
    loo: dict[str, float] = {}
    for s in rc.sources:
        w = blend_tuning.tune_weights(
            tuning.without(s),
            k,
            cap,
            n_trials=max(10, t.n_trials // 6),
            seed=t.seed,
            method=t.method,
            label=None,  # an ablation: not a search the console follows
            single=single,
        ).weights
        loo[s] = blend_tuning.ndcg_at_k(hold.without(s), w, k, cap)
    return loo


def sample_users(users: DataFrame, max_users: int, seed: int) -> DataFrame:
    """At most about ``max_users`` of ``users`` (a seeded hash sample; all of them when few)."""
    n = users.count()
    if n <= max_users:
        return users
    fraction = max_users / n
    u = F.abs(F.xxhash64(F.lit(seed), F.col(COL_USER_IDX))) % 1_000_000 / 1_000_000.0
    return users.where(u < fraction)
