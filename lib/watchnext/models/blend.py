"""Candidates from every source, a tuned weighted blend, a diversity cap and exactly N per user.

Each source proposes up to ``M`` unseen items per user, long format ``(user_idx, item_idx, source,
score, rank, anchor_idx)`` (``anchor_idx``: the watched item that explains an item-item candidate):

* ``als``: top-M of ``p_u . q_i`` (:func:`~watchnext.models.topk.topk_from_factors`);
* ``item``: neighbours of the user's (recent) items, ``sum of sim(j, i)`` (:func:`item_candidates`);
* ``user``: items of similar users (:func:`~watchnext.models.similarity.user_based_scores`);
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
validation split by NDCG@K of the final, capped list (:func:`tune_weights`).

**Top N.** At most ``max_per_cluster`` items of one genre cluster: an item is eligible when fewer than
``max_per_cluster`` items of its cluster score higher for that user (identical to a greedy pass down
the ranking); the N best eligible items win, and only when a user has fewer than N eligible items are
the best ineligible ones taken, so no list is short while the pool has N items (the ``backfill``
source makes that a corner case: a user who has seen nearly every item). Ties go to the smaller item
id.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from watchnext.checks import require_columns
from watchnext.constants import (
    COL_CLUSTER,
    COL_ITEM_IDX,
    COL_RANK,
    COL_SCORE,
    COL_SHARE,
    COL_SOURCE,
    COL_SOURCES,
    COL_USER_IDX,
)
from watchnext.models.similarity import item_based_scores, weighted_scores
from watchnext.models.topk import top_unseen

log = logging.getLogger(__name__)

SOURCES = ("als", "ncf", "item", "user", "cluster", "popular", "trending")
COL_ANCHOR_IDX = "anchor_idx"
COL_COLD = "cold"
COL_DOMINANT = "dominant"
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
    (:func:`~watchnext.models.similarity.item_based_scores`), not a join of history and neighbours."""
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


def pool(
    candidates: DataFrame,
    sources: Sequence[str],
    m: int,
    normalization: Normalization = "rank",
    popularity: DataFrame | None = None,
) -> DataFrame:
    """One row per (user, item) proposed by any source (or by the internal ``backfill``):
    ``(user_idx, item_idx, f_<source> for each source, sources: array<string> sorted, anchor_idx,
    prior)`` (module docstring); ``prior`` is ``popularity`` ``(item_idx, score)`` over its maximum
    (0 without it)."""
    require_columns(
        candidates,
        [COL_USER_IDX, COL_ITEM_IDX, COL_SOURCE, COL_SCORE, COL_RANK, COL_ANCHOR_IDX],
        "candidates",
    )
    unknown = set(sources) - set(SOURCES)
    if unknown:
        raise ValueError(f"unknown candidate sources {sorted(unknown)}; known: {', '.join(SOURCES)}")
    if normalization == "rank":
        f = (F.lit(m + 1) - F.col(COL_RANK)).cast("double") / F.lit(float(m))
    elif normalization == "minmax":
        w = Window.partitionBy(COL_USER_IDX, COL_SOURCE)
        lo, hi = F.min(COL_SCORE).over(w), F.max(COL_SCORE).over(w)
        f = F.when(hi > lo, (F.col(COL_SCORE) - lo) / (hi - lo)).otherwise(F.lit(1.0))
    else:
        raise ValueError(f"normalization must be 'rank' or 'minmax', got {normalization!r}")
    # One shuffle, by user, for the per-user work that follows: the minmax window (user, source), the
    # (user, item) aggregate and select_top_n's windows (user, cluster) and (user) are all clustered by
    # user, so Spark reuses this partitioning instead of shuffling the pool again for each of them.
    cand = (
        candidates.where(F.col(COL_SOURCE).isin([*sources, BACKFILL]))
        .repartition(COL_USER_IDX)
        .withColumn("_f", f)
    )
    aggs = [F.max(F.when(F.col(COL_SOURCE) == s, F.col("_f"))).alias(feature(s)) for s in sources]
    pooled = (
        cand.groupBy(COL_USER_IDX, COL_ITEM_IDX)
        .agg(
            *aggs,
            F.array_sort(F.collect_set(COL_SOURCE)).alias(COL_SOURCES),
            F.max(COL_ANCHOR_IDX).alias(COL_ANCHOR_IDX),
        )
        .fillna(0.0, subset=[feature(s) for s in sources])
    )
    if popularity is None:
        return pooled.withColumn(COL_PRIOR, F.lit(0.0))
    top = popularity.agg(F.max(COL_SCORE).alias("_max"))
    prior = popularity.crossJoin(F.broadcast(top)).select(
        COL_ITEM_IDX, (F.col(COL_SCORE) / F.col("_max")).cast("double").alias(COL_PRIOR)
    )
    return (
        pooled.join(F.broadcast(prior), COL_ITEM_IDX, "left")  # item-sized: the pool stays by user
        .fillna(0.0, [COL_PRIOR])
        .select(*pooled.columns, COL_PRIOR)
    )


def _weighted(weights: Mapping[str, float], sources: Sequence[str]) -> Column:
    terms = [F.lit(float(weights.get(s, 0.0))) * F.col(feature(s)) for s in sources]
    terms.append(F.lit(BACKFILL_EPS) * F.col(COL_PRIOR))
    return sum(terms[1:], terms[0])


def _dominant(weights: Mapping[str, float], sources: Sequence[str]) -> Column:
    """The source contributing most to the blended score (ties: the order of ``SOURCES``)."""
    ordered = [s for s in SOURCES if s in sources]
    best = F.greatest(*[F.lit(float(weights.get(s, 0.0))) * F.col(feature(s)) for s in ordered], F.lit(0.0))
    expr = F.lit(BACKFILL)
    for s in reversed(ordered):
        contrib = F.lit(float(weights.get(s, 0.0))) * F.col(feature(s))
        expr = F.when((contrib >= best) & (contrib > 0), F.lit(s)).otherwise(expr)
    return expr


def blend(
    pool_df: DataFrame,
    sources: Sequence[str],
    weights: Mapping[str, float],
    cold_weights: Mapping[str, float] | None = None,
) -> DataFrame:
    """``pool_df`` plus ``score`` and ``dominant`` (the source behind the reason). Rows whose ``cold``
    column is true use ``cold_weights`` (when given)."""
    score, dom = _weighted(weights, sources), _dominant(weights, sources)
    if cold_weights is not None and COL_COLD in pool_df.columns:
        score = F.when(F.col(COL_COLD), _weighted(cold_weights, sources)).otherwise(score)
        dom = F.when(F.col(COL_COLD), _dominant(cold_weights, sources)).otherwise(dom)
    return pool_df.withColumn(COL_SCORE, score).withColumn(COL_DOMINANT, dom)


def select_top_n(
    scored: DataFrame, item_clusters: DataFrame, n: int, max_per_cluster: int | None
) -> DataFrame:
    """The top ``n`` per user of ``scored`` (``user_idx, item_idx, score, ...``) under the cluster cap
    (module docstring); adds ``cluster_id`` (null for an item without one: it is its own cluster) and
    ``rank`` 1..n by score."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    require_columns(scored, [COL_USER_IDX, COL_ITEM_IDX, COL_SCORE], "scored")
    # item-sized: broadcast, so a pool partitioned by user stays so for the windows below
    df = scored.join(F.broadcast(item_clusters.select(COL_ITEM_IDX, COL_CLUSTER)), COL_ITEM_IDX, "left")
    by_score = [F.col(COL_SCORE).desc(), F.col(COL_ITEM_IDX).asc()]
    if max_per_cluster is not None:
        group = F.coalesce(F.col(COL_CLUSTER).cast("long"), -1 - F.col(COL_ITEM_IDX).cast("long"))
        in_cluster = F.row_number().over(Window.partitionBy(COL_USER_IDX, group).orderBy(*by_score))
        df = df.withColumn("_ok", in_cluster <= max_per_cluster)
    else:
        df = df.withColumn("_ok", F.lit(True))
    pick = F.row_number().over(Window.partitionBy(COL_USER_IDX).orderBy(F.col("_ok").desc(), *by_score))
    chosen = df.withColumn("_pick", pick).where(F.col("_pick") <= n).drop("_pick", "_ok")
    rank = F.row_number().over(Window.partitionBy(COL_USER_IDX).orderBy(*by_score)).cast("int")
    return chosen.withColumn(COL_RANK, rank)


# -------------------------------------------------------------------------------- weight tuning
@dataclass(frozen=True)
class TuningData:
    """Validation candidate pools on the driver, as numpy arrays sorted by user.

    ``features``: ``(rows, n_sources)``; ``user``: a dense 0..U-1 code per row; ``item`` and ``cluster``
    (-1 - item when none) per row; ``relevant``: the row's item is held out for the user;
    ``n_relevant``: per user code, how many held-out items the user has (in the pool or not).
    """

    sources: tuple[str, ...]
    features: np.ndarray
    prior: np.ndarray
    user: np.ndarray
    item: np.ndarray
    cluster: np.ndarray
    relevant: np.ndarray
    n_relevant: np.ndarray

    @classmethod
    def from_pandas(cls, pdf: pd.DataFrame, n_relevant: pd.Series, sources: Sequence[str]) -> TuningData:
        """``pdf``: pool rows (user_idx, item_idx, cluster_id, relevant, f_<s>..., prior); ``n_relevant``:
        held-out item count indexed by user_idx (users with none are dropped)."""
        pdf = pdf[pdf[COL_USER_IDX].isin(n_relevant.index)].sort_values([COL_USER_IDX, COL_ITEM_IDX])
        codes, uniques = pd.factorize(pdf[COL_USER_IDX], sort=True)
        item = pdf[COL_ITEM_IDX].to_numpy(np.int64)
        none = pdf[COL_CLUSTER].isna().to_numpy()
        cluster = np.where(none, -1 - item, pdf[COL_CLUSTER].fillna(0).to_numpy(np.int64))
        return cls(
            sources=tuple(sources),
            features=pdf[[feature(s) for s in sources]].to_numpy(np.float64),
            prior=pdf[COL_PRIOR].to_numpy(np.float64) if COL_PRIOR in pdf else np.zeros(len(pdf)),
            user=codes.astype(np.int64),
            item=item,
            cluster=cluster,
            relevant=pdf["relevant"].to_numpy(bool),
            n_relevant=n_relevant.reindex(uniques).to_numpy(np.int64),
        )

    @property
    def n_users(self) -> int:
        return len(self.n_relevant)


def ndcg_at_k(data: TuningData, weights: Mapping[str, float], k: int, max_per_cluster: int | None) -> float:
    """Mean NDCG@k over ``data``'s users of the capped top-k of the blended score (the same rule as
    :func:`select_top_n`, and the evaluator's NDCG: binary relevance, IDCG over min(k, |held-out|))."""
    w = np.array([float(weights.get(s, 0.0)) for s in data.sources])
    score = data.features @ w + BACKFILL_EPS * data.prior
    # order within user: score desc, item asc
    order = np.lexsort((data.item, -score, data.user))
    user, cluster = data.user[order], data.cluster[order]
    ok = np.ones(len(order), dtype=bool)
    if max_per_cluster is not None:
        by_cluster = np.lexsort((np.arange(len(order)), cluster, user))  # stable: keeps score order
        uc_u, uc_c = user[by_cluster], cluster[by_cluster]
        start = np.r_[True, (uc_u[1:] != uc_u[:-1]) | (uc_c[1:] != uc_c[:-1])]
        group_id = np.cumsum(start) - 1
        first = np.flatnonzero(start)
        pos_in_group = np.arange(len(order)) - first[group_id]
        ok[by_cluster] = pos_in_group < max_per_cluster
    # chosen = top-k per user by (ok desc, score order)
    pick_order = np.lexsort((np.arange(len(order)), ~ok, user))
    pu = user[pick_order]
    first_u = np.r_[True, pu[1:] != pu[:-1]]
    gid = np.cumsum(first_u) - 1
    pos = np.arange(len(pick_order)) - np.flatnonzero(first_u)[gid]
    chosen = pick_order[pos < k]
    chosen.sort()  # back to score order within user
    cu = user[chosen]
    rel = data.relevant[order][chosen]
    first_c = np.r_[True, cu[1:] != cu[:-1]]
    cgid = np.cumsum(first_c) - 1
    rank = np.arange(len(chosen)) - np.flatnonzero(first_c)[cgid] + 1
    dcg = np.bincount(cu, weights=rel / np.log2(rank + 1.0), minlength=data.n_users)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    idcg = ideal[np.minimum(data.n_relevant, k) - 1]
    return float(np.mean(dcg / idcg))


@dataclass
class WeightSearch:
    weights: dict[str, float]
    value: float
    trials: list[tuple[dict[str, float], float]] = field(default_factory=list)
    single_source: dict[str, float] = field(default_factory=dict)


def tune_weights(
    data: TuningData,
    k: int,
    max_per_cluster: int | None,
    *,
    n_trials: int,
    seed: int,
    method: Literal["tpe", "random"] = "tpe",
    start: Mapping[str, float] | None = None,
) -> WeightSearch:
    """Weights in ``[0, 1]`` (the strongest single source fixed at 1, since only ratios matter)
    maximising :func:`ndcg_at_k`, with Optuna; the configured ``start`` and every single source are
    enqueued as the first trials, so the result is never worse than any of them on ``data``."""
    import optuna

    single = {s: ndcg_at_k(data, {s: 1.0}, k, max_per_cluster) for s in data.sources}
    anchor = max(single, key=lambda s: (single[s], -data.sources.index(s)))
    free = [s for s in data.sources if s != anchor]
    sampler = (
        optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(10, n_trials // 5))
        if method == "tpe"
        else optuna.samplers.RandomSampler(seed=seed)
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    if start:
        top = float(start.get(anchor, 0.0)) or 1.0
        study.enqueue_trial({s: min(1.0, float(start.get(s, 0.0)) / top) for s in free})
    study.enqueue_trial({s: 0.0 for s in free})
    trials: list[tuple[dict[str, float], float]] = []

    def objective(trial: optuna.Trial) -> float:
        w = {anchor: 1.0, **{s: trial.suggest_float(s, 0.0, 1.0) for s in free}}
        value = ndcg_at_k(data, w, k, max_per_cluster)
        trials.append((w, value))
        return value

    study.optimize(objective, n_trials=n_trials)
    best = {anchor: 1.0, **{s: float(study.best_params[s]) for s in free}}
    return WeightSearch(weights=best, value=float(study.best_value), trials=trials, single_source=single)
