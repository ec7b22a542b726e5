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

import numpy as np
import pandas as pd
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


def proposed(source: str) -> str:
    """The column of :func:`ranker_context` that says whether ``source`` proposed the row's item."""
    return f"proposed_{source}"


def ranker_context(
    scored: DataFrame,
    sources: Sequence[str],
    *,
    trending: DataFrame,
    affinity: DataFrame | None,
    counts: DataFrame,
) -> DataFrame:
    """``scored`` plus what the ranker's features take that does not depend on the blend weights:
    ``proposed_<s>`` (boolean, :func:`proposed`) and the context features but ``linear``
    (``n_sources``, ``popularity``, ``trend``, ``affinity``, ``activity``, doubles).

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
    proposed_by = F.filter(F.col(COL_SOURCES), lambda s: s != "backfill")
    cols: dict[str, Column] = {proposed(s): F.array_contains(COL_SOURCES, s) for s in sources}
    cols.update(
        {
            "n_sources": F.size(proposed_by).cast("double"),
            "popularity": F.col(COL_PRIOR).cast("double"),
            "trend": F.coalesce(F.col("trend"), F.lit(0.0)).cast("double"),
            "affinity": F.coalesce(F.col("affinity"), F.lit(0.0)).cast("double"),
            "activity": F.coalesce(F.col("activity"), F.lit(0.0)).cast("double"),
        }
    )
    return out.withColumns(cols)


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
    ``weights``. The other arguments: :func:`ranker_context`."""
    out = ranker_context(scored, sources, trending=trending, affinity=affinity, counts=counts)
    return weighted_features(out, sources, weights)


def weighted_features(context: DataFrame, sources: Sequence[str], weights: Mapping[str, float]) -> DataFrame:
    """:func:`ranker_features` of a :func:`ranker_context` frame: the weights' ``linear`` blend and the
    source scores marked missing where the source did not propose the item."""
    out = context
    linear = F.lit(BACKFILL_EPS) * F.col(COL_PRIOR)
    for s, w in zip(sources, weight_vector(weights, sources), strict=True):
        linear = linear + F.lit(float(w)) * F.col(feature(s))
    feats: dict[str, Column] = {feature(s): F.when(F.col(proposed(s)), F.col(feature(s))) for s in sources}
    feats["linear"] = linear
    return out.withColumns({k: v.cast("double") for k, v in feats.items()}).drop(*map(proposed, sources))


def local_features(rows: pd.DataFrame, sources: Sequence[str], weights: Mapping[str, float]) -> pd.DataFrame:
    """:func:`ranker_features`' feature columns (float32, missing as NaN, the estimator's input type)
    for ``rows`` of :func:`ranker_context` collected to the driver: the same values, the same order of
    operations for ``linear``."""
    linear = BACKFILL_EPS * rows[COL_PRIOR].to_numpy(np.float64)
    for s, w in zip(sources, weight_vector(weights, sources), strict=True):
        linear = linear + float(w) * rows[feature(s)].to_numpy(np.float64)
    out = {
        feature(s): np.where(rows[proposed(s)].to_numpy(bool), rows[feature(s)].to_numpy(np.float64), np.nan)
        for s in sources
    }
    out["linear"] = linear
    for c in CONTEXT_FEATURES[1:]:
        out[c] = rows[c].to_numpy(np.float64)
    return pd.DataFrame(
        {c: np.asarray(out[c], np.float64).astype(np.float32) for c in feature_names(sources)}
    )


def _estimator(sources: Sequence[str], params: LearnedRankerConfig, seed: int) -> Any:
    from xgboost.spark import SparkXGBRanker

    return SparkXGBRanker(
        features_col=feature_names(sources),
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


def fit_ranker(train: DataFrame, sources: Sequence[str], params: LearnedRankerConfig, seed: int = 0) -> Any:
    """A ``SparkXGBRankerModel`` on ``train`` (:func:`ranker_features` columns, ``label`` 0/1 and
    ``is_validation``: the rows of the early-stopping users), one query per user; ``params``: config
    ``recommend.learned``."""
    cols = feature_names(sources)
    require_columns(train, [COL_USER_IDX, COL_LABEL, COL_VALIDATION, *cols], "ranker training rows")
    ranker = _estimator(sources, params, seed)
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


def fit_ranker_local(
    rows: pd.DataFrame,
    features: pd.DataFrame,
    params: LearnedRankerConfig,
    sources: Sequence[str],
    seed: int = 0,
    batch_rows: int = 10_000,
    threads: int = 1,
) -> Any:
    """:func:`fit_ranker` on the driver, for rows already there: the same ``SparkXGBRankerModel``
    (the same trees) without a Spark job, for one worker (``params.num_workers == 1``).

    ``rows``: ``user_idx``, ``item_idx``, ``label`` and ``is_validation`` per row; ``features``: the
    rows' :func:`local_features`, aligned with ``rows``. What the Spark path's single barrier task
    does is done here, with XGBoost's own helpers: the rows in (user, item) order, cut into batches of
    ``batch_rows`` (``spark.sql.execution.arrow.maxRecordsPerBatch``, the size the task receives
    them in), the estimator's parameters, its QuantileDMatrix and ``xgboost.train``, on ``threads``
    threads (the Spark task has one; ``hist`` builds the same trees on any number)."""
    import xgboost
    from xgboost.spark.data import alias, create_dmatrix_from_partitions
    from xgboost.spark.summary import XGBoostTrainingSummary

    if params.num_workers != 1:
        raise ValueError(f"fit_ranker_local trains one worker's model, got num_workers={params.num_workers}")
    require_columns(rows, [COL_USER_IDX, COL_ITEM_IDX, COL_LABEL, COL_VALIDATION], "ranker training rows")
    cols = feature_names(sources)
    order = np.lexsort((rows[COL_ITEM_IDX].to_numpy(), rows[COL_USER_IDX].to_numpy()))
    data = pd.DataFrame({alias.label: rows[COL_LABEL].to_numpy(np.float64)[order]})
    for c in cols:
        data[c] = features[c].to_numpy(np.float32)[order]
    data[alias.valid] = rows[COL_VALIDATION].to_numpy(bool)[order]
    data[alias.qid] = rows[COL_USER_IDX].to_numpy(np.int64)[order]
    batches = (data.iloc[i : i + batch_rows].reset_index(drop=True) for i in range(0, len(data), batch_rows))

    estimator = _estimator(sources, params, seed)
    booster_params, train_kwargs, dmatrix_kwargs = estimator._get_xgb_parameters(None)
    booster_params["nthread"] = dmatrix_kwargs["nthread"] = threads
    dtrain, dvalid = create_dmatrix_from_partitions(
        iterator=batches,
        feature_cols=cols,
        dev_ordinal=None,
        use_qdm=True,  # hist on CPU, as the Spark task decides
        kwargs=dmatrix_kwargs,
        enable_sparse_data_optim=False,
        has_validation_col=True,
    )
    evals = [(dtrain, "training")] + ([(dvalid, "validation")] if dvalid is not None else [])
    evals_result: dict[str, Any] = {}
    booster = xgboost.train(
        params=booster_params, dtrain=dtrain, evals=evals, evals_result=evals_result, **train_kwargs
    )
    sklearn_model = estimator._convert_to_sklearn_model(
        bytearray(booster.save_raw("json").decode("utf-8"), "utf-8"), booster.save_config()
    )
    model = estimator._create_pyspark_model(sklearn_model, XGBoostTrainingSummary.from_metrics(evals_result))
    model._resetUid(estimator.uid)
    return estimator._copyValues(model)


def predict_local(model: Any, features: pd.DataFrame, sources: Sequence[str]) -> np.ndarray:
    """:func:`predict`'s scores (float64) for ``features`` (:func:`local_features`) on the driver:
    the call the model's Spark transform makes on each batch (the scikit-learn model's ``predict``,
    up to the early-stopped best iteration, the model's predict parameters), on the same float32
    inputs, so the same values."""
    cols = feature_names(sources)
    preds = model._xgb_sklearn_model.predict(
        features[cols], validate_features=False, **model._gen_predict_params_dict()
    )
    return np.asarray(preds, np.float32).astype(np.float64)


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
