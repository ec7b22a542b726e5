"""Spark MLlib ALS for explicit ratings and implicit feedback, the biased explicit variant, and top-K.

**Explicit** (``implicit_prefs=False``): ALS minimises
``sum_{(u,i) observed} (r_ui - p_u . q_i)^2 + reg_param * (sum_u n_u |p_u|^2 + sum_i n_i |q_i|^2)``
(Spark scales the regularisation by each row's rating count, ALS-WR).

**Implicit** (``implicit_prefs=True``, Hu, Koren & Volinsky 2008): every (user, item) cell counts,
with preference ``p_ui = 1 if x_ui > 0 else 0`` and confidence ``c_ui = 1 + alpha * |x_ui|``, where
``x_ui`` is the value given to Spark. ``confidence`` says how ``x_ui`` comes from the rating ``r``:

* ``"binary"``: ``x = 1`` for every interaction, so ``c = 1 + alpha`` (watched = liked; what ``auto``
  gives ratings, best on ml-latest-small when every held-out item counts as relevant);
* ``"rating"``: ``x = r``, so ``c = 1 + alpha * r`` (higher ratings, more confidence; on raw counts,
  up to 350,000 plays of an artist, one cell gets a confidence of millions and outweighs the rest of
  its user's row);
* ``"log"``: ``x = log1p(r) = log(1 + r)``: the scheme for counts, Hu, Koren & Volinsky's own
  ``c = 1 + alpha * log(1 + r / eps)`` with ``eps = 1``: a count still raises the confidence, but a
  thousand plays weigh about 7 times one play, not a thousand times;
* ``"centered"``: ``x = r - rating_threshold``: ratings above the threshold are positive with
  confidence growing with the margin, those below are confident *negatives* (``p = 0``,
  ``c = 1 + alpha * (threshold - r)``), those at the threshold count as unobserved.

**Choosing the scheme** (:func:`resolve_confidence`, ``als.confidence: auto``, the default): the
value column is what ingest stored: an explicit rating, or for implicit feedback the sum of the
events' weights per (user, item) (1.0 per event without a value column), so implicit data without
counts has every value equal. ``auto`` resolves per run:

* explicit ratings (``ingest.feedback: explicit``) -> ``binary`` (the measured default; ratings as
  confidence did worse on ml-latest-small, docs/quality.md);
* implicit, every value equal (events without counts) -> ``binary`` (any scheme is binary then, up
  to a rescaled alpha);
* implicit counts (the values vary) -> searched on the validation split with the other parameters
  over ``als.tuning.space.confidence`` (the first trials: the configured parameters with ``log``, then
  with each other scheme), or ``log`` when tuning is off.

A named scheme is used as configured and never searched. The resolved scheme is what the als stage
fits and registers (``best.confidence``), so the recommend stage fits with it too.

**Biased explicit** (:func:`fit_biased_als`): ``r_hat = mu + b_u + b_i + p_u . q_i``: the
regularised bias model (:mod:`watchnext.models.baselines`) is fitted first and ALS on the residuals
``r - mu - b_u - b_i``; a user or item without factors falls back to the bias prediction.

Spark's ALS silently ignores ``checkpointInterval`` unless the SparkContext has a checkpoint
directory, and then long runs die of lineage stack overflows: :func:`fit_als` refuses to run without
one (``build_session(..., checkpoint_dir=...)`` sets it), unless ``checkpoint_interval=-1``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from watchnext.constants import (
    COL_FEATURES,
    COL_ITEM_IDX,
    COL_PREDICTION,
    COL_RANK,
    COL_RATING,
    COL_SCORE,
    COL_USER_IDX,
)
from watchnext.models.baselines import COL_BIAS, BiasModel, fit_biases, predict_biases
from watchnext.models.topk import topk_from_factors

if TYPE_CHECKING:
    from watchnext.config import AlsConfig

log = logging.getLogger(__name__)

Confidence = Literal["binary", "rating", "log", "centered"]
ConfidenceSetting = Literal["auto", "binary", "rating", "log", "centered"]
COUNTS_CONFIDENCE: Confidence = "log"  # auto's scheme for counts (tuning off; the search's trial 0)
# Fewest ratings per ALS block worth a separate task: below this, more blocks only add shuffle.
MIN_RATINGS_PER_BLOCK = 50_000


class AlsParams(BaseModel):
    """Hyperparameters of one ALS fit (definitions in the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int = Field(64, ge=1)
    reg_param: float = Field(0.1, ge=0)
    alpha: float = Field(10.0, ge=0)  # implicit only
    max_iter: int = Field(15, ge=1)
    implicit_prefs: bool = True
    confidence: Confidence = "binary"  # implicit only
    rating_threshold: float = 3.0  # confidence="centered" only
    nonnegative: bool = False
    checkpoint_interval: int = Field(10, ge=-1)  # -1: never checkpoint (and no checkpoint dir needed)
    seed: int = 42

    @classmethod
    def from_config(
        cls, cfg: AlsConfig, seed: int | None = None, confidence: Confidence | None = None
    ) -> AlsParams:
        """The fixed-point parameters of the ``als`` config section.

        ``confidence`` (a resolved scheme, :func:`resolve_confidence`) replaces the configured one;
        without it ``auto`` reads as ``binary``, its scheme for ratings and plain events (the als
        stage resolves ``auto`` from the data and registers the result).
        """
        if confidence is None:
            confidence = "binary" if cfg.confidence == "auto" else cfg.confidence
        return cls(
            rank=cfg.rank,
            reg_param=cfg.reg_param,
            alpha=cfg.alpha,
            max_iter=cfg.max_iter,
            implicit_prefs=cfg.implicit_prefs,
            confidence=confidence,
            rating_threshold=cfg.rating_threshold,
            nonnegative=cfg.nonnegative,
            checkpoint_interval=cfg.checkpoint_interval,
            seed=cfg.seed if seed is None else seed,
        )


@dataclass(frozen=True)
class BiasedAlsModel:
    """``r_hat = mu + b_u + b_i + p_u . q_i``: a bias model plus explicit ALS fitted on its residuals."""

    biases: BiasModel
    als: ALSModel


@dataclass(frozen=True)
class ConfidenceDecision:
    """How ``als.confidence`` resolved for one run's data (:func:`resolve_confidence`)."""

    configured: ConfidenceSetting
    scheme: Confidence  # what is fitted; with ``searched``, the search's trial 0
    searched: tuple[Confidence, ...]  # the schemes the tuning searches; () when fixed
    reason: str
    value_min: float | None = None  # the measured value range; None when not measured
    value_max: float | None = None

    def describe(self) -> str:
        """One line: the outcome and why."""
        what = (
            f"searched over {list(self.searched)} (trial 0: {self.scheme})" if self.searched else self.scheme
        )
        return f"als.confidence {self.configured} -> {what}: {self.reason}"

    def mlflow_params(self) -> dict[str, Any]:
        """The decision as MLflow params (``confidence.*``)."""
        return {
            "confidence.configured": self.configured,
            "confidence.scheme": self.scheme,
            "confidence.searched": ",".join(self.searched),
            "confidence.reason": self.reason,
            "confidence.value_min": self.value_min,
            "confidence.value_max": self.value_max,
        }


def resolve_confidence(
    interactions: DataFrame,
    configured: ConfidenceSetting,
    feedback: Literal["explicit", "implicit"],
    *,
    implicit_prefs: bool = True,
    tuning: bool = True,
    candidates: Sequence[Confidence] = ("binary", "log", "rating"),
    col_rating: str = COL_RATING,
) -> ConfidenceDecision:
    """Resolve ``configured`` for ``interactions`` (the rule in the module docstring).

    ``feedback`` is ``ingest.feedback``; ``tuning`` whether the validation search runs; ``candidates``
    the schemes it may search (``als.tuning.space.confidence``). Only ``auto`` on implicit feedback
    looks at the data: one aggregation, the min and max of ``col_rating``.
    """
    if configured not in get_args(ConfidenceSetting):
        raise ValueError(f"confidence must be one of {get_args(ConfidenceSetting)}, got {configured!r}")
    if feedback not in ("explicit", "implicit"):
        raise ValueError(f"feedback must be 'explicit' or 'implicit', got {feedback!r}")
    bad = [c for c in candidates if c not in get_args(Confidence)]
    if not candidates or bad:
        raise ValueError(f"candidates must be schemes of {get_args(Confidence)}, got {list(candidates)}")
    if configured != "auto":
        return ConfidenceDecision(configured, configured, (), "configured")
    if not implicit_prefs:
        return ConfidenceDecision(
            configured, "binary", (), "explicit ALS (implicit_prefs false) has no confidence"
        )
    if feedback == "explicit":
        return ConfidenceDecision(
            configured, "binary", (), "explicit ratings (ingest.feedback explicit): every rated item counts"
        )
    if col_rating not in interactions.columns:
        raise ValueError(f"interactions is missing column '{col_rating}' (has {interactions.columns})")
    row = interactions.agg(F.min(col_rating).alias("lo"), F.max(col_rating).alias("hi")).head(1)[0]
    lo, hi = (None if v is None else float(v) for v in (row["lo"], row["hi"]))
    if lo is None or hi is None:
        return ConfidenceDecision(configured, "binary", (), "no interactions", lo, hi)
    if lo == hi:
        reason = f"implicit events without counts (every value {lo:g})"
        return ConfidenceDecision(configured, "binary", (), reason, lo, hi)
    counts = f"implicit counts (values {lo:g} to {hi:g})"
    if not tuning:
        return ConfidenceDecision(configured, COUNTS_CONFIDENCE, (), f"{counts}, tuning off", lo, hi)
    if len(candidates) == 1:
        reason = f"{counts}, the only scheme in als.tuning.space.confidence"
        return ConfidenceDecision(configured, candidates[0], (), reason, lo, hi)
    start = COUNTS_CONFIDENCE if COUNTS_CONFIDENCE in candidates else candidates[0]
    reason = f"{counts}: chosen on the validation split"
    return ConfidenceDecision(configured, start, tuple(candidates), reason, lo, hi)


def implicit_value(rating: Column, confidence: Confidence, rating_threshold: float = 3.0) -> Column:
    """The value ``x`` Spark's implicit ALS receives for a rating (module docstring)."""
    r = rating.cast("double")
    if confidence == "binary":
        return F.lit(1.0)
    if confidence == "rating":
        return r
    if confidence == "log":
        return F.log1p(r)
    if confidence == "centered":
        return r - F.lit(float(rating_threshold))
    raise ValueError(f"unknown confidence {confidence!r}")


def als_num_blocks(n_ratings: int, parallelism: int, min_per_block: int = MIN_RATINGS_PER_BLOCK) -> int:
    """User and item blocks: one per ``min_per_block`` ratings, at least 1, at most ``parallelism``."""
    return max(1, min(int(parallelism), math.ceil(n_ratings / float(min_per_block))))


def _check_checkpoint_dir(train: DataFrame, params: AlsParams) -> None:
    if params.checkpoint_interval < 1:
        return
    sc = train.sparkSession.sparkContext
    if sc.getCheckpointDir() is None:
        raise RuntimeError(
            "ALS needs a checkpoint directory: without one Spark silently ignores checkpointInterval "
            f"(={params.checkpoint_interval}) and long fits overflow the lineage. Call "
            "spark.sparkContext.setCheckpointDir(...) (build_session(cfg, checkpoint_dir=...) does), or "
            "set checkpoint_interval=-1 to opt out."
        )


def fit_als(
    train: DataFrame,
    params: AlsParams,
    *,
    num_blocks: int | None = None,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_rating: str = COL_RATING,
) -> ALSModel:
    """Fit ALS on ``train`` (explicit or implicit per ``params``; see the module docstring).

    ``num_blocks`` (user and item blocks alike) defaults to :func:`als_num_blocks` of the rating
    count and ``spark.default.parallelism`` (one count job). The model's ``coldStartStrategy`` is
    ``"drop"``, so ``transform`` leaves out pairs with an unknown user or item (what evaluation wants).
    """
    for c in (col_user, col_item, col_rating):
        if c not in train.columns:
            raise ValueError(f"train is missing column '{c}' (has {train.columns})")
    _check_checkpoint_dir(train, params)
    if num_blocks is None:
        num_blocks = als_num_blocks(train.count(), train.sparkSession.sparkContext.defaultParallelism)
    elif num_blocks < 1:
        raise ValueError(f"num_blocks must be >= 1, got {num_blocks}")
    value = (
        implicit_value(F.col(col_rating), params.confidence, params.rating_threshold)
        if params.implicit_prefs
        else F.col(col_rating).cast("double")
    )
    data = train.select(col_user, col_item, value.alias(col_rating))
    als = ALS(
        rank=params.rank,
        maxIter=params.max_iter,
        regParam=params.reg_param,
        alpha=params.alpha,
        implicitPrefs=params.implicit_prefs,
        nonnegative=params.nonnegative,
        numUserBlocks=num_blocks,
        numItemBlocks=num_blocks,
        checkpointInterval=params.checkpoint_interval,
        seed=params.seed,
        coldStartStrategy="drop",
        userCol=col_user,
        itemCol=col_item,
        ratingCol=col_rating,
    )
    log.info("ALS fit: %s, %d blocks", params.model_dump(), num_blocks)
    return als.fit(data)


def fit_biased_als(
    train: DataFrame,
    params: AlsParams,
    bias_regs: tuple[float, float] = (10.0, 10.0),
    bias_iters: int = 5,
    *,
    num_blocks: int | None = None,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_rating: str = COL_RATING,
) -> BiasedAlsModel:
    """Biases first (``bias_regs = (reg_user, reg_item)``), then explicit ALS on the residuals."""
    if params.implicit_prefs:
        raise ValueError(
            "the biased ALS model is for explicit ratings; pass params with implicit_prefs=False"
        )
    cols = {"col_user": col_user, "col_item": col_item}
    biases = fit_biases(train, bias_regs[0], bias_regs[1], bias_iters, col_rating=col_rating, **cols)
    resid = predict_biases(biases, train.select(col_user, col_item, col_rating), col_prediction="_base")
    resid = resid.select(col_user, col_item, (F.col(col_rating) - F.col("_base")).alias(col_rating))
    als = fit_als(resid, params, num_blocks=num_blocks, col_rating=col_rating, **cols)
    return BiasedAlsModel(biases=biases, als=als)


def predict(
    model: ALSModel | BiasedAlsModel,
    pairs: DataFrame,
    *,
    cold_start: Literal["drop", "nan"] = "drop",
    clip: tuple[float, float] | None = None,
    col_prediction: str = COL_PREDICTION,
) -> DataFrame:
    """``pairs`` plus ``col_prediction`` (double).

    Plain ALS: ``p_u . q_i``; a pair with an unknown user or item is dropped (``"drop"``) or gets NaN
    (``"nan"``). Biased model: ``mu + b_u + b_i + p_u . q_i`` with a missing factor term counting 0,
    so every pair gets a prediction. ``clip=(lo, hi)`` clamps to the rating scale. For implicit models
    the prediction is a preference score, not a rating.
    """
    if isinstance(model, BiasedAlsModel):
        base = predict_biases(model.biases, pairs, col_prediction="_base")
        scored = model.als.transform(
            base, params={model.als.coldStartStrategy: "nan", model.als.predictionCol: "_f"}
        )
        factor = F.when(F.isnan("_f") | F.col("_f").isNull(), F.lit(0.0)).otherwise(
            F.col("_f").cast("double")
        )
        pred = F.col("_base") + factor
    else:
        scored = model.transform(
            pairs.drop(col_prediction),
            params={model.coldStartStrategy: cold_start, model.predictionCol: "_f"},
        )
        pred = F.col("_f").cast("double")
    cols = [c for c in pairs.columns if c != col_prediction]
    if clip is not None:
        pred = F.least(F.greatest(pred, F.lit(float(clip[0]))), F.lit(float(clip[1])))
    return scored.withColumn(col_prediction, pred).select(*cols, col_prediction)


def factor_frames(
    model: ALSModel | BiasedAlsModel,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_features: str = COL_FEATURES,
) -> tuple[DataFrame, DataFrame]:
    """``(user_factors, item_factors)`` with ``p_u . q_i`` equal to the model's prediction.

    Plain ALS: Spark's factors. Biased model: augmented with two dimensions,
    ``p_u' = [p_u, 1, mu + b_u]`` and ``q_i' = [q_i, b_i, 1]``, so
    ``p_u' . q_i' = mu + b_u + b_i + p_u . q_i``.
    """
    als = model.als if isinstance(model, BiasedAlsModel) else model
    users = als.userFactors.select(F.col("id").alias(col_user), F.col("features").alias(col_features))
    items = als.itemFactors.select(F.col("id").alias(col_item), F.col("features").alias(col_features))
    if isinstance(model, BiasedAlsModel):
        b = model.biases
        ub = b.user_bias.select(F.col(b.col_user).alias(col_user), F.col(COL_BIAS).alias("_b"))
        ib = b.item_bias.select(F.col(b.col_item).alias(col_item), F.col(COL_BIAS).alias("_b"))
        user_tail = F.array(F.lit(1.0), F.lit(b.mu) + F.coalesce(F.col("_b"), F.lit(0.0))).cast(
            "array<float>"
        )
        item_tail = F.array(F.coalesce(F.col("_b"), F.lit(0.0)), F.lit(1.0)).cast("array<float>")
        users = users.join(ub, col_user, "left").select(
            col_user, F.concat(col_features, user_tail).alias(col_features)
        )
        items = items.join(ib, col_item, "left").select(
            col_item, F.concat(col_features, item_tail).alias(col_features)
        )
    return users, items


def top_k_items(
    model: ALSModel | BiasedAlsModel,
    users: DataFrame | None,
    k: int,
    seen: DataFrame | None = None,
    *,
    block_size: int | None = None,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_score: str = COL_SCORE,
    col_rank: str = COL_RANK,
) -> DataFrame:
    """Top ``k`` per user of ``users`` (distinct ``col_user`` values; None: every user with factors),
    excluding ``seen`` ``(col_user, col_item)`` pairs, via :func:`topk_from_factors`.

    Returns ``(col_user, col_item, col_score, col_rank)``; users without factors get no rows. The score
    is the model's prediction (for the biased model, the full ``mu + b_u + b_i + p_u . q_i``).
    """
    user_f, item_f = factor_frames(model, col_user=col_user, col_item=col_item)
    if users is not None:
        if col_user not in users.columns:
            raise ValueError(f"users is missing column '{col_user}' (has {users.columns})")
        user_f = user_f.join(users.select(col_user).distinct(), col_user, "left_semi")
    return topk_from_factors(
        user_f,
        item_f,
        k,
        seen,
        block_size=block_size,
        col_user=col_user,
        col_item=col_item,
        col_score=col_score,
        col_rank=col_rank,
    )
