"""The candidate pool, blend and capped top-N as plain Spark windows and a (user, item) aggregate.

The specification of :func:`~watchnext.models.blend.rank_candidates` (numpy per partition after one
shuffle) written the direct way: ``tests/unit/test_blend.py`` checks the fast ranker against it row for row
and ``benchmarks/bench_blend.py`` measures the ranker against it. Slow at scale (it sorts the
candidate rows several times); nothing in the pipeline calls it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from watchnext.models import blend


def spark_reference_ranking(
    cand: DataFrame,
    sources: Sequence[str],
    m: int,
    normalization: str,
    popularity: DataFrame,
    counts: DataFrame,
    cold_threshold: int,
    w: Mapping[str, float],
    cold_w: Mapping[str, float],
    item_clusters: DataFrame,
    n: int,
    cap: int,
    *,
    every: bool = True,
) -> DataFrame:
    """The pool, blend and capped top-N as the Spark windows and aggregate they were before
    :func:`blend.rank_candidates`, shuffles and broadcasts included: every scored row with ``cluster_id``
    and ``rank`` (null where not chosen), or, not ``every``, the chosen rows only."""
    if normalization == "rank":
        f = (F.lit(m + 1) - F.col("rank")).cast("double") / F.lit(float(m))
    else:
        win = Window.partitionBy("user_idx", "source")
        lo, hi = F.min("score").over(win), F.max("score").over(win)
        f = F.when(hi > lo, (F.col("score") - lo) / (hi - lo)).otherwise(F.lit(1.0))
    c = cand.where(F.col("source").isin([*sources, "backfill"])).repartition("user_idx").withColumn("_f", f)
    pooled = (
        c.groupBy("user_idx", "item_idx")
        .agg(
            *[F.max(F.when(F.col("source") == s, F.col("_f"))).alias(f"f_{s}") for s in sources],
            F.array_sort(F.collect_set("source")).alias("sources"),
            F.max("anchor_idx").alias("anchor_idx"),
        )
        .fillna(0.0, subset=[f"f_{s}" for s in sources])
    )
    top = popularity.agg(F.max("score").alias("_max"))
    prior = popularity.crossJoin(top).select("item_idx", (F.col("score") / F.col("_max")).alias("prior"))
    pooled = pooled.join(F.broadcast(prior), "item_idx", "left").fillna(0.0, ["prior"])
    pooled = pooled.join(counts, "user_idx", "left").withColumn(
        "cold", F.coalesce(F.col("count"), F.lit(0)) < cold_threshold
    )

    def weighted(weights: Mapping[str, float]) -> Column:
        terms = [F.lit(float(weights.get(s, 0.0))) * F.col(f"f_{s}") for s in sources]
        terms.append(F.lit(blend.BACKFILL_EPS) * F.col("prior"))
        return sum(terms[1:], terms[0])

    def dominant(weights: Mapping[str, float]) -> Column:
        ordered = [s for s in blend.SOURCES if s in sources]
        contrib = {s: F.lit(float(weights.get(s, 0.0))) * F.col(f"f_{s}") for s in ordered}
        best = F.greatest(*contrib.values(), F.lit(0.0))
        expr = F.lit("backfill")
        for s in reversed(ordered):
            expr = F.when((contrib[s] >= best) & (contrib[s] > 0), F.lit(s)).otherwise(expr)
        return expr

    scored = pooled.withColumn(
        "score", F.when(F.col("cold"), weighted(cold_w)).otherwise(weighted(w))
    ).withColumn("dominant", F.when(F.col("cold"), dominant(cold_w)).otherwise(dominant(w)))
    df = scored.join(F.broadcast(item_clusters), "item_idx", "left")
    by_score = [F.col("score").desc(), F.col("item_idx").asc()]
    group = F.coalesce(F.col("cluster_id").cast("long"), -1 - F.col("item_idx").cast("long"))
    ok = F.row_number().over(Window.partitionBy("user_idx", group).orderBy(*by_score)) <= cap
    pick = F.row_number().over(Window.partitionBy("user_idx").orderBy(F.col("_ok").desc(), *by_score))
    chosen = df.withColumn("_ok", ok).withColumn("_pick", pick).where(F.col("_pick") <= n)
    if not every:
        rank = F.row_number().over(Window.partitionBy("user_idx").orderBy(*by_score)).cast("int")
        return chosen.drop("_ok", "_pick").withColumn("rank", rank)
    ranks = chosen.select(
        "user_idx",
        "item_idx",
        F.row_number().over(Window.partitionBy("user_idx").orderBy(*by_score)).cast("int").alias("rank"),
    )
    return df.join(ranks, ["user_idx", "item_idx"], "left")
