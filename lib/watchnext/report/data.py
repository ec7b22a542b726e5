"""The small aggregates the run report shows: pure functions over DataFrames.

Each returns a pandas frame of at most (models x metrics x K), (popularity buckets x models),
(clusters) or (sample users x N) rows; only those aggregates reach the driver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from watchnext.checks import require_columns
from watchnext.config import DomainConfig
from watchnext.constants import (
    COL_CLUSTER,
    COL_ITEM,
    COL_ITEM_IDX,
    COL_K,
    COL_LABEL,
    COL_METRIC,
    COL_MODEL,
    COL_RANK,
    COL_REASON,
    COL_SCORE,
    COL_SIZE,
    COL_SOURCES,
    COL_TIMESTAMP,
    COL_TITLE,
    COL_TOP_GENRES,
    COL_TOP_TAGS,
    COL_USER,
    COL_VALUE,
)
from watchnext.experiments.analysis import NOT_PRIMARY
from watchnext.recommend.publish import reason_kind

# Columns of the side-by-side table, in this order, when the evaluation has them.
TABLE_METRICS = (
    "ndcg", "precision", "recall", "map", "mrr", "hit_rate", "catalog_coverage", "novelty", "ild",
    "exposure_gini", "long_tail_share", "rmse", "mae",
)  # fmt: skip
CATALOGUE, INTERACTIONS = "catalogue", "interactions"


def metrics_frame(evaluation: DataFrame) -> pd.DataFrame:
    """The evaluation rows of one run date as pandas: model, metric, k (nullable), value."""
    require_columns(evaluation, [COL_MODEL, COL_METRIC, COL_K, COL_VALUE], "evaluation")
    df: pd.DataFrame = evaluation.select(COL_MODEL, COL_METRIC, COL_K, COL_VALUE).toPandas()
    df[COL_K] = df[COL_K].astype("Int64")
    return df


def metrics_at_k(metrics: pd.DataFrame, k: int) -> pd.DataFrame:
    """Models as rows (best NDCG@k first), the metrics at ``k`` and those without a cut-off as columns."""
    at = metrics[(metrics[COL_K] == k).fillna(False) | metrics[COL_K].isna()]
    wide = at.pivot_table(index=COL_MODEL, columns=COL_METRIC, values=COL_VALUE, aggfunc="first")
    cols = [c for c in TABLE_METRICS if c in wide.columns]
    wide = wide.reindex(columns=cols)
    order = wide["ndcg"].fillna(float("-inf")) if "ndcg" in wide else pd.Series(0.0, index=wide.index)
    return wide.loc[order.sort_values(ascending=False, kind="stable").index]


def curves(
    metrics: pd.DataFrame, names: Sequence[str] = ("ndcg", "recall", "precision")
) -> dict[str, pd.DataFrame]:
    """``{metric: frame indexed by K, one column per model}`` for the metrics measured at several K."""
    out = {}
    for name in names:
        rows = metrics[(metrics[COL_METRIC] == name) & metrics[COL_K].notna()]
        if not rows.empty:
            out[name] = rows.pivot_table(index=COL_K, columns=COL_MODEL, values=COL_VALUE).sort_index()
    return out


def popularity_exposure(
    interactions: DataFrame,
    items: DataFrame,
    recs: DataFrame,
    *,
    n_buckets: int = 10,
    col_item: str = COL_ITEM_IDX,
    col_model: str = COL_MODEL,
) -> pd.DataFrame:
    """Share of the catalogue, of the interactions and of each model's list slots per popularity bucket.

    The items of ``items`` are ranked by their number of ``interactions`` (descending, ties by item
    ascending; items never interacted with count 0) and cut into ``n_buckets`` buckets of equal item
    count (``ntile``): bucket 1 holds the most popular items. Returns one row per bucket with the
    columns ``catalogue`` (share of items), ``interactions`` (share of interactions) and one column per
    model of ``recs`` (share of that model's rows). A recommender without popularity bias follows the
    catalogue; one that mirrors the audience follows the interactions.
    """
    require_columns(items, [col_item], "items")
    require_columns(interactions, [col_item], "interactions")
    require_columns(recs, [col_item, col_model], "recs")
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
    counts = interactions.groupBy(col_item).agg(F.count(F.lit(1)).alias("_n"))
    pop = items.select(col_item).distinct().join(counts, col_item, "left").fillna(0, ["_n"])
    # One row per catalogue item through an un-partitioned window (as metrics.popularity_bias does).
    order = Window.orderBy(F.col("_n").desc(), F.col(col_item).asc())
    bucketed = pop.withColumn("_bucket", F.ntile(n_buckets).over(order))
    base_rows: pd.DataFrame = (
        bucketed.groupBy("_bucket")
        .agg(F.count(F.lit(1)).alias(CATALOGUE), F.sum("_n").alias(INTERACTIONS))
        .toPandas()
    )
    base = base_rows.set_index("_bucket").sort_index()
    exposure_rows: pd.DataFrame = (
        recs.join(bucketed.select(col_item, "_bucket"), col_item)
        .groupBy(col_model, "_bucket")
        .agg(F.count(F.lit(1)).alias("_x"))
        .toPandas()
    )
    exposure = exposure_rows.pivot_table(index="_bucket", columns=col_model, values="_x", aggfunc="sum")
    out = pd.concat([base, exposure.reindex(base.index)], axis=1).fillna(0.0).astype(float)
    out = out / out.sum(axis=0).replace(0.0, 1.0)
    out.index = out.index.astype(int).rename("bucket")
    out.columns.name = None
    return out


def cluster_table(clusters: DataFrame) -> pd.DataFrame:
    """The genre clusters (cluster_id, label, size, top genres, top tags), largest first."""
    require_columns(clusters, [COL_CLUSTER, COL_LABEL, COL_SIZE], "clusters")
    cols = [
        c for c in (COL_CLUSTER, COL_LABEL, COL_SIZE, COL_TOP_GENRES, COL_TOP_TAGS) if c in clusters.columns
    ]
    df: pd.DataFrame = clusters.select(*cols).toPandas()
    return df.sort_values([COL_SIZE, COL_CLUSTER], ascending=[False, True], kind="stable").reset_index(
        drop=True
    )


def sample_users(recs: DataFrame, n: int, seed: int = 42, *, col_user: str = COL_USER) -> list[str]:
    """``n`` user ids of ``recs`` picked by a seeded hash: the same users each time a date is reported."""
    if n <= 0:
        return []
    users = recs.select(col_user).distinct()
    rows = users.orderBy(F.xxhash64(col_user, F.lit(seed)), col_user).limit(n).collect()
    return [r[0] for r in rows]


def user_lists(recs: DataFrame, users: Sequence[str], *, col_user: str = COL_USER) -> pd.DataFrame:
    """The published lists of ``users``: user, rank, title, score, reason and the sources behind each."""
    require_columns(recs, [col_user, COL_RANK, COL_TITLE, COL_SCORE, COL_REASON], "recommendations")
    cols = [col_user, COL_RANK, COL_ITEM, COL_TITLE, COL_SCORE, COL_REASON]
    cols += [COL_SOURCES] if COL_SOURCES in recs.columns else []
    df: pd.DataFrame = recs.where(F.col(col_user).isin(list(users))).select(*cols).toPandas()
    return df.sort_values([col_user, COL_RANK], kind="stable").reset_index(drop=True)


def recent_history(
    interactions: DataFrame, items: DataFrame, users: Sequence[str], n: int = 5, *, col_user: str = COL_USER
) -> pd.DataFrame:
    """The ``n`` latest titles each of ``users`` watched (user, title, timestamp), newest first."""
    latest = Window.partitionBy(col_user).orderBy(F.col(COL_TIMESTAMP).desc(), F.col(COL_ITEM))
    df: pd.DataFrame = (
        interactions.where(F.col(col_user).isin(list(users)))
        .select(col_user, COL_ITEM, COL_TIMESTAMP)
        .withColumn("_r", F.row_number().over(latest))
        .where(F.col("_r") <= n)
        .join(items.select(COL_ITEM, COL_TITLE), COL_ITEM, "left")
        .select(col_user, "_r", F.coalesce(COL_TITLE, COL_ITEM).alias(COL_TITLE), COL_TIMESTAMP)
        .toPandas()
    )
    return df.sort_values([col_user, "_r"]).drop(columns="_r").reset_index(drop=True)


def reason_mix(recs: DataFrame, domain: DomainConfig | None = None) -> pd.DataFrame:
    """Share of all published list slots per kind of reason ("Because you watched …", "Popular in …",
    "Trending now", ...): the reasons as ``domain``'s words wrote them (publish.reason_kind)."""
    kind = reason_kind(F.col(COL_REASON), domain, ellipsis="…")
    df: pd.DataFrame = recs.groupBy(kind.alias("reason")).agg(F.count(F.lit(1)).alias("slots")).toPandas()
    df["share"] = df["slots"] / max(int(df["slots"].sum()), 1)
    return df.sort_values(["slots", "reason"], ascending=[False, True]).reset_index(drop=True)


SCALE_COLUMNS = [
    "size", "interactions", "users", "items", "complete", "stage", "wall_s", "cpu_s", "peak_jvm_gib",
    "peak_total_gib",
]  # fmt: skip


def scale_frame(results: Mapping[str, Any]) -> pd.DataFrame:
    """The stages that finished in a ``benchmarks/scale.py`` results JSON (size -> run), one row per
    (size, stage), sizes by interactions and stages in run order. Skipped or failed stages are left out
    (the run's markdown says why); ``complete``: the size's run has finished and no stage failed or was
    left out but by ``--ncf-max`` (its stage times add up to the whole pipeline)."""

    def complete(run: Mapping[str, Any]) -> bool:
        return "finished" in run and all(
            m.get("status") == "ok" or "--ncf-max" in m.get("why", "") for m in run.get("stages", {}).values()
        )

    rows = [
        [size, run["interactions"], run["users"], run["items"], complete(run), stage]
        + [m.get(c) for c in ("wall_s", "cpu_s", "peak_jvm_gib", "peak_total_gib")]
        for size, run in sorted(results.items(), key=lambda kv: kv[1]["interactions"])
        for stage, m in run.get("stages", {}).items()
        if m.get("status") == "ok"
    ]
    return pd.DataFrame(rows, columns=SCALE_COLUMNS).astype({"wall_s": float, "cpu_s": float})


def scale_totals(scale: pd.DataFrame) -> pd.DataFrame:
    """Per size: interactions, users, items, whether complete, the stages that finished, their summed
    wall time and the largest process-tree peak of any of them."""
    g = scale.groupby(["size", "interactions", "users", "items", "complete"], sort=False)
    return g.agg(
        stages=("stage", "count"), wall_s=("wall_s", "sum"), peak_total_gib=("peak_total_gib", "max")
    ).reset_index()


# experiment_results columns the report shows (the table's own, less the lineage).
EXPERIMENT_COLUMNS = [
    "experiment", "variant", "control", "metric", "k", "n_control", "n_variant", "control_value",
    "variant_value", "diff", "diff_low", "diff_high", "lift", "lift_low", "lift_high", "p_value",
    "significant", "srm_chi2", "srm_p", "srm_ok", "verdict", "control_share", "variant_share",
]  # fmt: skip


def experiment_results(results: DataFrame) -> pd.DataFrame:
    """The run date's ``experiment_results`` rows (the evaluate stage's analysis of the enabled
    experiment: one row per treatment variant and metric) as pandas, ordered by experiment, variant and
    metric, the primary metric (the row with a verdict) first."""
    require_columns(results, EXPERIMENT_COLUMNS, "experiment_results")
    df: pd.DataFrame = results.select(*EXPERIMENT_COLUMNS).toPandas()
    order = {m: i for i, m in enumerate(TABLE_METRICS)}
    df["_primary"] = df["verdict"] == NOT_PRIMARY  # False (first) for the decided metric
    df["_order"] = df["metric"].map(order).fillna(len(order))
    df = df.sort_values(["experiment", "variant", "_primary", "_order", "metric"], kind="stable")
    return df.drop(columns=["_primary", "_order"]).reset_index(drop=True)
