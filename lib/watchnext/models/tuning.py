"""Hyperparameter search for ALS by a ranking metric on a validation split.

Protocol: the validation split is carved from the training data with :func:`stratified_split` (its
own seed, so it differs from the train/test split); each trial fits ALS on the remaining part, ranks
the top K for every validation user with the user's fitting items excluded, and scores
``ranking_metrics`` against the held-out validation items (all relevant). The best configuration is
then refitted on *all* training data (:func:`refit`, or :func:`tune_and_refit` for the whole thing).

Methods, all driven by Optuna so they share one loop:

* ``"grid"``: the product of each dimension's grid (``values``, else low, middle, high; the middle
  geometric for log ranges), visited in a seeded random order; ``n_trials`` caps the number visited.
* ``"random"``: independent draws, uniform or log-uniform per dimension (``RandomSampler(seed)``).
* ``"tpe"``: ``TPESampler(seed)``, model-based; its first ``max(1, min(10, n_trials // 3))`` trials
  are random start-up draws.

With an active MLflow run (and ``log_to_mlflow``), every trial is a nested run holding its parameters
and all ranking metrics; logging anything about the search to the parent is the caller's job.
``alpha`` is searched only for implicit feedback, and the confidence scheme (a categorical dimension)
only when the caller passes ``confidences`` (``als.confidence: auto`` on implicit counts,
:func:`watchnext.models.als.resolve_confidence`).
"""

from __future__ import annotations

import gc
import logging
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from pyspark import StorageLevel
from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame

from watchnext import progress
from watchnext.concurrency import map_ordered
from watchnext.config import AlsConfig, AlsSearchSpace, FloatRange, IntRange
from watchnext.constants import COL_FEATURES, COL_ITEM_IDX, COL_RATING, COL_USER_IDX
from watchnext.evaluation.local_metrics import ranking_metrics_arrays
from watchnext.evaluation.metrics import ranking_metrics
from watchnext.evaluation.splits import stratified_split
from watchnext.models.als import (
    AlsParams,
    BiasedAlsModel,
    Confidence,
    ConfidenceDecision,
    factor_frames,
    fit_als,
    top_k_items,
)
from watchnext.models.topk import block_rows_for, top_k_by_blocks

log = logging.getLogger(__name__)

Method = Literal["grid", "random", "tpe"]
_METRIC = re.compile(r"(precision|recall|ndcg|map|mrr|hit_rate)_at_([1-9][0-9]*)")
_TUNED = ("rank", "reg_param", "alpha", "max_iter")
# A search dimension: an integer or real range, or the categorical confidence schemes.
Dim = IntRange | FloatRange | tuple[str, ...]


@dataclass(frozen=True)
class Trial:
    """One evaluated configuration."""

    number: int
    params: AlsParams
    value: float
    metrics: dict[str, float]
    seconds: float
    run_id: str | None = None


@dataclass(frozen=True)
class TuningResult:
    """The best configuration (by ``metric``, maximised) and every trial in the order run."""

    best_params: AlsParams
    best_value: float
    metric: str
    method: str
    trials: list[Trial] = field(default_factory=list)


def metric_k(metric: str) -> int:
    """K of a ranking metric name: ``"ndcg_at_10" -> 10``; ``ValueError`` for anything else."""
    m = _METRIC.fullmatch(metric)
    if not m:
        raise ValueError(f"metric must be a ranking metric such as 'ndcg_at_10', got {metric!r}")
    return int(m.group(2))


def validation_split(
    train: DataFrame,
    validation_ratio: float = 0.25,
    seed: int = 43,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
) -> tuple[DataFrame, DataFrame]:
    """``(fit, validation)``: ``stratified_split(train, 1 - validation_ratio, seed)``."""
    return stratified_split(train, 1.0 - validation_ratio, seed, col_user=col_user, col_item=col_item)


def grid_values(dim: Dim) -> list[Any]:
    """A dimension's grid: ``values`` if given, else the distinct values of low, middle, high; a
    categorical dimension's choices."""
    if isinstance(dim, tuple):
        return list(dim)
    if dim.values is not None:
        return list(dim.values)
    mid = math.sqrt(dim.low * dim.high) if dim.log else (dim.low + dim.high) / 2.0
    points = [dim.low, mid, dim.high]
    if isinstance(dim, IntRange):
        points = [int(round(p)) for p in points]
    return sorted(set(points))


def _dims(space: AlsSearchSpace, implicit: bool, confidences: Sequence[str] = ()) -> dict[str, Dim]:
    dims: dict[str, Dim] = {
        "rank": space.rank,
        "reg_param": space.reg_param,
        "alpha": space.alpha,
        "max_iter": space.max_iter,
    }
    if not implicit:
        dims.pop("alpha")
    elif len(confidences) > 1:
        dims["confidence"] = tuple(confidences)
    return dims


def _sampler(method: Method, dims: dict[str, Dim], n_trials: int, seed: int) -> Any:
    import optuna

    if method == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, n_trials // 3)))
    if method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if method == "grid":
        return optuna.samplers.GridSampler({name: grid_values(d) for name, d in dims.items()}, seed=seed)
    raise ValueError(f"method must be 'grid', 'random' or 'tpe', got {method!r}")


def _start_point(base: AlsParams, dims: dict[str, Dim]) -> dict[str, Any] | None:
    """``base``'s values of the searched dimensions, or None when one lies outside the space."""
    point = {name: getattr(base, name) for name in dims}
    inside = all(
        point[name] in d if isinstance(d, tuple) else d.low <= point[name] <= d.high
        for name, d in dims.items()
    )
    return point if inside else None


def _suggest(trial: Any, method: Method, dims: dict[str, Dim]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, d in dims.items():
        if method == "grid" or isinstance(d, tuple):
            out[name] = trial.suggest_categorical(name, grid_values(d))
        elif isinstance(d, IntRange):
            out[name] = trial.suggest_int(name, d.low, d.high, log=d.log)
        else:
            out[name] = trial.suggest_float(name, d.low, d.high, log=d.log)
    return out


@dataclass(frozen=True)
class LocalValidation:
    """The validation users, their fitting items and held-out items on the driver: each trial's top K
    is then scored in numpy from the model's factors (the same float32 products and tie rule as
    ``topk_from_factors``, the same metric values as ``ranking_metrics``), not by Spark jobs."""

    users: np.ndarray  # sorted distinct validation users
    seen_user: np.ndarray  # fitting pairs of those users, sorted by user
    seen_item: np.ndarray
    truth_user: np.ndarray
    truth_item: np.ndarray

    @classmethod
    def collect(
        cls, train: DataFrame, validation: DataFrame, max_cells: int, col_user: str, col_item: str
    ) -> LocalValidation | None:
        """The arrays, or None when validation users x fitting items exceeds ``max_cells``."""
        users = validation.select(col_user).distinct()
        ids: pd.DataFrame = users.toPandas()  # validation users: one collect, counted here
        n_users, n_items = len(ids), train.select(col_item).distinct().count()
        if n_users * n_items > max_cells:
            log.info(
                "ALS trials scored on Spark: %d validation users x %d items > %d cells",
                n_users, n_items, max_cells,
            )  # fmt: skip
            return None
        seen: pd.DataFrame = train.select(col_user, col_item).join(users, col_user, "left_semi").toPandas()
        truth: pd.DataFrame = validation.select(col_user, col_item).toPandas()
        seen = seen.sort_values([col_user, col_item], kind="stable")
        return cls(
            users=np.sort(ids[col_user].to_numpy(np.int64)),
            seen_user=seen[col_user].to_numpy(np.int64),
            seen_item=seen[col_item].to_numpy(np.int64),
            truth_user=truth[col_user].to_numpy(np.int64),
            truth_item=truth[col_item].to_numpy(np.int64),
        )

    def metrics(self, model: ALSModel | BiasedAlsModel, k: int) -> dict[str, float]:
        """``ranking_metrics`` at ``k`` of ``model``'s top ``k`` (fitting items excluded) per user."""
        frames: list[pd.DataFrame] = [f.toPandas() for f in factor_frames(model)]
        user_f, item_f = frames
        user_f = user_f[user_f[COL_USER_IDX].isin(self.users)].sort_values(COL_USER_IDX)
        item_f = item_f.sort_values(COL_ITEM_IDX)
        item_ids = item_f[COL_ITEM_IDX].to_numpy(np.int64)
        uids = user_f[COL_USER_IDX].to_numpy(np.int64)
        if not (len(uids) and len(item_ids)):  # no list at all: every metric of an empty top K
            out_u = out_i = out_r = np.zeros(0, np.int64)
        else:
            q_t = np.ascontiguousarray(np.stack(item_f[COL_FEATURES].to_numpy()).astype(np.float32).T)
            p = np.stack(user_f[COL_FEATURES].to_numpy()).astype(np.float32)
            # seen pairs -> (row of uids, item position); pairs without factors on either side drop out
            rows = np.minimum(np.searchsorted(uids, self.seen_user), len(uids) - 1)
            cols = np.minimum(np.searchsorted(item_ids, self.seen_item), len(item_ids) - 1)
            ok = (uids[rows] == self.seen_user) & (item_ids[cols] == self.seen_item)
            block = block_rows_for(len(item_ids), None)
            out_u, out_i, _, out_r = top_k_by_blocks(p, q_t, uids, item_ids, k, block, rows[ok], cols[ok])
        return ranking_metrics_arrays(
            out_u,
            out_i,
            out_r,
            self.truth_user,
            self.truth_item,
            [k],
        )


def tune_als(
    train: DataFrame,
    validation: DataFrame,
    space: AlsSearchSpace,
    *,
    base: AlsParams | None = None,
    method: Method = "tpe",
    n_trials: int = 20,
    metric: str = "ndcg_at_10",
    seed: int = 43,
    log_to_mlflow: bool = True,
    num_blocks: int | None = None,
    concurrent_trials: int = 1,
    local_max_cells: int = 0,
    confidences: Sequence[Confidence] = (),
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_rating: str = COL_RATING,
) -> TuningResult:
    """Search ``space`` for the ALS parameters maximising ``metric`` on ``validation``.

    ``train`` is what each trial fits on (the part of the training data left after carving out
    ``validation``); ``base`` supplies everything not searched (implicit or explicit, confidence,
    seed, ...). Each trial recommends the top K (K from the metric name) to every validation user,
    excluding the user's ``train`` items. Returns the best parameters (``base`` with the best searched
    values), its value and all trials. The grid method visits at most ``n_trials`` grid points.

    ``concurrent_trials`` trials are proposed at a time (Optuna's ask), fitted side by side
    (watchnext.concurrency.map_ordered) and reported back in the order asked (tell): the search is as
    deterministic as a one-by-one one, and 1 is exactly that.

    ``local_max_cells``: when validation users x fitting items is at most this, each trial's lists
    are scored on the driver (:class:`LocalValidation`, the same values) instead of by Spark jobs;
    0: always Spark.

    ``confidences``: the confidence schemes to search as a categorical dimension (implicit only; two
    or more, else ``base.confidence`` is kept); the start point keeps ``base.confidence`` when it is one
    of them.
    """
    import optuna

    k = metric_k(metric)
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    base = base or AlsParams()
    dims = _dims(space, base.implicit_prefs, confidences)
    if method == "grid":
        size = math.prod(len(grid_values(d)) for d in dims.values())
        if size > n_trials:
            log.warning(
                "grid has %d points; visiting %d of them (n_trials) in a seeded order", size, n_trials
            )
        n_trials = min(n_trials, size)
    sampler = _sampler(method, dims, n_trials, seed)

    owned = [df.persist(StorageLevel.MEMORY_AND_DISK) for df in (train, validation) if not df.is_cached]
    if num_blocks is None:
        from watchnext.models.als import als_num_blocks

        num_blocks = als_num_blocks(train.count(), train.sparkSession.sparkContext.defaultParallelism)
    users = validation.select(col_user).distinct()
    seen = train.select(col_user, col_item)
    cols: dict[str, Any] = {"col_user": col_user, "col_item": col_item}
    trials: list[Trial] = []
    local = (
        LocalValidation.collect(train, validation, local_max_cells, col_user, col_item)
        if local_max_cells and (col_user, col_item) == (COL_USER_IDX, COL_ITEM_IDX)
        else None
    )

    def evaluate(params: AlsParams) -> tuple[dict[str, float], float]:
        t0 = time.perf_counter()
        model: ALSModel = fit_als(train, params, num_blocks=num_blocks, col_rating=col_rating, **cols)
        if local is not None:
            metrics = local.metrics(model, k)
        else:
            metrics = ranking_metrics(top_k_items(model, users, k, seen, **cols), validation, k, **cols)
        del model
        gc.collect()  # drop py4j references, so the JVM can free the trial's factors and broadcast
        return metrics, time.perf_counter() - t0

    study = optuna.create_study(direction="maximize", sampler=sampler)
    start = _start_point(base, dims) if method != "grid" else None
    if start:
        # The configured parameters are the first trial: the search can only add to a known-good point.
        # With the scheme searched, each scheme at the configured parameters comes first (the start's
        # first): the search then never ends below any of them on the validation split.
        study.enqueue_trial(start)
        schemes = dims.get("confidence", ())
        for scheme in [c for c in schemes if c != start.get("confidence")][: max(0, n_trials - 1)]:
            study.enqueue_trial({**start, "confidence": scheme})
    report = progress.optuna_callback("als tuning", n_trials, metric)
    try:
        while len(trials) < n_trials:
            asked = [study.ask() for _ in range(min(concurrent_trials, n_trials - len(trials)))]
            proposed = [_suggest(t, method, dims) for t in asked]
            batch = [AlsParams(**{**base.model_dump(), **values}) for values in proposed]
            results = map_ordered(evaluate, batch, concurrent_trials)
            for trial, values, params, (metrics, seconds) in zip(
                asked, proposed, batch, results, strict=True
            ):
                value = metrics[metric]
                # MLflow's active run is per thread: the nested trial runs are logged here, in order.
                run_id = _log_trial(trial.number, method, params, metrics, seconds) if log_to_mlflow else None
                trials.append(Trial(trial.number, params, value, metrics, seconds, run_id))
                frozen = study.tell(trial, value)
                log.info(
                    "trial %d (%s): %s -> %s=%.5f in %.1f s",
                    trial.number, method, values, metric, value, seconds,
                )  # fmt: skip
                report(study, frozen)
    finally:
        for df in owned:
            df.unpersist()
    best = max(trials, key=lambda t: (t.value, -t.number))
    log.info(
        "best of %d %s trials: %s=%.5f with %s",
        len(trials),
        method,
        metric,
        best.value,
        {n: getattr(best.params, n) for n in dims},
    )
    return TuningResult(best.params, best.value, metric, method, trials)


def _log_trial(
    number: int, method: str, params: AlsParams, metrics: dict[str, float], seconds: float
) -> str | None:
    import mlflow

    if mlflow.active_run() is None:
        return None
    with mlflow.start_run(
        run_name=f"als trial {number}", nested=True, tags={"watchnext.tuning": method}
    ) as run:
        mlflow.log_params({**params.model_dump(), "trial": number})
        mlflow.log_metrics({**metrics, "seconds": seconds})
        return run.info.run_id


def refit(
    train: DataFrame,
    result: TuningResult,
    *,
    num_blocks: int | None = None,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_rating: str = COL_RATING,
) -> ALSModel:
    """Fit the best configuration of ``result`` on all of ``train``."""
    return fit_als(
        train,
        result.best_params,
        num_blocks=num_blocks,
        col_user=col_user,
        col_item=col_item,
        col_rating=col_rating,
    )


def tune_from_config(
    train: DataFrame,
    cfg: AlsConfig,
    *,
    log_to_mlflow: bool = True,
    confidence: ConfidenceDecision | None = None,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_rating: str = COL_RATING,
) -> TuningResult:
    """The ``als.tuning`` search on ``train``: carve the validation split, tune (no refit).

    ``confidence`` (:func:`watchnext.models.als.resolve_confidence` of the data) gives the scheme to
    start from and the schemes to search; None: ``AlsParams.from_config`` (``auto`` reads as binary).
    """
    t = cfg.tuning
    cols = {"col_user": col_user, "col_item": col_item}
    fit_part, validation = validation_split(train, t.validation_ratio, t.seed, **cols)
    return tune_als(
        fit_part,
        validation,
        t.space,
        base=AlsParams.from_config(cfg, confidence=confidence.scheme if confidence else None),
        method=t.method,
        n_trials=t.n_trials,
        metric=t.metric,
        seed=t.seed,
        log_to_mlflow=log_to_mlflow,
        num_blocks=cfg.num_blocks,
        concurrent_trials=t.concurrent_trials,
        local_max_cells=t.local_max_cells,
        confidences=confidence.searched if confidence else (),
        col_rating=col_rating,
        **cols,
    )


def tune_and_refit(
    train: DataFrame,
    cfg: AlsConfig,
    *,
    log_to_mlflow: bool = True,
    confidence: ConfidenceDecision | None = None,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_rating: str = COL_RATING,
) -> tuple[ALSModel, TuningResult]:
    """The whole recipe from the ``als`` config: carve validation, tune, refit on all of ``train``."""
    cols = {"col_user": col_user, "col_item": col_item, "col_rating": col_rating}
    result = tune_from_config(train, cfg, log_to_mlflow=log_to_mlflow, confidence=confidence, **cols)
    return refit(train, result, num_blocks=cfg.num_blocks, **cols), result
