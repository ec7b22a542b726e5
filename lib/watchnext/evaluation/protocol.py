"""The offline evaluation protocol shared by every model stage and the evaluate stage.

A model stage fits on the protocol's train split and writes its top-K lists for the test users to
``eval_recommendations`` (and, for explicit models, its test-pair predictions to
``eval_predictions``), partitioned by (run_date, model). The evaluate stage scores them all against
the same test split. The split is a pure function of the interactions and the config (hash-seeded),
so every stage recomputes the identical split instead of passing it around.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from watchnext import tables
from watchnext.config import Config, EvaluationConfig
from watchnext.constants import (
    COL_FEATURES,
    COL_ITEM_IDX,
    COL_MODEL,
    COL_NEIGHBOR_IDX,
    COL_PREDICTION,
    COL_RANK,
    COL_RATING,
    COL_RUN_DATE,
    COL_SCORE,
    COL_TIMESTAMP,
    COL_USER_IDX,
    TABLE_EVAL_FACTORS,
    TABLE_EVAL_NEIGHBORS,
    TABLE_EVAL_PREDICTIONS,
    TABLE_EVAL_RECS,
)
from watchnext.evaluation.splits import leave_last_n_split, random_split, stratified_split, time_split


def split(interactions: DataFrame, cfg: EvaluationConfig) -> tuple[DataFrame, DataFrame]:
    """(train, test) of ``interactions`` under the configured protocol.

    Raises :class:`EmptyTestError` when the split leaves no test interaction: no model could be scored
    (every stage that evaluates would fail later, and less clearly).
    """
    counts: dict[str, int] = {}  # filled by the split's one aggregation (test rows, dropped), also logged
    if cfg.split == "stratified":
        train, test = stratified_split(interactions, ratio=cfg.ratio, seed=cfg.seed, counts=counts)
    elif cfg.split == "random":
        train, test = random_split(interactions, ratio=cfg.ratio, seed=cfg.seed, counts=counts)
    else:
        _require_timestamps(interactions, cfg.split)
        if cfg.split == "leave_last_n":
            train, test = leave_last_n_split(interactions, n=cfg.leave_last_n, counts=counts)
        else:
            assert cfg.time_cutoff is not None  # checked by the config
            train, test = time_split(interactions, cfg.time_cutoff, counts=counts)
    if counts["n"] == counts["dropped"]:
        raise EmptyTestError(_empty_test_message(interactions, cfg))
    return train, test


def _require_timestamps(interactions: DataFrame, split_name: str) -> None:
    """A split by time needs every interaction's time: one without would land in train or test by
    chance (a null sorts first; it is never before a cut-off)."""
    missing = interactions.where(F.col(COL_TIMESTAMP).isNull()).count()
    if missing:
        raise ValueError(
            f"evaluation.split '{split_name}' orders interactions by time, but {missing} interactions have "
            "no timestamp: use evaluation.split stratified or random, or give the data a timestamp column"
        )


class EmptyTestError(ValueError):
    """The evaluation split of the interactions holds no test interaction: the data is too small."""


def _empty_test_message(interactions: DataFrame, cfg: EvaluationConfig) -> str:
    row = interactions.agg(
        F.count(F.lit(1)).alias("n"),
        F.countDistinct(COL_USER_IDX).alias("users"),
        F.countDistinct(COL_ITEM_IDX).alias("items"),
    ).head(1)[0]
    n, users, items = (int(row[c]) for c in ("n", "users", "items"))
    what = f"{n} interactions of {users} users over {items} item{'s' if items != 1 else ''}"
    hint = (
        "a single-item catalogue has nothing to rank"
        if items < 2
        else "a test interaction needs a user with several items and an item that someone else has in train"
    )
    return (
        f"the evaluation split (evaluation.split={cfg.split}) leaves no test interaction in {what}: "
        f"no model can be scored ({hint}); the data is too small to recommend from"
    )


def write_recommendations(recs: DataFrame, cfg: Config, model: str, run_date: dt.date, run_id: str) -> None:
    """Store ``model``'s evaluation top-K (user_idx, item_idx, score, rank) for ``run_date``."""
    out = recs.select(
        F.col(COL_USER_IDX),
        F.col(COL_ITEM_IDX),
        F.col(COL_SCORE).cast("double"),
        F.col(COL_RANK).cast("int"),
        F.lit(run_id).alias("run_id"),
        F.lit(run_date).alias(COL_RUN_DATE),
        F.lit(model).alias(COL_MODEL),
    )
    tables.overwrite_partition(
        out, cfg.table_path(TABLE_EVAL_RECS), {COL_RUN_DATE: run_date, COL_MODEL: model}, f"{model} {run_id}"
    )


def clear_recommendations(
    spark: SparkSession, cfg: Config, models: Sequence[str], run_date: dt.date, run_id: str
) -> list[str]:
    """Remove what an earlier run for ``run_date`` left of ``models``' lists (a model this run did not
    produce, e.g. ``linear_blend`` after the recipe went from learned to linear): one commit per model
    that has rows, replacing its partition with nothing. Returns the models cleared."""
    path = cfg.table_path(TABLE_EVAL_RECS)
    if not models or not tables.exists(spark, path):
        return []
    cleared: list[str] = []
    for model in models:
        rows = _model_rows(spark, cfg, TABLE_EVAL_RECS, model, run_date)
        if rows.isEmpty():
            continue
        tables.overwrite_partition(
            rows.where(F.lit(False)),
            path,
            {COL_RUN_DATE: run_date, COL_MODEL: model},
            f"{model} cleared by {run_id}",
        )
        cleared.append(model)
    return cleared


def write_predictions(preds: DataFrame, cfg: Config, model: str, run_date: dt.date, run_id: str) -> None:
    """Store ``model``'s rating predictions for the test pairs (user_idx, item_idx, prediction)."""
    out = preds.select(
        F.col(COL_USER_IDX),
        F.col(COL_ITEM_IDX),
        F.col(COL_PREDICTION).cast("double"),
        F.lit(run_id).alias("run_id"),
        F.lit(run_date).alias(COL_RUN_DATE),
        F.lit(model).alias(COL_MODEL),
    )
    tables.overwrite_partition(
        out, cfg.table_path(TABLE_EVAL_PREDICTIONS), {COL_RUN_DATE: run_date, COL_MODEL: model}, model
    )


# The train-split models themselves. ``eval_factors``: (side "user" | "item", idx, features);
# ``eval_neighbors``: (idx, neighbor_idx, score, rank); both partitioned by (run_date, model), so a
# stage re-run replaces its own model only.
_SIDE, _IDX = "side", "idx"
EVAL_ALS, EVAL_ITEM_COOCCURRENCE, EVAL_USER_COOCCURRENCE = "als", "item_cooccurrence", "user_cooccurrence"


def write_factors(
    users: DataFrame, items: DataFrame, cfg: Config, model: str, run_date: dt.date, run_id: str
) -> None:
    """Store the train-split factors ``(user_idx | item_idx, features)`` of ``model``."""
    out = users.select(F.lit("user").alias(_SIDE), F.col(COL_USER_IDX).alias(_IDX), COL_FEATURES).unionByName(
        items.select(F.lit("item").alias(_SIDE), F.col(COL_ITEM_IDX).alias(_IDX), COL_FEATURES)
    )
    _write_model(out, cfg, TABLE_EVAL_FACTORS, model, run_date, run_id)


def read_factors(
    spark: SparkSession, cfg: Config, model: str, run_date: dt.date
) -> tuple[DataFrame, DataFrame] | None:
    """``model``'s train-split ``(user factors, item factors)`` for ``run_date``; None if not stored."""
    df = _read_model(spark, cfg, TABLE_EVAL_FACTORS, model, run_date)
    if df is None:
        return None
    side = F.col(_SIDE)
    return (
        df.where(side == "user").select(F.col(_IDX).alias(COL_USER_IDX), COL_FEATURES),
        df.where(side == "item").select(F.col(_IDX).alias(COL_ITEM_IDX), COL_FEATURES),
    )


def write_neighbors(
    nb: DataFrame, col_id: str, cfg: Config, model: str, run_date: dt.date, run_id: str
) -> DataFrame:
    """Store train-split neighbours ``(col_id, neighbor_idx, score, rank)`` as ``model``; returns the
    stored rows (read back: a caller scoring them does not compute them twice)."""
    out = nb.select(F.col(col_id).alias(_IDX), COL_NEIGHBOR_IDX, COL_SCORE, COL_RANK)
    _write_model(out, cfg, TABLE_EVAL_NEIGHBORS, model, run_date, run_id)
    stored = _model_rows(nb.sparkSession, cfg, TABLE_EVAL_NEIGHBORS, model, run_date)
    return stored.select(F.col(_IDX).alias(col_id), COL_NEIGHBOR_IDX, COL_SCORE, COL_RANK)


def read_neighbors(
    spark: SparkSession, cfg: Config, model: str, run_date: dt.date, col_id: str
) -> DataFrame | None:
    """``model``'s train-split neighbours for ``run_date`` as ``(col_id, neighbor_idx, score, rank)``;
    None if not stored."""
    df = _read_model(spark, cfg, TABLE_EVAL_NEIGHBORS, model, run_date)
    return None if df is None else df.select(F.col(_IDX).alias(col_id), COL_NEIGHBOR_IDX, COL_SCORE, COL_RANK)


def _write_model(out: DataFrame, cfg: Config, table: str, model: str, run_date: dt.date, run_id: str) -> None:
    out = out.select(
        "*", F.lit(run_id).alias("run_id"), F.lit(run_date).alias(COL_RUN_DATE), F.lit(model).alias(COL_MODEL)
    )
    tables.overwrite_partition(
        out, cfg.table_path(table), {COL_RUN_DATE: run_date, COL_MODEL: model}, f"{model} {run_id}"
    )


def _model_rows(spark: SparkSession, cfg: Config, table: str, model: str, run_date: dt.date) -> DataFrame:
    return tables.read_run_date(spark, cfg.table_path(table), run_date).where(F.col(COL_MODEL) == model)


def _read_model(
    spark: SparkSession, cfg: Config, table: str, model: str, run_date: dt.date
) -> DataFrame | None:
    """The stored rows, or None when there are none (never stored; an empty model is fitted again, to
    the same empty result)."""
    if not tables.exists(spark, cfg.table_path(table)):
        return None
    df = _model_rows(spark, cfg, table, model, run_date)
    return None if df.isEmpty() else df


def protocol_frame(interactions: DataFrame) -> DataFrame:
    """The columns the protocol works on."""
    return interactions.select(COL_USER_IDX, COL_ITEM_IDX, COL_RATING, "timestamp")
