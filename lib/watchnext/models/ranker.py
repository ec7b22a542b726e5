"""The learned ranker: LambdaMART (XGBoost's ``SparkXGBRanker``) over the blended candidate pool.

The second stage of the recommend path. Its rows are the scored pool of ``models/blend.py`` (one row
per (user, item) any source proposed); :func:`ranker_features` turns a row into features:

* ``f_<source>``: each source's normalised score, **missing** (null, not 0) when the source did not
  propose the item, so the trees can tell "not proposed" from "proposed last";
* ``linear``: the tuned linear blend's score (the ranker starts from the baseline it has to beat);
* ``n_sources``: how many sources proposed the item;
* ``popularity`` and ``trend``: the item's interactions and recent interactions over the top item's;
* ``affinity``: the user's share of interactions in the item's genre cluster;
* ``activity``: log(1 + the user's interactions).

Every feature is a ratio or a per-user normalised score, so a ranker fitted on the validation level
(sources fitted on 75 % of a history) transfers to sources fitted on the whole history.

:func:`fit_ranker` trains ``SparkXGBRanker`` (objective ``rank:ndcg``, one query per user, distributed
over ``num_workers`` barrier tasks) with early stopping on a validation slice of the users;
:func:`predict` adds its score.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from watchnext.checks import require_columns
from watchnext.config import LearnedRankerConfig
from watchnext.constants import COL_CLUSTER, COL_ITEM_IDX, COL_SCORE, COL_SHARE, COL_SOURCES, COL_USER_IDX
from watchnext.kernels import weight_vector
from watchnext.models.blend import BACKFILL_EPS, COL_PRIOR, feature

log = logging.getLogger(__name__)

COL_LABEL = "label"
COL_PREDICTION = "prediction"
COL_VALIDATION = "is_validation"
CONTEXT_FEATURES = ("linear", "n_sources", "popularity", "trend", "affinity", "activity")


def feature_names(sources: Sequence[str]) -> list[str]:
    """The ranker's feature columns for ``sources``, in model order."""
    return [feature(s) for s in sources] + list(CONTEXT_FEATURES)


def ranker_features(
    scored: DataFrame,
    sources: Sequence[str],
    weights: Mapping[str, float],
    *,
    trending: DataFrame,
    affinity: DataFrame | None,
    counts: DataFrame,
) -> DataFrame:
    """``scored`` (the scored pool: ``user_idx, item_idx, f_<s>..., sources, prior, cluster_id``) plus
    the feature columns of :func:`feature_names` (module docstring); ``linear`` is the blend with
    ``weights``.

    ``trending``: ``(item_idx, score)``; ``affinity``: ``(user_idx, cluster_id, share)`` or None (0);
    ``counts``: ``(user_idx, count)``, the user's interactions."""
    require_columns(
        scored,
        [COL_USER_IDX, COL_ITEM_IDX, COL_SOURCES, COL_PRIOR, COL_CLUSTER, *map(feature, sources)],
        "scored pool",
    )
    top_trend = trending.agg(F.max(COL_SCORE)).first()[0] or 1.0  # type: ignore[index]
    trend = trending.select(COL_ITEM_IDX, (F.col(COL_SCORE) / F.lit(float(top_trend))).alias("trend"))
    out = scored.join(F.broadcast(trend), COL_ITEM_IDX, "left").join(
        counts.select(COL_USER_IDX, F.log1p(F.col("count").cast("double")).alias("activity")),
        COL_USER_IDX,
        "left",
    )
    if affinity is not None:
        aff = affinity.select(COL_USER_IDX, COL_CLUSTER, F.col(COL_SHARE).alias("affinity"))
        out = out.join(aff, [COL_USER_IDX, COL_CLUSTER], "left")
    else:
        out = out.withColumn("affinity", F.lit(None).cast("double"))
    linear = F.lit(BACKFILL_EPS) * F.col(COL_PRIOR)
    for s, w in zip(sources, weight_vector(weights, sources), strict=True):
        linear = linear + F.lit(float(w)) * F.col(feature(s))
    proposed = F.filter(F.col(COL_SOURCES), lambda s: s != "backfill")
    feats: dict[str, Column] = {
        feature(s): F.when(F.array_contains(COL_SOURCES, s), F.col(feature(s))) for s in sources
    }
    feats.update(
        {
            "linear": linear,
            "n_sources": F.size(proposed).cast("double"),
            "popularity": F.col(COL_PRIOR),
            "trend": F.coalesce(F.col("trend"), F.lit(0.0)),
            "affinity": F.coalesce(F.col("affinity"), F.lit(0.0)),
            "activity": F.coalesce(F.col("activity"), F.lit(0.0)),
        }
    )
    return out.withColumns({k: v.cast("double") for k, v in feats.items()})


def fit_ranker(train: DataFrame, sources: Sequence[str], params: LearnedRankerConfig, seed: int = 0) -> Any:
    """A ``SparkXGBRankerModel`` on ``train`` (:func:`ranker_features` columns, ``label`` 0/1 and
    ``is_validation``: the rows of the early-stopping users), one query per user; ``params``: config
    ``recommend.learned``."""
    from xgboost.spark import SparkXGBRanker

    cols = feature_names(sources)
    require_columns(train, [COL_USER_IDX, COL_LABEL, COL_VALIDATION, *cols], "ranker training rows")
    ranker = SparkXGBRanker(
        features_col=cols,
        label_col=COL_LABEL,
        qid_col=COL_USER_IDX,
        validation_indicator_col=COL_VALIDATION,
        prediction_col=COL_PREDICTION,
        num_workers=params.num_workers,
        objective="rank:ndcg",
        eval_metric="ndcg@10",
        tree_method="hist",
        max_depth=params.max_depth,
        learning_rate=params.learning_rate,
        n_estimators=params.n_estimators,
        early_stopping_rounds=params.early_stopping_rounds,
        min_child_weight=params.min_child_weight,
        subsample=params.subsample,
        reg_lambda=params.reg_lambda,
        random_state=seed,
    )
    # One partition per worker, rows sorted by (user, item) and materialised (the optimizer would
    # otherwise drop this sort under the estimator's own sort by user): the estimator then neither
    # repartitions nor reorders (its sort is stable on sorted input), so a rerun sees the same rows
    # in the same order and trains the same trees.
    data = train.select(
        F.col(COL_USER_IDX).cast("long").alias(COL_USER_IDX),
        F.col(COL_ITEM_IDX),
        F.col(COL_LABEL).cast("double").alias(COL_LABEL),
        F.col(COL_VALIDATION).cast("boolean").alias(COL_VALIDATION),
        *[F.coalesce(F.col(c), F.lit(float("nan"))).alias(c) for c in cols],
    )
    ordered = (
        data.repartitionByRange(params.num_workers, COL_USER_IDX)
        .sortWithinPartitions(COL_USER_IDX, COL_ITEM_IDX)
        .localCheckpoint(eager=True)
    )
    return ranker.fit(ordered)


def predict(model: Any, df: DataFrame, sources: Sequence[str]) -> DataFrame:
    """``df`` plus ``prediction`` (double): the ranker's score (higher ranks first)."""
    cols = feature_names(sources)
    require_columns(df, cols, "ranker input")
    nan = {c: F.coalesce(F.col(c), F.lit(float("nan"))) for c in cols}
    out = model.transform(df.withColumns(nan))
    return out.withColumn(COL_PREDICTION, F.col(COL_PREDICTION).cast("double"))


def importances(model: Any, sources: Sequence[str]) -> dict[str, float]:
    """Total gain per feature, over the features' total (features never split on: 0)."""
    cols = feature_names(sources)
    gain = model.get_booster().get_score(importance_type="total_gain")
    named = {c: float(gain.get(c, gain.get(f"f{i}", 0.0))) for i, c in enumerate(cols)}
    total = sum(named.values()) or 1.0
    return {c: v / total for c, v in named.items()}


def best_iteration(model: Any) -> int | None:
    booster = model.get_booster()
    value = booster.attributes().get("best_iteration")
    return int(value) if value is not None else None
