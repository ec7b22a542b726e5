"""Genre clusters over the item feature vectors, their labels, and users' affinity to them.

The vectors are the items' content features, their L2-normalised ALS factors ("behaviour"), or both
(``clusters.features``, :mod:`watchnext.models.cluster_features`): everything below works on any unit
vectors whose cosine is the similarity meant.

**Clustering** (:func:`fit_clusters`): Spark's ``KMeans`` or ``BisectingKMeans`` with
``distanceMeasure="cosine"`` (spherical k-means: the features are L2-normalised and built so that their
cosine is the item similarity, e.g. the content similarity of :mod:`watchnext.features.content`). With
``k`` None every ``k`` in ``range(k_min, k_max + 1, k_step)`` below the number of distinct non-zero
vectors is fitted and the one with the highest **silhouette** wins (ties: the smaller k). The
silhouette is Spark's ``ClusteringEvaluator`` with the *cosine* distance ``1 - cos``, the geometry the
clusters are fitted in (for unit vectors the squared Euclidean distance is ``2 (1 - cos)``, which ranks
points alike, but cosine keeps the score on the scale of the similarity the features define).

Up to ``clusters.search_max_items`` items with content (k-means, more than one k), the search runs on
the driver (:mod:`watchnext.models.kmeans_search`: the same spherical k-means and cosine silhouette,
milliseconds per fit instead of seconds of Spark jobs), and the published model is a Spark
``KMeansModel`` holding the chosen fit's centres, so it assigns new items exactly as the search did.
Beyond that size, or with bisecting k-means, every k is fitted on Spark as follows.

Each k is fitted ``n_init`` times, with seeds ``seed, seed + 1, ...``, and the fit with the lowest
training cost (the sum of cosine distances to the centres) is kept, the first seed among costs equal
up to 1e-9. One k-means|| start often ends in a local optimum that merges two planted clusters and
splits another: about half of the starts on the synthetic catalogues, whose planted partition has the
lowest cost.

Items whose feature vector is all zeros (no content; in behaviour mode, no factors) are not given to
k-means: they have no cosine with anything and would drag centroids towards the origin. If there are
any, they form their own cluster ``"Uncategorised"`` with id ``k`` (the model's clusters are
``0 .. k-1``); if there are none, that id is unused. Cluster ids do not depend on k-means' own numbering of
its centres (which follows the order its random starts happen to pick them, and changed between two
runs of the same data): the clusters are numbered by size, largest first, ties by their lowest item
index, so a re-run that finds the same partition of the items writes the same ids. The returned model
is k-means followed by that renumbering (a ``SQLTransformer``), so it labels new items with the same
ids.

**Labels** (:func:`label_clusters`): for cluster ``c`` and genre ``g``, ``support = n_cg / n_c`` (the
share of the cluster's items carrying ``g``) and ``lift = support / (n_g / N)`` (over the share of all
clustered items carrying it). A genre is *characteristic* of ``c`` when ``lift > 1``
(over-represented); characteristic genres are ranked by support, then lift, then name, and the first
``n_genres`` are joined with ``" & "``. Tags (lower-cased, trimmed, an item counted once per tag) are
ranked by the same rule and the first ``n_tags`` follow in double quotes after ``" · "``: ``Animation &
Children · "pixar"``. Support first, because a label should describe most of the cluster: ranking by
``support * lift`` names a genre on 85% of the cluster that is unique to it before the genre *every*
item carries when that one also appears in other clusters, which reads as a side trait (with 2 genres,
on the planted clusters of synthetic seeds 1-12 at 480 items / 6 clusters, ``support * lift`` leaves
the lead genre out of 3 of 72 labels; this rule out of none). The lift filter keeps catalogue-wide
genres (a Drama on 45% of everything) out of clusters where they are merely common. A cluster with
nothing characteristic is ``"Uncategorised"``, unless the caller passes the interactions (the clusters
stage does for behavioural clusters and thin catalogues): then it is named by its most popular members,
``"Fans of A, B, C"``, the ``n_members`` items of the cluster with the most distinct users (ties: lower
item index), by title. A catalogue of names (music artists) has no genre or tag to name a cluster by,
and a few well-known members say what its audience likes; a cluster nobody interacted with (the
never-watched items of behaviour mode) stays ``"Uncategorised"``. Labels are made unique: clusters that
share a label take their next characteristic genre, then their next tag, then their next member, until
they differ or run out; then the larger cluster (ties: lower id) keeps the label and the others get ``"
#2"``, ``" #3"``.

**Affinity** (:func:`user_cluster_affinity`): ``share(u, c) = (n_uc + m * p_c) / (n_u + m)`` with
``n_uc`` the user's interactions on items of cluster ``c``, ``n_u`` all of theirs, ``p_c`` the
cluster's share of all interactions and ``m`` the smoothing: a Bayesian average that pulls users with
little history to the global mix. One row per user and cluster, for every cluster in the assignments,
so a user's shares sum to 1.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from pyspark import StorageLevel
from pyspark.ml import PipelineModel
from pyspark.ml.clustering import BisectingKMeans, BisectingKMeansModel, KMeans, KMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import SQLTransformer
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import SparseVector, Vectors
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext import progress
from watchnext.checks import require_columns
from watchnext.concurrency import map_ordered
from watchnext.config import ClustersConfig
from watchnext.constants import (
    COL_CLUSTER,
    COL_FEATURES,
    COL_GENRES,
    COL_ITEM,
    COL_ITEM_IDX,
    COL_LABEL,
    COL_N_INTERACTIONS,
    COL_SHARE,
    COL_SIZE,
    COL_TAGS,
    COL_TITLE,
    COL_TOP_GENRES,
    COL_TOP_TAGS,
    COL_USER,
    COL_USER_IDX,
)
from watchnext.models import kmeans_search

log = logging.getLogger(__name__)

UNCATEGORISED = "Uncategorised"
FANS_OF = "Fans of "  # a behavioural cluster's label: "Fans of A, B, C", its most popular members
NO_GENRES = "(no genres listed)"
# Extra ranked genres/tags kept per cluster to disambiguate labels that collide.
LABEL_SPARE = 5
# k-means fits per k (seeds seed .. seed + N_INIT - 1); the lowest training cost is kept.
N_INIT = 5
_PRED = "_cl_prediction"

ClusterModel = KMeansModel | BisectingKMeansModel


@dataclass(frozen=True)
class ClusterResult:
    """The chosen clustering of the items."""

    model: PipelineModel  # k-means + renumbering: col_cluster in 0..k-1 for non-zero feature vectors
    k: int  # clusters of the model; id k is the Uncategorised cluster when n_uncategorised > 0
    silhouette: dict[int, float]  # every k fitted -> its silhouette (cosine distance)
    assignments: DataFrame  # col_item, col_item_idx, cluster_id int
    n_uncategorised: int  # items with an all-zero vector, in cluster k
    searched_on: str = "spark"  # where the k search ran: "driver" (kmeans_search) | "spark"


def _estimator(params: ClustersConfig, k: int, seed: int, col_features: str) -> KMeans | BisectingKMeans:
    common: dict[str, Any] = {
        "k": k,
        "maxIter": params.max_iter,
        "seed": seed,
        "featuresCol": col_features,
        "predictionCol": _PRED,
        "distanceMeasure": "cosine",
    }
    return KMeans(**common) if params.algorithm == "kmeans" else BisectingKMeans(**common)


def _first_lowest(costs: list[float], rtol: float = 1e-9) -> int:
    """Index of the first cost within ``rtol`` of the lowest.

    Spark's distributed sums are not bit-reproducible (partial results merge in task completion
    order), and two starts often reach the same optimum with different cluster numbering: a strict
    minimum could pick either from run to run.
    """
    low = min(costs)
    return next(i for i, c in enumerate(costs) if c <= low + rtol * abs(low))


def _candidate_ks(params: ClustersConfig, n_distinct: int) -> list[int]:
    """The k values to fit: ``params.k`` or the configured range, each capped below ``n_distinct``.

    Raises ``ValueError`` when fewer than 3 distinct non-zero vectors exist (no k >= 2 is below).
    """
    if n_distinct < 3:
        raise ValueError(f"clustering needs at least 3 distinct non-zero feature vectors, got {n_distinct}")
    wanted = (
        [params.k] if params.k is not None else list(range(params.k_min, params.k_max + 1, params.k_step))
    )
    ks = sorted({min(k, n_distinct - 1) for k in wanted})
    if ks != sorted(set(wanted)):
        log.warning(
            "clusters: k capped below the %d distinct feature vectors: %s -> %s", n_distinct, wanted, ks
        )
    return ks


def _renumbering(
    model: ClusterModel, points: DataFrame, col_item_idx: str, col_cluster: str
) -> SQLTransformer:
    """A stage mapping the model's prediction (column ``_PRED``) to the canonical id in ``col_cluster``:
    clusters by size descending, ties by lowest item index (module docstring). One small aggregation."""
    stats = (
        model.transform(points)
        .groupBy(_PRED)
        .agg(F.count(F.lit(1)).alias("n"), F.min(col_item_idx).alias("first"))
        .collect()
    )
    order = sorted(stats, key=lambda r: (-r["n"], r["first"]))
    new_id = {int(r[_PRED]): i for i, r in enumerate(order)}
    # A centre that no point is closest to (possible after the last iteration) keeps the ids after them.
    for c in range(len(model.clusterCenters())):
        new_id.setdefault(c, len(new_id))
    ids = ", ".join(str(new_id[c]) for c in range(len(new_id)))
    new = f"CAST(element_at(array({ids}), CAST({_PRED} AS INT) + 1) AS INT)"
    return SQLTransformer(statement=f"SELECT *, {new} AS {col_cluster} FROM __THIS__")


def fit_clusters(
    features: DataFrame,
    params: ClustersConfig,
    *,
    col_item: str = COL_ITEM,
    col_item_idx: str = COL_ITEM_IDX,
    col_features: str = COL_FEATURES,
    col_cluster: str = COL_CLUSTER,
    n_init: int = N_INIT,
) -> ClusterResult:
    """Cluster the items' content vectors (module docstring); ``assignments`` covers every item.

    Runs one job to count zero and distinct non-zero vectors, then ``n_init`` fits and a silhouette
    per k on the non-zero vectors, persisted for the loop and unpersisted before returning
    (``assignments`` is lazy).
    """
    require_columns(features, [col_item, col_item_idx, col_features], "features")
    if n_init < 1:
        raise ValueError(f"n_init must be >= 1, got {n_init}")
    arr = vector_to_array(F.col(col_features))
    flagged = features.select(
        col_item,
        col_item_idx,
        col_features,
        F.exists(arr, lambda x: x != 0).alias("_nz"),
        F.xxhash64(arr).alias("_h"),
    )
    stats = flagged.agg(
        F.count(F.when(~F.col("_nz"), 1)).alias("zero"),
        F.count(F.when(F.col("_nz"), 1)).alias("nonzero"),
        F.countDistinct(F.when(F.col("_nz"), F.col("_h"))).alias("distinct"),  # 64-bit hash of the values
    ).head(1)[0]
    n_zero, n_distinct = int(stats["zero"]), int(stats["distinct"])
    ks = _candidate_ks(params, n_distinct)
    on_driver = params.algorithm == "kmeans" and len(ks) > 1 and stats["nonzero"] <= params.search_max_items

    # A fixed partitioning and order make k-means|| sampling depend only on the seed.
    n_parts = int(features.sparkSession.conf.get("spark.sql.shuffle.partitions") or "8")
    nonzero = (
        flagged.where("_nz")
        .select(col_item, col_item_idx, col_features)
        .repartition(n_parts, col_item_idx)
        .sortWithinPartitions(col_item_idx)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    evaluator = ClusteringEvaluator(
        featuresCol=col_features, predictionCol=_PRED, metricName="silhouette", distanceMeasure="cosine"
    )
    models: dict[int, ClusterModel] = {}
    silhouette: dict[int, float] = {}
    try:
        # Each k (its starts, then the silhouette of the lowest-cost one) is independent and deterministic
        # given the seeds: several run side by side (watchnext.concurrency), with the same outcome.
        lock, best_so_far = threading.Lock(), [float("-inf")]

        def found(k: int, starts: list[float], score: float) -> None:
            log.info(
                "clusters: %s k=%d cost %.4f (starts: %s) silhouette %.4f",
                params.algorithm, k, min(starts), ", ".join(f"{c:.4f}" for c in starts), score,
            )  # fmt: skip
            with lock:
                best_so_far[0] = max(best_so_far[0], score)
                done = len(silhouette) + 1
                silhouette[k] = score
                progress.trial_finished("clusters k", done, len(ks), score, best_so_far[0], "silhouette")

        def starts(k: int, workers: int) -> tuple[ClusterModel, list[float]]:
            """The lowest-cost of ``n_init`` Spark fits of ``k`` (``workers`` side by side) and all costs."""
            fit = lambda i: _estimator(params, k, params.seed + i, col_features).fit(nonzero)  # noqa: E731
            fits = map_ordered(fit, range(n_init), workers)
            costs = [m.summary.trainingCost for m in fits]
            return fits[_first_lowest(costs)], costs

        def search(k: int) -> ClusterModel:
            model, costs = starts(k, params.concurrent_fits if len(ks) == 1 else 1)
            found(k, costs, float(evaluator.evaluate(model.transform(nonzero))))
            return model

        if on_driver:
            x = _driver_matrix(nonzero, col_item_idx, col_features)
            searched = kmeans_search.search_k(
                x, ks, seed=params.seed, n_init=n_init, max_iter=params.max_iter,
                on_k=found,
            )  # fmt: skip
            best = max(ks, key=lambda k: (silhouette[k], -k))
            models[best] = _model_of_centres(
                nonzero.sparkSession, searched[best][0].centers, params, col_features
            )
        else:
            for k, model in zip(ks, map_ordered(search, ks, params.concurrent_fits), strict=True):
                models[k] = model
            best = max(ks, key=lambda k: (silhouette[k], -k))
        silhouette = {k: silhouette[k] for k in ks}  # in k order, not finishing order
        k_model = len(models[best].clusterCenters())  # bisecting k-means may leave fewer leaves than asked
        renumber = _renumbering(models[best], nonzero, col_item_idx, col_cluster)
    finally:
        nonzero.unpersist()
    log.info(
        "clusters: chose k=%d (%d clusters, silhouette %.4f); %d items without content -> cluster %d",
        best, k_model, silhouette[best], n_zero, k_model,
    )  # fmt: skip
    # The returned model writes col_cluster (int), so it can follow the content model in a pipeline.
    pipeline = PipelineModel(stages=[models[best], renumber])
    assigned = pipeline.transform(nonzero).select(col_item, col_item_idx, col_cluster)
    zero = flagged.where(~F.col("_nz")).select(
        col_item, col_item_idx, F.lit(k_model).cast("int").alias(col_cluster)
    )
    return ClusterResult(
        model=pipeline,
        k=k_model,
        silhouette=silhouette,
        assignments=assigned.unionByName(zero),
        n_uncategorised=n_zero,
        searched_on="driver" if on_driver else "spark",
    )


def _model_of_centres(
    spark: SparkSession, centres: np.ndarray, params: ClustersConfig, col_features: str
) -> KMeansModel:
    """A Spark ``KMeansModel`` (cosine) whose centres are ``centres``: Spark's k-means fitted on the k
    centres themselves with random initialisation, which samples all k of them (k of k points), so every
    point is its own cluster and its centre the point (a unit vector normalised again)."""
    rows = [(Vectors.dense(c),) for c in centres]
    points = spark.createDataFrame(rows, [col_features]).coalesce(1)
    est = _estimator(params, len(centres), params.seed, col_features)
    assert isinstance(est, KMeans)
    return est.setInitMode("random").fit(points)


def _driver_matrix(points: DataFrame, col_item_idx: str, col_features: str) -> sp.csr_matrix:
    """The points' feature vectors as a CSR matrix on the driver, rows in ``col_item_idx`` order."""
    rows = points.select(col_item_idx, col_features).orderBy(col_item_idx).collect()
    data, indices, indptr, dim = [], [], [0], 0
    for r in rows:
        v = r[col_features]
        dim = v.size
        if isinstance(v, SparseVector):
            idx, val = v.indices, v.values
        else:
            arr = v.toArray()
            idx = np.flatnonzero(arr)
            val = arr[idx]
        indices.append(idx)
        data.append(val)
        indptr.append(indptr[-1] + len(idx))
    return sp.csr_matrix(
        (np.concatenate(data), np.concatenate(indices), np.asarray(indptr)), shape=(len(rows), dim)
    )


# ------------------------------------------------------------------------------------------- labels
def _ranked_terms(
    clustered: DataFrame, terms: str, sizes: DataFrame, total: DataFrame, keep: int, col_cluster: str
) -> DataFrame:
    """``(col_cluster, terms: array<string>)``: the cluster's characteristic terms, best first."""
    n_ct = (
        clustered.select(col_cluster, F.explode(F.array_distinct(terms)).alias("_t"))
        .groupBy(col_cluster, "_t")
        .agg(F.count(F.lit(1)).alias("_n_ct"))
    )
    n_t = n_ct.groupBy("_t").agg(F.sum("_n_ct").alias("_n_t"))
    # lift > 1  <=>  n_ct / n_c > n_t / N  <=>  n_ct * N > n_t * n_c (exact in integers)
    stats = (
        n_ct.join(n_t, "_t")
        .join(sizes, col_cluster)
        .crossJoin(F.broadcast(total))
        .where(F.col("_n_ct") * F.col("_N") > F.col("_n_t") * F.col("_n_c"))
    )
    # Within a cluster support orders like n_ct, and among equal n_ct lift orders like -n_t.
    w = Window.partitionBy(col_cluster).orderBy(F.col("_n_ct").desc(), F.col("_n_t").asc(), F.col("_t").asc())
    ranked = stats.withColumn("_r", F.row_number().over(w)).where(F.col("_r") <= keep)
    return ranked.groupBy(col_cluster).agg(
        F.transform(F.sort_array(F.collect_list(F.struct("_r", "_t"))), lambda s: s["_t"]).alias(terms)
    )


def format_label(genres: list[str], tags: list[str]) -> str:
    """``"G1 & G2 · \"t1\", \"t2\""``; ``"Uncategorised"`` when both are empty."""
    parts = []
    if genres:
        parts.append(" & ".join(genres))
    if tags:
        parts.append(", ".join(f'"{t}"' for t in tags))
    return " · ".join(parts) or UNCATEGORISED


def format_members_label(titles: list[str]) -> str:
    """``"Fans of A, B, C"``; ``"Uncategorised"`` when there are none."""
    return f"{FANS_OF}{', '.join(titles)}" if titles else UNCATEGORISED


def unique_labels(
    rows: list[tuple[int, int, list[str], list[str]]],
    n_genres: int,
    n_tags: int,
    *,
    members: dict[int, list[str]] | None = None,
    n_members: int = 0,
) -> dict[int, tuple[str, list[str], list[str]]]:
    """``cluster -> (label, genres used, tags used)`` from ``(cluster, size, ranked genres, ranked tags)``.

    A cluster with no ranked genre and no ranked tag but ranked ``members`` (titles, most popular
    first) is named by its first ``n_members`` of them (:func:`format_members_label`). Every cluster in
    a group sharing a label takes its next genre, else its next tag, else its next member, until the
    labels differ or no member has terms left; then the largest (ties: lowest id) keeps the label and
    the others get ``" #2"``, ``" #3"``, ... in that order.
    """
    members = members or {}
    ranked = {c: (g, t, [] if g or t else members.get(c, [])) for c, _, g, t in rows}
    used = {
        c: [min(n_genres, len(g)), min(n_tags, len(t)), min(n_members, len(m))]
        for c, (g, t, m) in ranked.items()
    }

    def label(c: int) -> str:
        g, t, m = ranked[c]
        if m:
            return format_members_label(m[: used[c][2]])
        return format_label(g[: used[c][0]], t[: used[c][1]])

    while True:
        groups: dict[str, list[int]] = defaultdict(list)
        for c in used:
            groups[label(c)].append(c)
        grew = False
        for group in groups.values():
            if len(group) < 2:
                continue
            for c in group:
                for i, terms in enumerate(ranked[c]):
                    if used[c][i] < len(terms):
                        used[c][i] += 1
                        grew = True
                        break
        if not grew:
            break

    size = {c: s for c, s, _, _ in rows}
    out: dict[int, str] = {}
    taken: set[str] = set()
    for c in sorted(used, key=lambda c: (-size[c], c)):
        base = label(c)
        name, i = base, 1
        while name in taken:
            i += 1
            name = f"{base} #{i}"
        taken.add(name)
        out[c] = name
    return {c: (out[c], ranked[c][0][: used[c][0]], ranked[c][1][: used[c][1]]) for c in used}


def _labels_schema(col_cluster: str) -> T.StructType:
    return T.StructType(
        [
            T.StructField(col_cluster, T.IntegerType(), False),
            T.StructField(COL_LABEL, T.StringType(), False),
            T.StructField(COL_SIZE, T.LongType(), False),
            T.StructField(COL_TOP_GENRES, T.ArrayType(T.StringType(), False), False),
            T.StructField(COL_TOP_TAGS, T.ArrayType(T.StringType(), False), False),
        ]
    )


def _ranked_members(
    assignments: DataFrame,
    items: DataFrame,
    interactions: DataFrame,
    keep: int,
    *,
    col_item: str,
    col_item_idx: str,
    col_cluster: str,
    col_user: str,
    col_title: str,
) -> DataFrame:
    """``(col_cluster, _members: array<string>)``: the titles (else the item id) of each cluster's
    ``keep`` members with the most distinct users in ``interactions``, ties by lower ``col_item_idx``;
    members nobody interacted with are left out."""
    users = (
        interactions.select(col_user, col_item)
        .groupBy(col_item)
        .agg(F.countDistinct(col_user).alias("_users"))
    )
    title = F.coalesce(F.nullif(F.trim(F.col(col_title)), F.lit("")), F.col(col_item).cast("string"))
    w = Window.partitionBy(col_cluster).orderBy(F.col("_users").desc(), F.col(col_item_idx).asc())
    return (
        assignments.select(col_item, col_item_idx, col_cluster)
        .join(users, col_item)
        .join(items.select(col_item, col_title), col_item, "left")
        .select(col_cluster, title.alias("_title"), F.row_number().over(w).alias("_r"))
        .where(F.col("_r") <= keep)
        .groupBy(col_cluster)
        .agg(
            F.transform(F.sort_array(F.collect_list(F.struct("_r", "_title"))), lambda s: s["_title"]).alias(
                "_members"
            )
        )
    )


def label_clusters(
    assignments: DataFrame,
    items: DataFrame,
    *,
    n_genres: int,
    n_tags: int,
    interactions: DataFrame | None = None,
    n_members: int = 3,
    col_item: str = COL_ITEM,
    col_item_idx: str = COL_ITEM_IDX,
    col_cluster: str = COL_CLUSTER,
    col_genres: str = COL_GENRES,
    col_tags: str = COL_TAGS,
    col_title: str = COL_TITLE,
    col_user: str = COL_USER,
) -> DataFrame:
    """``(cluster_id int, label, size long, top_genres, top_tags)``, one row per assigned cluster.

    The rule is in the module docstring; ``top_genres``/``top_tags`` are the terms the label names.
    ``N`` and the cluster sizes count the assigned items (an item missing from ``items`` counts as one
    without genres or tags). The statistics are computed in Spark; only one row per cluster (with
    its ``n + LABEL_SPARE`` best terms) reaches the driver, which makes the labels unique.

    With ``interactions`` (``col_user``, ``col_item``), a cluster without a characteristic genre or
    tag is named by its ``n_members`` most popular members instead of ``"Uncategorised"``: ``"Fans
    of A, B, C"`` (titles from ``items``; ``assignments`` then needs ``col_item_idx``, ``items``
    ``col_title``). Without it, the labels are those of the genre/tag rule alone.
    """
    require_columns(assignments, [col_item, col_cluster], "assignments")
    require_columns(items, [col_item, col_genres, col_tags], "items")
    if n_genres < 0 or n_tags < 0 or n_genres + n_tags == 0:
        raise ValueError(
            f"label_clusters needs n_genres, n_tags >= 0 and not both 0, got {n_genres}, {n_tags}"
        )
    if interactions is not None:
        require_columns(assignments, [col_item_idx], "assignments")
        require_columns(items, [col_title], "items")
        require_columns(interactions, [col_user, col_item], "interactions")
        if n_members < 1:
            raise ValueError(f"label_clusters needs n_members >= 1, got {n_members}")
    empty = F.array().cast("array<string>")
    genres = F.filter(
        F.transform(F.coalesce(F.col(col_genres), empty), lambda x: F.trim(x)),
        lambda x: x.isNotNull() & (x != "") & (F.lower(x) != NO_GENRES),
    )
    tags = F.filter(
        F.transform(F.coalesce(F.col(col_tags), empty), lambda x: F.lower(F.trim(x))),
        lambda x: x.isNotNull() & (x != ""),
    )
    # Read three times below (sizes, genre and tag statistics): persisted until the k rows are out.
    clustered = (
        assignments.select(col_item, col_cluster)
        .join(items.select(col_item, genres.alias("_genres"), tags.alias("_tags")), col_item, "left")
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    sizes = clustered.groupBy(col_cluster).agg(F.count(F.lit(1)).alias("_n_c"))
    total = sizes.agg(F.sum("_n_c").alias("_N"))
    top_g = _ranked_terms(clustered, "_genres", sizes, total, n_genres + LABEL_SPARE, col_cluster)
    top_t = _ranked_terms(clustered, "_tags", sizes, total, n_tags + LABEL_SPARE, col_cluster)
    stats = sizes.join(top_g, col_cluster, "left").join(top_t, col_cluster, "left")
    if interactions is not None:
        top_m = _ranked_members(
            assignments, items, interactions, n_members + LABEL_SPARE,
            col_item=col_item, col_item_idx=col_item_idx, col_cluster=col_cluster, col_user=col_user,
            col_title=col_title,
        )  # fmt: skip
        stats = stats.join(top_m, col_cluster, "left")
    else:
        stats = stats.withColumn("_members", F.lit(None).cast("array<string>"))
    try:
        rows = stats.collect()  # k rows
    finally:
        clustered.unpersist()
    ranked = [
        (int(r[col_cluster]), int(r["_n_c"]), list(r["_genres"] or []), list(r["_tags"] or [])) for r in rows
    ]
    members = {int(r[col_cluster]): list(r["_members"] or []) for r in rows}
    labels = unique_labels(ranked, n_genres, n_tags, members=members, n_members=n_members)
    out = []
    for c, n, _, _ in sorted(ranked):
        label, top_genres, top_tags = labels[c]
        out.append((c, label, n, top_genres, top_tags))
    log.info("cluster labels: %s", "; ".join(f"{c}: {lab}" for c, lab, *_ in out))
    return assignments.sparkSession.createDataFrame(out, _labels_schema(col_cluster))


# ----------------------------------------------------------------------------------------- affinity
def user_cluster_affinity(
    interactions: DataFrame,
    assignments: DataFrame,
    *,
    smoothing: float,
    col_user: str = COL_USER,
    col_user_idx: str = COL_USER_IDX,
    col_item: str = COL_ITEM,
    col_cluster: str = COL_CLUSTER,
) -> DataFrame:
    """``(col_user, col_user_idx, cluster_id, n_interactions long, share double)``, dense over clusters.

    ``share`` is the smoothed share of the module docstring (``smoothing`` = m >= 0). Every cluster
    id present in ``assignments`` gets a row for every user in ``interactions``. Raises ``ValueError``
    (one Spark job to check) when interactions fall on items without a cluster assignment.
    """
    require_columns(interactions, [col_user, col_user_idx, col_item], "interactions")
    require_columns(assignments, [col_item, col_cluster], "assignments")
    if smoothing < 0:
        raise ValueError(f"smoothing must be >= 0, got {smoothing}")
    clusters_of = assignments.select(col_item, col_cluster)
    orphans = interactions.select(col_item).join(clusters_of, col_item, "left_anti")
    n_orphans = orphans.count()
    if n_orphans:
        examples = sorted({str(r[0]) for r in orphans.limit(5).collect()})
        raise ValueError(
            f"{n_orphans} interactions are on items without a cluster assignment "
            f"(e.g. {col_item} {', '.join(examples)}); cluster every interacted item first"
        )

    counts = (
        interactions.select(col_user, col_user_idx, col_item)
        .join(clusters_of, col_item)
        .groupBy(col_user, col_user_idx, col_cluster)
        .agg(F.count(F.lit(1)).alias("_n_uc"))
    )
    per_cluster = counts.groupBy(col_cluster).agg(F.sum("_n_uc").alias("_n_c"))
    grand = per_cluster.agg(F.sum("_n_c").alias("_n"))
    clusters = (
        assignments.select(F.col(col_cluster).cast("int").alias(col_cluster))
        .distinct()
        .join(per_cluster, col_cluster, "left")
        .crossJoin(grand)
        .select(col_cluster, (F.coalesce(F.col("_n_c"), F.lit(0)) / F.col("_n")).alias("_p_c"))
    )
    users = counts.groupBy(col_user, col_user_idx).agg(F.sum("_n_uc").alias("_n_u"))
    m = float(smoothing)
    n_uc = F.coalesce(F.col("_n_uc"), F.lit(0)).cast("long")
    return (
        users.crossJoin(F.broadcast(clusters))
        .join(counts, [col_user, col_user_idx, col_cluster], "left")
        .select(
            col_user,
            col_user_idx,
            F.col(col_cluster).cast("int").alias(col_cluster),
            n_uc.alias(COL_N_INTERACTIONS),
            ((n_uc + F.lit(m) * F.col("_p_c")) / (F.col("_n_u") + F.lit(m))).cast("double").alias(COL_SHARE),
        )
    )
