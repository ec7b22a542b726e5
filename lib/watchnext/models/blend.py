"""Candidates from every source, a tuned weighted blend, a diversity cap and exactly N per user.

Each source proposes up to ``M`` unseen items per user, long format ``(user_idx, item_idx, source,
score, rank, anchor_idx)`` (``anchor_idx``: the watched item that explains an item-item candidate):

* ``als``: top-M of ``p_u . q_i`` (:func:`~watchnext.models.topk.topk_from_factors`);
* ``ease``: top-M of ``x_u B``, the closed-form linear item model (:mod:`watchnext.models.ease`);
* ``item``: neighbours of the user's (recent) items, ``sum of sim(j, i)`` (:func:`item_candidates`);
* ``user``: items of similar users (:func:`~watchnext.models.knn.user_based_scores`);
* ``cluster``: popular items of the user's favourite genre clusters (:func:`cluster_candidates`);
* ``popular`` / ``trending``: the global rankings; they also backfill every list;
* ``ncf``: NeuMF scores when that stage ran;
* ``backfill`` (internal, no weight): the most popular unseen items of every cluster
  (:func:`cluster_backfill`), so the cluster cap can be met from the pool.

**Pool.** Per user and source, scores are normalised to ``(0, 1]`` (``rank``: ``(M + 1 - rank) / M``;
``minmax``: ``(s - min) / (max - min)`` over the user's M candidates, 1 when they are all equal);
a source that did not propose an item contributes 0. One row per (user, item) keeps the sources that
proposed it and the item-item anchor.

**Blend.** ``score = sum_s w_s f_s + 1e-6 prior`` with ``prior`` the item's popularity over the
top item's (the tiny term orders otherwise-tied backfill by popularity). Users with fewer than
``cold_threshold`` interactions are scored with the cold weights instead (the switching rule:
cluster-popular and trending rather than collaborative signals). The weights are tuned on a
validation split by NDCG@K of the final, capped list (``models/blend_tuning.py``).

**Top N.** At most ``max_per_cluster`` items of one genre cluster: an item is eligible when fewer than
``max_per_cluster`` items of its cluster score higher for that user (identical to a greedy pass down
the ranking); the N best eligible items win, and only when a user has fewer than N eligible items are
the best ineligible ones taken, so no list is short while the pool has N items (the ``backfill``
source makes that a corner case: a user who has seen nearly every item). Ties go to the smaller item
id.

**How.** :func:`rank_candidates` does pool, blend and top N after one shuffle of the candidates by
user (the users' interaction counts, for the cold flag, travel in the same shuffle as extra rows):
each partition is read whole and ranked in numpy, with the item-sized popularity and clusters
broadcast. :func:`pool`, :func:`blend` and :func:`select_top_n` are the same steps one at a time.

About 530 lines: the candidate sources and the pool/blend/top-N steps share the long format and the
numpy kernels above; the weight search is apart (``models/blend_tuning.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

from watchnext.checks import require_columns
from watchnext.constants import (
    COL_ANCHOR_IDX,
    COL_CLUSTER,
    COL_ITEM_IDX,
    COL_RANK,
    COL_SCORE,
    COL_SHARE,
    COL_SOURCE,
    COL_SOURCES,
    COL_USER_IDX,
)
from watchnext.grouped import by_key
from watchnext.kernels import capped_rank, lookup_sorted, run_starts, weight_vector
from watchnext.models.knn import item_based_scores, weighted_scores
from watchnext.models.topk import top_unseen

log = logging.getLogger(__name__)

SOURCES = ("als", "ease", "ncf", "item", "user", "cluster", "popular", "trending")
COL_COLD = "cold"
COL_DOMINANT = "dominant"
COL_COUNT = "count"  # rank_candidates' counts: the user's interactions, for the cold flag
COL_PRIOR = "prior"  # the item's popularity / the most popular item's: orders otherwise-tied backfill
BACKFILL = "backfill"  # internal source: popular items of every cluster, so the cap can always be met
BACKFILL_EPS = 1e-6
Normalization = Literal["rank", "minmax"]


def feature(source: str) -> str:
    """Pool column of a source's normalised score."""
    return f"f_{source}"


# ---------------------------------------------------------------------------------------- sources
def ranked(df: DataFrame, source: str, anchor: str | None = None) -> DataFrame:
    """A source's ranked lists ``(user_idx, item_idx, score, rank[, anchor])`` in the long format."""
    require_columns(df, [COL_USER_IDX, COL_ITEM_IDX, COL_SCORE, COL_RANK], f"{source} candidates")
    return df.select(
        F.col(COL_USER_IDX).cast("int").alias(COL_USER_IDX),
        F.col(COL_ITEM_IDX).cast("int").alias(COL_ITEM_IDX),
        F.lit(source).alias(COL_SOURCE),
        F.col(COL_SCORE).cast("double").alias(COL_SCORE),
        F.col(COL_RANK).cast("int").alias(COL_RANK),
        (F.col(anchor) if anchor else F.lit(None)).cast("int").alias(COL_ANCHOR_IDX),
    )


def top_per_user(scores: DataFrame, m: int, extra: Sequence[str] = ()) -> DataFrame:
    """The ``m`` best ``(user_idx, item_idx, score)`` per user, ranked, ties to the smaller item."""
    order = Window.partitionBy(COL_USER_IDX).orderBy(F.col(COL_SCORE).desc(), F.col(COL_ITEM_IDX).asc())
    return (
        scores.withColumn(COL_RANK, F.row_number().over(order).cast("int"))
        .where(F.col(COL_RANK) <= m)
        .select(
            COL_USER_IDX, COL_ITEM_IDX, F.col(COL_SCORE).cast("double").alias(COL_SCORE), COL_RANK, *extra
        )
    )


def item_candidates(
    neighbors: DataFrame, history: DataFrame, m: int, *, recent: int | None = None
) -> DataFrame:
    """Item-item candidates: ``score(u, i) = sum of sim(j, i)`` over the user's anchors ``j`` (every
    watched item, or the ``recent`` latest by timestamp) that have ``i`` among their neighbours; seen
    items excluded. ``anchor_idx`` is the anchor contributing most (ties: the smaller id): the
    "because you watched" item. ``neighbors``: ``(item_idx, neighbor_idx, score)``; ``history``:
    ``(user_idx, item_idx[, timestamp])``. One sparse product per batch of users
    (:func:`~watchnext.models.knn.item_based_scores`), not a join of history and neighbours."""
    return item_based_scores(neighbors, history, m, recent=recent, col_anchor=COL_ANCHOR_IDX)


def cluster_candidates(
    affinity: DataFrame,
    item_clusters: DataFrame,
    popularity: DataFrame,
    seen: DataFrame,
    m: int,
    *,
    top_clusters: int = 3,
) -> DataFrame:
    """Popular items of each user's favourite clusters: ``score(u, i) = share(u, c(i)) * pop(i) /
    max pop in c(i)``, over the user's ``top_clusters`` clusters by share; seen items excluded; zero
    scores are not candidates.

    ``affinity``: ``(user_idx, cluster_id, share)``; ``item_clusters``: ``(item_idx, cluster_id)``;
    ``popularity``: ``(item_idx, score)``; ``seen``: ``(user_idx, item_idx)``.
    """
    require_columns(affinity, [COL_USER_IDX, COL_CLUSTER, COL_SHARE], "affinity")
    require_columns(item_clusters, [COL_ITEM_IDX, COL_CLUSTER], "item_clusters")
    require_columns(popularity, [COL_ITEM_IDX, COL_SCORE], "popularity")
    by_share = Window.partitionBy(COL_USER_IDX).orderBy(F.col(COL_SHARE).desc(), F.col(COL_CLUSTER).asc())
    fav = (
        affinity.withColumn("_r", F.row_number().over(by_share))
        .where(F.col("_r") <= top_clusters)
        .select(COL_USER_IDX, COL_CLUSTER, COL_SHARE)
    )
    # Per cluster, enough popular items that m survive any user's seen items in the favourite clusters.
    in_cluster = (
        item_clusters.select(COL_ITEM_IDX, COL_CLUSTER)
        .where(F.col(COL_CLUSTER).isNotNull())
        .join(popularity, COL_ITEM_IDX)
    )
    by_pop = Window.partitionBy(COL_CLUSTER).orderBy(F.col(COL_SCORE).desc(), F.col(COL_ITEM_IDX).asc())
    top_items = (
        in_cluster.withColumn("_r", F.row_number().over(by_pop))
        .withColumn("_max", F.max(COL_SCORE).over(Window.partitionBy(COL_CLUSTER)))
        .where(F.col("_r") <= 3 * m)
        .select(COL_CLUSTER, COL_ITEM_IDX, (F.col(COL_SCORE) / F.col("_max")).alias("_pop"))
    )
    # one sparse product per batch of users (fav: weights over clusters, top_items: the matrix), not a
    # join of users x favourite clusters x items (450M rows at 20M interactions)
    return weighted_scores(
        fav,
        top_items,
        seen.select(COL_USER_IDX, COL_ITEM_IDX),
        m,
        col_key=COL_CLUSTER,
        col_weight=COL_SHARE,
        col_value="_pop",
    )


def cluster_backfill(
    item_clusters: DataFrame, popularity: DataFrame, users: DataFrame, seen: DataFrame, per_cluster: int
) -> DataFrame:
    """The ``per_cluster`` most popular unseen items of every cluster for every user of ``users`` (fewer
    only where the user has seen the rest of the cluster): with them in the pool a top-N respects the
    cluster cap whenever the catalogue allows. Ranked per user by popularity (ties: the smaller item).

    Linear in the interactions (:func:`~watchnext.models.topk.top_unseen`, one group per cluster): a
    user needs at most ``seen(u, c) + per_cluster`` of a cluster's items in popularity order."""
    require_columns(item_clusters, [COL_ITEM_IDX, COL_CLUSTER], "item_clusters")
    catalogue = (
        item_clusters.select(COL_ITEM_IDX, COL_CLUSTER)
        .where(F.col(COL_CLUSTER).isNotNull())
        .join(popularity.select(COL_ITEM_IDX, COL_SCORE), COL_ITEM_IDX, "left")
        .fillna(0.0, [COL_SCORE])
    )
    return top_unseen(catalogue, users, per_cluster, seen, col_group=COL_CLUSTER)


# ------------------------------------------------------------------------ pool, blend and top N
# Each step runs in numpy on whole partitions of a DataFrame shuffled once by user; together in
# rank_candidates. As Spark windows and a (user, item) aggregate they sorted the ~350M candidate rows
# of a 20M-interaction run four times and built a collect_set object per row.
_COUNT = -1  # source code of the per-user interaction-count rows shuffled with the candidates
_CODE = "_code"


def _check_sources(sources: Sequence[str]) -> None:
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown candidate sources {sorted(unknown)}; known: {', '.join(SOURCES)}")


def _np(t: pa.Table, name: str, dtype: type, null: object = None) -> np.ndarray:
    col = t.column(name)
    if null is not None:
        col = pc.fill_null(col, null)
    return col.to_numpy().astype(dtype, copy=False)


def _pool_table(
    t: pa.Table,
    sources: Sequence[str],
    m: int,
    normalization: Normalization,
    prior: tuple[np.ndarray, np.ndarray] | None,
    cold_threshold: int | None,
) -> pa.Table:
    """Candidate rows ``(user_idx, item_idx, _code, score, rank, anchor_idx)`` (``_code``: the
    source's position in ``sources``, ``len(sources)`` for backfill, ``_COUNT`` for a row holding the
    user's interaction count in ``score``) -> the pool, one row per (user, item) (:func:`pool`), with
    ``cold`` when ``cold_threshold`` is given."""
    n_src = len(sources)
    user, item = _np(t, COL_USER_IDX, np.int64), _np(t, COL_ITEM_IDX, np.int64)
    code, score = _np(t, _CODE, np.int64), _np(t, COL_SCORE, np.float64)
    counted = code == _COUNT
    count_user, count = user[counted], score[counted]
    keep = ~counted
    user, item, code, score = user[keep], item[keep], code[keep], score[keep]
    rank = _np(t, COL_RANK, np.int64, 0)[keep]
    anchor = _np(t, COL_ANCHOR_IDX, np.int64, -1)[keep]
    if normalization == "rank":
        f = (m + 1 - rank).astype(np.float64) / float(m)
    else:  # min-max over the user's candidates of the source
        by = np.lexsort((code, user))
        new = run_starts(user[by], code[by])
        run = np.empty(len(by), np.int64)
        run[by] = np.cumsum(new) - 1
        first = np.flatnonzero(new)
        lo = np.minimum.reduceat(score[by], first)[run] if len(by) else score
        hi = np.maximum.reduceat(score[by], first)[run] if len(by) else score
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.where(hi > lo, (score - lo) / (hi - lo), 1.0)
    by = np.lexsort((item, user))
    new = run_starts(user[by], item[by])
    pair = np.empty(len(by), np.int64)
    pair[by] = np.cumsum(new) - 1
    n_pairs = int(new.sum())
    feats = np.full((n_pairs, n_src + 1), -np.inf)
    np.maximum.at(feats, (pair, code), f)
    present = np.zeros((n_pairs, n_src + 1), bool)
    present[pair, code] = True
    feats = np.where(present, feats, 0.0)
    anchors = np.full(n_pairs, -1, np.int64)
    np.maximum.at(anchors, pair, anchor)
    p_user, p_item = user[by][new], item[by][new]
    names = np.asarray([*sources, BACKFILL])
    alpha = np.argsort(names, kind="stable")  # each pool row's sources, sorted by name
    rows, cols = np.nonzero(present[:, alpha])
    offsets = np.r_[0, np.cumsum(np.bincount(rows, minlength=n_pairs))].astype(np.int32)
    out = {
        COL_USER_IDX: pa.array(p_user, pa.int32()),
        COL_ITEM_IDX: pa.array(p_item, pa.int32()),
        **{feature(s): pa.array(feats[:, j]) for j, s in enumerate(sources)},
        COL_SOURCES: pa.ListArray.from_arrays(pa.array(offsets), pa.array(names[alpha][cols])),
        COL_ANCHOR_IDX: pa.array(anchors, pa.int32(), mask=anchors < 0),
        COL_PRIOR: pa.array(_at(*prior, p_item) if prior is not None else np.zeros(n_pairs)),
    }
    if cold_threshold is not None:
        order = np.argsort(count_user, kind="stable")
        out[COL_COLD] = pa.array(_at(count_user[order], count[order], p_user) < cold_threshold)
    return pa.table(out)


def _at(keys: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``values`` of the sorted ``keys`` at ``x``, 0 where absent."""
    pos, hit = lookup_sorted(keys, x)
    return np.where(hit, values[pos] if len(values) else 0.0, 0.0)


def _blend_table(
    t: pa.Table,
    sources: Sequence[str],
    weights: Mapping[str, float],
    cold_weights: Mapping[str, float] | None,
) -> pa.Table:
    """``t`` plus ``score`` and ``dominant`` (:func:`blend`)."""
    feats = np.column_stack([_np(t, feature(s), np.float64) for s in sources] or [np.zeros(t.num_rows)])
    prior = _np(t, COL_PRIOR, np.float64)
    ordered = [s for s in SOURCES if s in sources]  # the dominant source's tie order
    at = [list(sources).index(s) for s in ordered]

    def score_and_dominant(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score = w[0] * feats[:, 0] if len(w) else np.zeros(t.num_rows)
        for j in range(1, len(w)):  # summed left to right, like the Spark expression it replaced
            score = score + w[j] * feats[:, j]
        score = score + BACKFILL_EPS * prior
        contrib = feats[:, at] * w[at] if at else np.zeros((t.num_rows, 0))
        best = np.maximum(contrib.max(axis=1, initial=0.0), 0.0)
        ok = (contrib >= best[:, None]) & (contrib > 0)
        dom = np.where(ok.any(axis=1), ok.argmax(axis=1), len(ordered))
        return score, dom

    score, dom = score_and_dominant(weight_vector(weights, sources))
    if cold_weights is not None and COL_COLD in t.column_names:
        cold = _np(t, COL_COLD, bool)
        c_score, c_dom = score_and_dominant(weight_vector(cold_weights, sources))
        score, dom = np.where(cold, c_score, score), np.where(cold, c_dom, dom)
    names = pa.array([*ordered, BACKFILL])
    return t.append_column(COL_SCORE, pa.array(score)).append_column(COL_DOMINANT, names.take(dom))


def _top_table(
    t: pa.Table, clusters: tuple[np.ndarray, np.ndarray, np.ndarray], n: int, cap: int | None, every: bool
) -> pa.Table:
    """``t`` plus ``cluster_id`` and ``rank`` in the capped top ``n`` (:func:`select_top_n`): only the
    chosen rows, or ``every`` row with ``rank`` null where not chosen."""
    item = _np(t, COL_ITEM_IDX, np.int64)
    ids, values, has = clusters
    pos, hit = lookup_sorted(ids, item)
    hit &= has[pos] if len(has) else hit
    cluster = np.where(hit, values[pos] if len(values) else 0, 0)
    group = np.where(hit, cluster, -1 - item)
    rank = capped_rank(_np(t, COL_USER_IDX, np.int64), item, _np(t, COL_SCORE, np.float64), group, n, cap)
    cluster_col = pa.array(cluster, mask=~hit)
    if every:
        out = t.append_column(COL_CLUSTER, cluster_col)
        return out.append_column(COL_RANK, pa.array(rank, pa.int32(), mask=rank == 0))
    chosen = np.flatnonzero(rank)
    out = t.take(chosen).append_column(COL_CLUSTER, cluster_col.take(chosen))
    return out.append_column(COL_RANK, pa.array(rank[chosen], pa.int32()))


def _pool_fields(sources: Sequence[str], cold: bool) -> list[T.StructField]:
    return [
        T.StructField(COL_USER_IDX, T.IntegerType(), False),
        T.StructField(COL_ITEM_IDX, T.IntegerType(), False),
        *[T.StructField(feature(s), T.DoubleType(), False) for s in sources],
        T.StructField(COL_SOURCES, T.ArrayType(T.StringType(), False), False),
        T.StructField(COL_ANCHOR_IDX, T.IntegerType(), True),
        T.StructField(COL_PRIOR, T.DoubleType(), False),
        *([T.StructField(COL_COLD, T.BooleanType(), False)] if cold else []),
    ]


def _blend_fields() -> list[T.StructField]:
    return [
        T.StructField(COL_SCORE, T.DoubleType(), False),
        T.StructField(COL_DOMINANT, T.StringType(), False),
    ]


def _top_fields(item_clusters: DataFrame, every: bool) -> list[T.StructField]:
    return [
        T.StructField(COL_CLUSTER, item_clusters.schema[COL_CLUSTER].dataType, True),
        T.StructField(COL_RANK, T.IntegerType(), every),
    ]


def _prior(popularity: DataFrame | None) -> tuple[np.ndarray, np.ndarray] | None:
    """``popularity`` ``(item_idx, score)`` over its maximum, by item id (item-sized: collected)."""
    if popularity is None:
        return None
    pdf: pd.DataFrame = popularity.select(
        F.col(COL_ITEM_IDX).cast("long"), F.col(COL_SCORE).cast("double")
    ).toPandas()
    pdf = pdf.dropna().sort_values(COL_ITEM_IDX)
    score = pdf[COL_SCORE].to_numpy(np.float64)
    top = score.max() if len(score) else 0.0
    return pdf[COL_ITEM_IDX].to_numpy(np.int64), (score / top if top > 0 else np.zeros(len(score)))


def _clusters(item_clusters: DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``item_clusters`` by item id: ids, cluster ids, whether the item has one (item-sized)."""
    require_columns(item_clusters, [COL_ITEM_IDX, COL_CLUSTER], "item_clusters")
    pdf: pd.DataFrame = item_clusters.select(F.col(COL_ITEM_IDX).cast("long"), COL_CLUSTER).toPandas()
    pdf = pdf.dropna(subset=[COL_ITEM_IDX]).sort_values(COL_ITEM_IDX)
    if pdf[COL_ITEM_IDX].duplicated().any():
        raise ValueError(f"item_clusters has more than one row for an item ({COL_ITEM_IDX})")
    has = pdf[COL_CLUSTER].notna().to_numpy()
    return pdf[COL_ITEM_IDX].to_numpy(np.int64), pdf[COL_CLUSTER].fillna(0).to_numpy(np.int64), has


def _coded(candidates: DataFrame, sources: Sequence[str], counts: DataFrame | None) -> DataFrame:
    """The configured sources' and backfill's candidate rows, the source as its code; with one row
    per user of ``counts`` ``(user_idx, count)`` (code ``_COUNT``, the count in ``score``)."""
    require_columns(
        candidates,
        [COL_USER_IDX, COL_ITEM_IDX, COL_SOURCE, COL_SCORE, COL_RANK, COL_ANCHOR_IDX],
        "candidates",
    )
    names = [*sources, BACKFILL]
    code = F.array_position(F.array(*[F.lit(s) for s in names]), F.col(COL_SOURCE)).cast("int") - 1
    cols = [
        F.col(COL_USER_IDX).cast("int").alias(COL_USER_IDX),
        F.col(COL_ITEM_IDX).cast("int").alias(COL_ITEM_IDX),
        code.alias(_CODE),
        F.col(COL_SCORE).cast("double").alias(COL_SCORE),
        F.col(COL_RANK).cast("int").alias(COL_RANK),
        F.col(COL_ANCHOR_IDX).cast("int").alias(COL_ANCHOR_IDX),
    ]
    coded = candidates.where(F.col(COL_SOURCE).isin(names)).select(*cols)
    if counts is None:
        return coded
    meta = counts.select(
        F.col(COL_USER_IDX).cast("int").alias(COL_USER_IDX),
        F.lit(0).alias(COL_ITEM_IDX),
        F.lit(_COUNT).alias(_CODE),
        F.col(COL_COUNT).cast("double").alias(COL_SCORE),
        F.lit(None).cast("int").alias(COL_RANK),
        F.lit(None).cast("int").alias(COL_ANCHOR_IDX),
    )
    return coded.unionByName(meta)


def _check_normalization(normalization: str) -> None:
    if normalization not in ("rank", "minmax"):
        raise ValueError(f"normalization must be 'rank' or 'minmax', got {normalization!r}")


def pool(
    candidates: DataFrame,
    sources: Sequence[str],
    m: int,
    normalization: Normalization = "rank",
    popularity: DataFrame | None = None,
    *,
    partitions: int | None = None,
) -> DataFrame:
    """One row per (user, item) proposed by any source (or by the internal ``backfill``):
    ``(user_idx, item_idx, f_<source> for each source, sources: array<string> sorted, anchor_idx,
    prior)`` (module docstring); ``prior`` is ``popularity`` ``(item_idx, score)`` over its maximum
    (0 without it). Partitioned by user (``partitions``, default the shuffle partitions)."""
    _check_sources(sources)
    _check_normalization(normalization)
    prior = _prior(popularity)
    fields = _pool_fields(sources, cold=False)
    schema = T.StructType(fields)

    def step(t: pa.Table) -> pa.Table:
        return _pool_table(t, sources, m, normalization, prior, None)

    return by_key(_coded(candidates, sources, None), COL_USER_IDX, step, schema, partitions)


def blend(
    pool_df: DataFrame,
    sources: Sequence[str],
    weights: Mapping[str, float],
    cold_weights: Mapping[str, float] | None = None,
) -> DataFrame:
    """``pool_df`` plus ``score`` and ``dominant`` (the source behind the reason; ties: the order of
    ``SOURCES``). Rows whose ``cold`` column is true use ``cold_weights`` (when given). Row-wise: the
    partitioning is kept."""
    require_columns(pool_df, [*[feature(s) for s in sources], COL_PRIOR], "pool")
    schema = T.StructType([*pool_df.schema.fields, *_blend_fields()])
    arrow = to_arrow_schema(schema)
    weights, cold = dict(weights), dict(cold_weights) if cold_weights is not None else None

    def step(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            out = _blend_table(pa.Table.from_batches([b]), sources, weights, cold)
            yield from out.select(arrow.names).cast(arrow).to_batches()

    return pool_df.mapInArrow(step, schema)


def select_top_n(
    scored: DataFrame,
    item_clusters: DataFrame,
    n: int,
    max_per_cluster: int | None,
    *,
    partitions: int | None = None,
    every: bool = False,
) -> DataFrame:
    """The top ``n`` per user of ``scored`` (``user_idx, item_idx, score, ...``) under the cluster cap
    (module docstring); adds ``cluster_id`` (null for an item without one: it is its own cluster) and
    ``rank`` 1..n by score; ``every``: all rows, ``rank`` null where not chosen. Shuffles ``scored`` by
    user: :func:`rank_candidates` does all three steps after one shuffle."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    require_columns(scored, [COL_USER_IDX, COL_ITEM_IDX, COL_SCORE], "scored")
    clusters = _clusters(item_clusters)
    schema = T.StructType([*scored.schema.fields, *_top_fields(item_clusters, every=every)])

    def step(t: pa.Table) -> pa.Table:
        return _top_table(t, clusters, n, max_per_cluster, every=every)

    return by_key(scored, COL_USER_IDX, step, schema, partitions)


def rank_candidates(
    candidates: DataFrame,
    sources: Sequence[str],
    m: int,
    normalization: Normalization,
    weights: Mapping[str, float],
    item_clusters: DataFrame,
    n: int,
    max_per_cluster: int | None,
    *,
    popularity: DataFrame | None = None,
    counts: DataFrame | None = None,
    cold_threshold: int = 0,
    cold_weights: Mapping[str, float] | None = None,
    partitions: int | None = None,
) -> DataFrame:
    """:func:`pool`, ``cold``, :func:`blend` and :func:`select_top_n` after one shuffle of the
    candidates by user: the scored pool, every row, with ``cluster_id`` and ``rank`` (1..n for the
    user's top ``n``, null otherwise). ``cold``: the user has fewer than ``cold_threshold``
    interactions in ``counts`` ``(user_idx, count)`` (none: 0)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check_sources(sources)
    _check_normalization(normalization)
    prior, clusters = _prior(popularity), _clusters(item_clusters)
    w, cold_w = dict(weights), dict(cold_weights) if cold_weights is not None else None
    fields = [*_pool_fields(sources, cold=True), *_blend_fields(), *_top_fields(item_clusters, every=True)]
    schema = T.StructType(fields)
    if counts is not None:
        require_columns(counts, [COL_USER_IDX, COL_COUNT], "counts")

    def step(t: pa.Table) -> pa.Table:
        pooled = _pool_table(t, sources, m, normalization, prior, cold_threshold)
        return _top_table(_blend_table(pooled, sources, w, cold_w), clusters, n, max_per_cluster, every=True)

    return by_key(_coded(candidates, sources, counts), COL_USER_IDX, step, schema, partitions)
