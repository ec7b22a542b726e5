"""The offline analysis of the enabled experiment, as the evaluate stage runs it.

The published recipe's offline lists (model ``blend`` in ``eval_recommendations``) already hold, for
each test user, the list of the variant that user is served (the recommend stage builds them so). Here:

1. :func:`served_test_users`: each test user's served variant, recomputed the way the recommend stage
   decides it: the hash (:func:`~watchnext.experiments.assignment.assign`) of the test users' ids,
   resolved against the experiment's rows of ``experiment_assignments``
   (:func:`~watchnext.experiments.assignment.served_variants`: a recorded user keeps the recorded
   variant while inside the traffic; outside it, null);
2. :func:`per_user_metrics`: the ranking metrics of those lists per user at the primary K, the very
   values the ``evaluation`` table averages for ``blend``
   (:func:`~watchnext.evaluation.metrics.ranking_metrics_per_user`), for the users inside the traffic;
3. :func:`analyse_experiment`: every variant against the control
   (:func:`~watchnext.experiments.analysis.analyse`, on the driver: one row of a few doubles per
   in-traffic test user), then :func:`results_rows` for the ``experiment_results`` table,
   :func:`mlflow_metrics` and :func:`verdicts` for the log.

The per-user metrics are the ranking ones (NDCG, precision, recall, MAP, MRR, hit rate): a mean over
users, so a difference of group means is a difference of the number the evaluation table reports.
Coverage, Gini and long-tail share describe a whole set of lists, not a user; novelty is a mean over
list slots; ILD would need the item features broadcast again for one list: none is analysed here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext.checks import require_columns
from watchnext.constants import (
    COL_EXPERIMENT,
    COL_ITEM_IDX,
    COL_K,
    COL_USER,
    COL_USER_IDX,
    COL_VARIANT,
)
from watchnext.evaluation.metrics import ranking_metrics_per_user
from watchnext.experiments.analysis import NOT_PRIMARY, OUTPUT_COLUMNS, analyse
from watchnext.experiments.assignment import served_today
from watchnext.experiments.spec import ExperimentConfig

log = logging.getLogger(__name__)

# The published recipe's offline lists in eval_recommendations (stages/recommend.py MODEL_NAME).
PUBLISHED_MODEL = "blend"
# Per-user metrics analysed, in this order (ranking_metrics' names without the "_at_K" suffix).
METRICS = ("ndcg", "precision", "recall", "map", "mrr", "hit_rate")
COL_CONTROL_SHARE, COL_VARIANT_SHARE = "control_share", "variant_share"
# experiment_results, less the lineage columns the stage adds (run_id, run_date): the analysis columns,
# the configured shares of the two groups (the sample-ratio check of an old date reads against the shares
# of its own run, not today's config) and the cut-off K of the metrics.
RESULTS_SCHEMA = T.StructType(
    [
        T.StructField("experiment", T.StringType()),
        T.StructField("variant", T.StringType()),
        T.StructField("control", T.StringType()),
        T.StructField("metric", T.StringType()),
        T.StructField("n_control", T.LongType()),
        T.StructField("n_variant", T.LongType()),
        *[
            T.StructField(c, T.DoubleType())
            for c in (
                "control_value",
                "variant_value",
                "diff",
                "diff_low",
                "diff_high",
                "lift",
                "lift_low",
                "lift_high",
                "p_value",
            )
        ],  # fmt: skip
        T.StructField("significant", T.BooleanType()),
        T.StructField("srm_chi2", T.DoubleType()),
        T.StructField("srm_p", T.DoubleType()),
        T.StructField("srm_ok", T.BooleanType()),
        T.StructField("verdict", T.StringType()),
        T.StructField(COL_CONTROL_SHARE, T.DoubleType()),
        T.StructField(COL_VARIANT_SHARE, T.DoubleType()),
        T.StructField(COL_K, T.IntegerType()),
    ]
)
RESULT_COLUMNS = RESULTS_SCHEMA.fieldNames()  # OUTPUT_COLUMNS first, in its order


def check_metric(exp: ExperimentConfig) -> None:
    """Fail before any Spark work when the experiment's primary metric is not one analysed here."""
    if exp.metric not in METRICS:
        raise ValueError(
            f"experiment '{exp.name}': metric '{exp.metric}' is not a per-user metric of the evaluate "
            f"stage; use one of {', '.join(METRICS)}"
        )


def served_test_users(
    test: DataFrame,
    user_index: DataFrame,
    assignments: DataFrame,
    exp: ExperimentConfig,
    *,
    col_user: str = COL_USER,
    col_user_idx: str = COL_USER_IDX,
) -> DataFrame:
    """``(col_user_idx, col_user, variant)``: one row per distinct test user of ``test`` (those without a
    ``user_index`` row are left out), the variant they are served (null: outside the traffic, the base
    recipe). ``assignments``: the ``experiment_assignments`` table (rows of other experiments are
    ignored)."""
    require_columns(test, [col_user_idx], "test")
    require_columns(user_index, [col_user_idx, col_user], "user_index")
    require_columns(assignments, [COL_EXPERIMENT, col_user, COL_VARIANT], "experiment_assignments")
    users = (
        test.select(col_user_idx)
        .distinct()
        .join(user_index.select(col_user_idx, col_user), col_user_idx)
        .select(col_user_idx, F.col(col_user).cast("string").alias(col_user))
    )
    served = served_today(users, exp, assignments, col_user=col_user)
    return users.join(served.select(col_user, COL_VARIANT), col_user).select(
        col_user_idx, col_user, COL_VARIANT
    )


def per_user_metrics(
    recs: DataFrame,
    test: DataFrame,
    served: DataFrame,
    k: int,
    *,
    col_user: str = COL_USER,
    col_user_idx: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
) -> DataFrame:
    """``(col_user, variant, ndcg, precision, recall, map, mrr, hit_rate)`` at ``k`` of the lists
    ``recs`` (``col_user_idx``, ``col_item``, a rank or a score) against ``test``, one row per test user
    of ``served`` (:func:`served_test_users`) inside the traffic (a non-null variant). Every test user
    with a relevant item has a value (0 without a list), so the mean of a column over all test users,
    in the experiment or not, is the ``evaluation`` table's value for these lists."""
    require_columns(served, [col_user_idx, col_user, COL_VARIANT], "served variants")
    per_user = ranking_metrics_per_user(recs, test, k, col_user=col_user_idx, col_item=col_item)
    values = [F.col(f"{m}_at_{k}").alias(m) for m in METRICS]
    in_traffic = served.where(F.col(COL_VARIANT).isNotNull())
    return per_user.join(in_traffic, col_user_idx).select(col_user, COL_VARIANT, *values)


def analyse_experiment(
    per_user: DataFrame, exp: ExperimentConfig, *, col_user: str = COL_USER, seed: int = 0
) -> pd.DataFrame:
    """:func:`~watchnext.experiments.analysis.analyse` of :func:`per_user_metrics` on every metric of
    :data:`METRICS` (the primary first): its frame, :data:`~watchnext.experiments.analysis.OUTPUT_COLUMNS`.
    The per-user rows come to the driver (a few doubles per in-traffic test user), sorted by user so that
    the seeded bootstrap gives the same intervals on every run."""
    check_metric(exp)
    metrics = [exp.metric, *[m for m in METRICS if m != exp.metric]]
    require_columns(per_user, [col_user, COL_VARIANT, *metrics], "per-user metrics")
    frame: pd.DataFrame = per_user.select(col_user, COL_VARIANT, *metrics).toPandas()
    # The bootstrap resamples rows by position: in user order, the interval is the same whatever order
    # Spark's partitions returned the rows in.
    frame = frame.sort_values(col_user, kind="stable", ignore_index=True)
    return analyse(frame, exp, metrics, col_user=col_user, seed=seed)


def results_rows(results: pd.DataFrame, exp: ExperimentConfig, k: int) -> list[tuple[Any, ...]]:
    """The rows of ``experiment_results`` (:data:`RESULTS_SCHEMA`) for ``analyse``'s frame: its columns
    as plain Python values (NaN kept), the configured shares of control and variant, and ``k``."""
    missing = [c for c in OUTPUT_COLUMNS if c not in results.columns]
    if missing:
        raise ValueError(f"analysis results are missing column(s) {missing}")
    shares = exp.shares
    rows = []
    for rec in results[OUTPUT_COLUMNS].to_dict("records"):
        values = []
        for field in RESULTS_SCHEMA.fields[: len(OUTPUT_COLUMNS)]:
            v = rec[field.name]
            if isinstance(field.dataType, T.LongType):
                v = int(v)
            elif isinstance(field.dataType, T.DoubleType):
                v = float(v)
            elif isinstance(field.dataType, T.BooleanType):
                v = bool(v)
            else:
                v = str(v)
            values.append(v)
        rows.append((*values, shares[rec["control"]], shares[rec["variant"]], int(k)))
    return rows


def verdicts(results: pd.DataFrame) -> dict[str, str]:
    """``{variant: verdict}`` from the primary metric's rows (the others carry ``"n/a"``)."""
    primary = results[results["verdict"] != NOT_PRIMARY]
    return {str(v): str(d) for v, d in zip(primary["variant"], primary["verdict"], strict=True)}


def mlflow_metrics(results: pd.DataFrame) -> dict[str, float]:
    """``experiment.<variant>.<metric>.{lift,lift_low,lift_high,diff,p_value}``, ``experiment.srm_p``,
    ``experiment.srm_chi2`` and ``experiment.users.<variant>`` (the control's too); NaN values left out
    (MLflow takes them, but a NaN point breaks its charts)."""
    out: dict[str, float] = {}
    for r in results.to_dict("records"):
        for stat in ("lift", "lift_low", "lift_high", "diff", "p_value"):
            out[f"experiment.{r['variant']}.{r['metric']}.{stat}"] = float(r[stat])
        out[f"experiment.users.{r['variant']}"] = float(r["n_variant"])
        out[f"experiment.users.{r['control']}"] = float(r["n_control"])
        out["experiment.srm_p"] = float(r["srm_p"])
        out["experiment.srm_chi2"] = float(r["srm_chi2"])
    return {k: v for k, v in out.items() if not math.isnan(v)}


def format_results(results: pd.DataFrame, metrics: Sequence[str] | None = None) -> str:
    """A plain-text table of the comparisons (variant, metric, groups, means, lift with its interval,
    p, verdict) for the log and the MLflow artifact."""
    rows = results if metrics is None else results[results["metric"].isin(list(metrics))]

    def pct(x: float) -> str:
        return "" if math.isnan(x) else f"{100 * x:+.1f}%"

    head = (
        f"{'variant':<12}{'metric':<10}{'n ctrl':>8}{'n var':>8}{'control':>10}{'variant':>10}"
        f"{'lift':>9}{'lift CI':>20}{'p':>9}  verdict"
    )
    lines = [head, "-" * len(head)]
    for r in rows.to_dict("records"):
        ci = f"[{pct(r['lift_low'])}, {pct(r['lift_high'])}]" if not math.isnan(r["lift_low"]) else ""
        p = "" if math.isnan(r["p_value"]) else f"{r['p_value']:.3g}"
        lines.append(
            f"{r['variant']:<12}{r['metric']:<10}{r['n_control']:>8}{r['n_variant']:>8}"
            f"{r['control_value']:>10.4f}{r['variant_value']:>10.4f}{pct(r['lift']):>9}{ci:>20}{p:>9}"
            f"  {r['verdict']}"
        )
    if len(results):
        first = results.iloc[0]
        ok = "ok" if first["srm_ok"] else "MISMATCH"
        lines.append(f"sample ratio check: chi2 {first['srm_chi2']:.3f}, p {first['srm_p']:.3g} ({ok})")
    return "\n".join(lines)
