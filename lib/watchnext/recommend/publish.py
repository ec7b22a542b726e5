"""What the recommend path publishes: the exactly-N check, reasons, the serving copy, genre rows and
"because you watched" lists, and what the run logs about them.

The reason texts speak in the words of ``domain:`` (:class:`~watchnext.config.DomainConfig`): the
defaults give the movie wording ("Because you watched X", "Viewers with similar taste watched this",
"Popular on watchnext"); a music catalogue with ``verb: listened to`` and ``users: Listeners`` gets
"Because you listened to X" and "Listeners with similar taste listened to this". Every function that
writes or reads a reason takes the same ``domain`` (None: the defaults)."""

from __future__ import annotations

import datetime as dt
import logging

from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from watchnext import tables
from watchnext.config import Config, DomainConfig
from watchnext.constants import (
    COL_ANCHOR,
    COL_CLUSTER,
    COL_ITEM,
    COL_ITEM_IDX,
    COL_LABEL,
    COL_MODEL_VERSIONS,
    COL_NEIGHBOR,
    COL_NEIGHBOR_IDX,
    COL_RANK,
    COL_REASON,
    COL_ROW,
    COL_RUN_DATE,
    COL_SCORE,
    COL_SHARE,
    COL_SOURCE,
    COL_SOURCES,
    COL_TITLE,
    COL_USER,
    COL_USER_IDX,
    TABLE_RECOMMENDATIONS,
    TABLE_RECOMMENDATIONS_LATEST,
)
from watchnext.models import blend
from watchnext.models.clusters import FANS_OF
from watchnext.recommend.sources import Sources

log = logging.getLogger(__name__)

CLUSTER_PREFIX = "Popular in "  # + the cluster's label
# A behavioural cluster's label ("Fans of A, B, C") reads as who, not what: "Popular with fans of A, B, C".
FANS_PREFIX = "Popular with fans of "


def reason_texts(domain: DomainConfig | None = None) -> dict[str, str]:
    """The fixed reason per dominant source, in ``domain``'s words."""
    d = domain or DomainConfig()
    taste = "Picked for your taste"
    return {
        "user": f"{d.users} with similar taste {d.verb} this",
        "trending": "Trending now",
        "popular": f"Popular on {d.service}",
        "backfill": f"Popular on {d.service}",
        "als": taste,
        "ease": taste,
        "ncf": taste,
    }


def because_prefix(domain: DomainConfig | None = None) -> str:
    """The start of an item-anchored reason, before the anchor's title: ``"Because you watched "``."""
    return f"Because you {(domain or DomainConfig()).verb} "


def check_exactly_n(top: DataFrame, users: DataFrame, n: int) -> dict[str, int]:
    """Every known user has exactly ``n`` distinct items: raise before anything is written if not."""
    per_user = top.groupBy(COL_USER_IDX).agg(
        F.count(F.lit(1)).alias("_rows"), F.countDistinct(COL_ITEM_IDX).alias("_items")
    )
    joined = (
        users.select(COL_USER, COL_USER_IDX)
        .join(per_user, COL_USER_IDX, "left")
        .fillna(0, ["_rows", "_items"])
    )
    bad = joined.where((F.col("_rows") != n) | (F.col("_items") != n))
    exact = (F.col("_rows") == n) & (F.col("_items") == n)
    row = joined.agg(F.count(F.lit(1)).alias("users"), F.sum(exact.cast("int")).alias("ok")).head(1)[0]
    if row["users"] != row["ok"]:
        examples = [f"{r[COL_USER]} ({r['_items']} items)" for r in bad.limit(5).collect()]
        raise RuntimeError(
            f"{row['users'] - row['ok']} users would get a list other than {n} distinct unseen items, e.g. "
            f"{', '.join(examples)}: the catalogue has too few items they have not seen; nothing was written"
        )
    return {"users": int(row["users"]), "items_per_user": n}


def reason(labels_col: Column, anchor_title: Column, domain: DomainConfig | None = None) -> Column:
    """Human-readable reason from the dominant source (item-item anchors explain latent picks too), in
    ``domain``'s words."""
    d = F.col(blend.COL_DOMINANT)
    texts = reason_texts(domain)
    because = F.concat(F.lit(because_prefix(domain)), anchor_title)
    return (
        F.when(d.isin("item", "ease", "als", "ncf") & anchor_title.isNotNull(), because)
        .when(
            (d == "cluster") & labels_col.startswith(FANS_OF),
            F.concat(F.lit(FANS_PREFIX), F.substring(labels_col, len(FANS_OF) + 1, 1 << 20)),
        )
        .when((d == "cluster") & labels_col.isNotNull(), F.concat(F.lit(CLUSTER_PREFIX), labels_col))
        .when(d.isin(*texts), F.create_map(*[F.lit(x) for kv in texts.items() for x in kv])[d])
        .otherwise(F.lit(texts["popular"]))
    )


def reason_kind(reasons: Column, domain: DomainConfig | None = None, ellipsis: str = "...") -> Column:
    """The kind of each reason: the item-anchored and cluster reasons with their title or label cut to
    ``ellipsis`` (``"Because you watched ..."``, ``"Popular in ..."``), the fixed ones as they are."""
    because = because_prefix(domain)
    return (
        F.when(reasons.startswith(because), F.lit(because + ellipsis))
        .when(reasons.startswith(CLUSTER_PREFIX), F.lit(CLUSTER_PREFIX + ellipsis))
        .when(reasons.startswith(FANS_PREFIX), F.lit(FANS_PREFIX + ellipsis))
        .otherwise(reasons)
    )


def decorate(
    top: DataFrame,
    users: DataFrame,
    items: DataFrame,
    labels: DataFrame,
    versions: dict[str, str],
    domain: DomainConfig | None = None,
) -> DataFrame:
    """Ids, titles, reasons (in ``domain``'s words) and model versions on the selected lists."""
    anchors = items.select(
        F.col(COL_ITEM_IDX).alias(blend.COL_ANCHOR_IDX),
        F.col(COL_ITEM).alias(COL_ANCHOR),
        F.col(COL_TITLE).alias("_at"),
    )
    mv = (
        F.create_map(*[F.lit(x) for kv in sorted(versions.items()) for x in kv])
        if versions
        else F.create_map()
    )
    return (
        top.join(users, COL_USER_IDX)
        .join(items, COL_ITEM_IDX)
        .join(anchors, blend.COL_ANCHOR_IDX, "left")
        .join(labels, COL_CLUSTER, "left")
        .select(
            COL_USER,
            COL_USER_IDX,
            COL_RANK,
            COL_ITEM,
            COL_TITLE,
            F.col(COL_SCORE).cast("double").alias(COL_SCORE),
            reason(F.col(COL_LABEL), F.col("_at"), domain).alias(COL_REASON),
            COL_SOURCES,
            mv.cast("map<string,string>").alias(COL_MODEL_VERSIONS),
        )
    )


def publish_latest(spark: SparkSession, cfg: Config, run_date: dt.date, props: dict[str, str]) -> str:
    """Replace ``recommendations_latest`` with this run date's lists unless it holds a newer date."""
    path = cfg.table_path(TABLE_RECOMMENDATIONS_LATEST)
    if tables.exists(spark, path):
        newest = tables.read(spark, path).agg(F.max(COL_RUN_DATE)).head(1)[0][0]
        if newest is not None and newest > run_date:
            log.info("%s holds %s, newer than %s: left as it is", path, newest, run_date)
            return f"kept {newest}"
    rows = tables.read_run_date(spark, cfg.table_path(TABLE_RECOMMENDATIONS), run_date)
    n_files = max(1, spark.sparkContext.defaultParallelism)
    ordered = rows.repartitionByRange(n_files, COL_USER).sortWithinPartitions(COL_USER, COL_RANK)
    tables.replace_with_properties(spark, ordered, path, props)
    return str(run_date)


def genre_rows(
    cfg: Config,
    src: Sources,
    scored: DataFrame,
    item_clusters: DataFrame,
    users: DataFrame,
    items: DataFrame,
    labels: DataFrame,
) -> DataFrame:
    """Per user, the ``genre_rows`` favourite clusters by affinity, each with ``genre_row_length``
    unseen items: the user's blended candidates of that cluster first (by score), then the cluster's
    popular items."""
    rc = cfg.recommend
    if src.affinity is None or rc.genre_rows == 0:
        return empty_rows(scored.sparkSession)
    length = rc.genre_row_length
    by_share = Window.partitionBy(COL_USER_IDX).orderBy(F.col(COL_SHARE).desc(), F.col(COL_CLUSTER).asc())
    fav = (
        src.affinity.withColumn(COL_ROW, F.row_number().over(by_share).cast("int"))
        .where(F.col(COL_ROW) <= rc.genre_rows)
        .select(COL_USER_IDX, COL_CLUSTER, COL_ROW)
    )
    ic = item_clusters.select(COL_ITEM_IDX, COL_CLUSTER)
    personal = (
        scored.select(COL_USER_IDX, COL_ITEM_IDX, COL_SCORE)
        .join(ic, COL_ITEM_IDX)
        .join(fav, [COL_USER_IDX, COL_CLUSTER])
        .select(COL_USER_IDX, COL_CLUSTER, COL_ROW, COL_ITEM_IDX, COL_SCORE, F.lit(1).alias("_tier"))
    )
    # min(length, unseen items of the cluster) popular unseen items per user and cluster
    fill = blend.cluster_backfill(ic, src.popularity, fav.select(COL_USER_IDX), src.history, length)
    backfill = (
        fill.join(ic, COL_ITEM_IDX)
        .join(fav, [COL_USER_IDX, COL_CLUSTER])
        .select(COL_USER_IDX, COL_CLUSTER, COL_ROW, COL_ITEM_IDX, COL_SCORE, F.lit(0).alias("_tier"))
    )
    both = personal.unionByName(backfill)
    best = Window.partitionBy(COL_USER_IDX, COL_ITEM_IDX).orderBy(F.col("_tier").desc())
    order = Window.partitionBy(COL_USER_IDX, COL_ROW).orderBy(
        F.col("_tier").desc(), F.col(COL_SCORE).desc(), F.col(COL_ITEM_IDX).asc()
    )
    ranked = (
        both.withColumn("_b", F.row_number().over(best))
        .where(F.col("_b") == 1)
        .withColumn(COL_RANK, F.row_number().over(order).cast("int"))
        .where(F.col(COL_RANK) <= length)
    )
    return (
        ranked.join(users, COL_USER_IDX)
        .join(items, COL_ITEM_IDX)
        .join(labels, COL_CLUSTER, "left")
        .select(
            COL_USER,
            COL_USER_IDX,
            COL_ROW,
            COL_CLUSTER,
            COL_LABEL,
            COL_RANK,
            COL_ITEM,
            COL_TITLE,
            F.col(COL_SCORE).cast("double").alias(COL_SCORE),
        )
    )


def empty_rows(spark: SparkSession) -> DataFrame:
    schema = (
        "user_id string, user_idx int, row int, cluster_id int, label string, rank int, item_id string, "
        "title string, score double"
    )
    return spark.createDataFrame([], schema)


def because_you_watched(
    sims: DataFrame,
    items: DataFrame,
    item_source: str,
    because_k: int,
    domain: DomainConfig | None = None,
) -> DataFrame:
    """``because_k`` neighbours per item from ``item_source`` (of the run date's ``item_similarities``
    rows ``sims``); items it does not cover (cold ones) take their content neighbours when those were
    computed. The reason names the item in ``domain``'s words ("Because you watched X")."""
    sims = sims.where(F.col(COL_RANK) <= because_k)
    main = sims.where(F.col(COL_SOURCE) == item_source)
    fallback = sims.where(F.col(COL_SOURCE) == "content").join(
        main.select(COL_ITEM_IDX).distinct(), COL_ITEM_IDX, "left_anti"
    )
    nb = main.unionByName(fallback)
    titles = items.select(COL_ITEM_IDX, F.col(COL_TITLE).alias("_watched"))
    neighbour_titles = items.select(F.col(COL_ITEM_IDX).alias(COL_NEIGHBOR_IDX), COL_TITLE)
    return (
        nb.join(titles, COL_ITEM_IDX)
        .join(neighbour_titles, COL_NEIGHBOR_IDX)
        .select(
            COL_ITEM,
            COL_ITEM_IDX,
            COL_RANK,
            COL_NEIGHBOR,
            COL_NEIGHBOR_IDX,
            COL_TITLE,
            COL_SCORE,
            COL_SOURCE,
            F.concat(F.lit(because_prefix(domain)), F.col("_watched")).alias(COL_REASON),
        )
    )


def reason_mix(out: DataFrame, domain: DomainConfig | None = None) -> dict[str, float]:
    """Share of the list slots per kind of reason (:func:`reason_kind`), largest first."""
    kind = reason_kind(F.col(COL_REASON), domain)
    rows = out.groupBy(kind.alias("k")).count().collect()
    total = sum(r["count"] for r in rows) or 1
    return {r["k"]: round(r["count"] / total, 4) for r in sorted(rows, key=lambda r: -r["count"])}


def sample_text(out: DataFrame, n_users: int = 5) -> str:
    first = [r[0] for r in out.select(COL_USER).distinct().orderBy(COL_USER).limit(n_users).collect()]
    rows = out.where(F.col(COL_USER).isin(first)).orderBy(COL_USER, COL_RANK).collect()
    lines: list[str] = []
    for r in rows:
        if r[COL_RANK] == 1:
            lines.append(f"user {r[COL_USER]}")
        lines.append(f"  {r[COL_RANK]:>2}. {r[COL_TITLE]}  ({r[COL_SCORE]:.3f})  {r[COL_REASON]}")
    return "\n".join(lines)
