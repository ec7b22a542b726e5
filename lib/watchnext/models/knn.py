"""kNN candidate scoring: a user's weighted keys (seen items, or neighbour users) times a key x item
matrix (item neighbours, or the users' items), top K unseen items per user."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext.checks import require_columns
from watchnext.constants import (
    COL_ITEM_IDX,
    COL_NEIGHBOR_IDX,
    COL_RANK,
    COL_SCORE,
    COL_TIMESTAMP,
    COL_USER_IDX,
)
from watchnext.kernels import arrow_int_type, flat_lists, list_len, lookup_sorted, ranked_schema

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ candidate scoring
# kNN scoring is a sparse product: a user's weighted keys (seen items, or neighbour users) times a key x
# item matrix (item neighbours, or the users' items). A join of the two would shuffle one row per
# (user, key, item) vote: 250M rows at 5M interactions (125k users x 50 neighbours x 40 items), 7 min
# there. Instead the matrix is broadcast as CSR and each task multiplies a batch of users' key lists
# with scipy, drops excluded items by a sparse mask, and keeps each user's top K: a partition finds each
# row's K-th score, and only the entries at or above it are sorted (at 20M interactions a batch of
# 10,000 users holds 12M scored entries, of which 1.1M survive the floors).
_KEY, _WEIGHT, _ITEM, _VALUE, _EXCLUDED = "_key", "_w", "_item", "_value", "_excluded"


def _csr(keys: np.ndarray, items: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, ...]:
    """Triples -> ``(key ids, indptr, column of each entry, values, item ids)``: a CSR matrix of
    ``len(key ids)`` rows (sorted keys) by ``len(item ids)`` columns (sorted items)."""
    order = np.lexsort((items, keys))
    keys, items, values = keys[order], items[order], values[order]
    if ((keys[1:] == keys[:-1]) & (items[1:] == items[:-1])).any():
        raise ValueError("the kNN matrix has duplicate (key, item) entries")
    key_ids, starts = np.unique(keys, return_index=True)
    item_ids = np.unique(items)
    indptr = np.append(starts, len(keys)).astype(np.int64)
    return key_ids, indptr, np.searchsorted(item_ids, items).astype(np.int32), values, item_ids


def _vote_topk(
    weights: DataFrame,
    matrix: DataFrame,
    k: int,
    *,
    col_user: str,
    col_item: str,
    exclude: Literal["keys", "own_row"] | DataFrame,
    normalize: bool,
    col_anchor: str | None = None,
) -> DataFrame:
    """``score(u, i) = sum_j w(u, j) M(j, i)`` for every user of ``weights`` ``(col_user, _key,
    _w)``, with ``M`` from ``matrix`` ``(_key, col_item, _value)``. Excluded: the user's keys
    (``"keys"``: the keys are items; a key of weight 0 is excluded without voting) or the user's own
    row of ``M`` (``"own_row"``: the keys are users) or the user's items in a ``(col_user, col_item)``
    frame (users missing from ``weights`` are ignored). ``normalize`` divides by ``sum_j |w(u, j)|``.
    Top ``k`` per user by score, ties to the smaller item, nonzero scores only. Sums run in float64 in
    key order: a re-run gives the same bits. ``col_anchor`` adds the key whose vote ``w(u, j) M(j, i)``
    is the largest (ties: the smaller key)."""
    user_type = weights.schema[col_user].dataType
    item_type = matrix.schema[col_item].dataType
    # The second documented driver collect (after top-K's item factors): the matrix, once. The user-kNN
    # one holds every (user, item) pair, 4 bytes an entry in the workers: 80 MB at 20M interactions.
    tbl = matrix.select(
        F.col(_KEY).cast("long"), F.col(col_item).cast("long"), F.col(_VALUE).cast("double")
    ).toArrow()
    key_ids, indptr, cols, values, item_ids = _csr(*(c.to_numpy() for c in tbl.columns))
    log.info("kNN scoring: %d x %d matrix, %d entries, broadcast", len(key_ids), len(item_ids), len(cols))
    bc = weights.sparkSession.sparkContext.broadcast((key_ids, indptr, cols, values, item_ids))
    fields, np_types = ranked_schema(user_type, item_type, col_user, col_item)
    out = T.StructType(
        fields + ([T.StructField(col_anchor, matrix.schema[_KEY].dataType, False)] if col_anchor else [])
    )
    if col_anchor:
        np_types[col_anchor] = arrow_int_type(matrix.schema[_KEY].dataType, _KEY).to_pandas_dtype()

    mode = "list" if isinstance(exclude, DataFrame) else exclude

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        from scipy import sparse

        kid, ptr, mcols, mvals, iid = bc.value
        m = sparse.csr_matrix((mvals, mcols, ptr), shape=(len(kid), len(iid)))
        n_cols = max(len(iid), 1)
        for pdf in batches:
            if pdf.empty:
                continue
            b = len(pdf)
            lens = pdf[_KEY].map(len).to_numpy()
            rows = np.repeat(np.arange(b), lens)
            keys, w = flat_lists(pdf[_KEY], np.int64), flat_lists(pdf[_WEIGHT], np.float64)
            pos, hit = lookup_sorted(kid, keys)
            hit &= w != 0
            votes = sparse.csr_matrix((w[hit], (rows[hit], pos[hit])), shape=(b, len(kid))) @ m
            if mode != "own_row":  # the keys or the listed items
                ex_rows, ex_items = rows, keys
                if mode == "list":
                    ex_rows = np.repeat(np.arange(b), pdf[_EXCLUDED].map(list_len).to_numpy())
                    ex_items = flat_lists(pdf[_EXCLUDED], np.int64)
                ex_c, ok = lookup_sorted(iid, ex_items)
                excluded = sparse.csr_matrix((np.ones(ok.sum()), (ex_rows[ok], ex_c[ok])), shape=votes.shape)
            else:
                upos, ok = lookup_sorted(kid, pdf[col_user].to_numpy(np.int64))
                own = m[upos[ok]].tocoo()  # each user's own row of M
                excluded = sparse.csr_matrix(
                    (np.ones(own.nnz), (np.flatnonzero(ok)[own.row], own.col)), shape=votes.shape
                )
            excluded.data[:] = 1.0  # duplicates were summed
            votes = (votes - votes.multiply(excluded)).tocsr()  # linear in the entries, unlike a sort
            votes.eliminate_zeros()
            counts = np.diff(votes.indptr)
            r = np.repeat(np.arange(b, dtype=np.int64), counts)
            c, v = votes.indices.astype(np.int64), votes.data
            if normalize:
                v = v / np.bincount(rows, weights=np.abs(w), minlength=b)[r]
            # Each row's k-th largest score by a partition, so only its top k (and ties) are sorted.
            floor = np.full(b, -np.inf)
            for i in np.flatnonzero(counts > k):
                row = v[votes.indptr[i] : votes.indptr[i + 1]]
                floor[i] = np.partition(row, len(row) - k)[len(row) - k]
            keep = v >= floor[r]
            r, c, v = r[keep], c[keep], v[keep]
            order = np.lexsort((c, -v, r))  # columns are sorted item ids: ties to the smaller item
            r, c, v = r[order], c[order], v[order]
            rank = np.arange(len(r)) - np.searchsorted(r, r) + 1
            top = rank <= k
            frame = pd.DataFrame(
                {
                    col_user: pdf[col_user].to_numpy()[r[top]],
                    col_item: iid[c[top]],
                    COL_SCORE: v[top],
                    COL_RANK: rank[top].astype(np.int32),
                }
            )
            if col_anchor:
                cells = r[top] * n_cols + c[top]
                voters = rows[hit], keys[hit], w[hit], pos[hit]
                frame[col_anchor] = _anchors(cells, (b, n_cols), *voters, ptr, mcols, mvals)
            yield frame.astype(np_types)

    pairs = F.struct(F.col(_KEY).cast("long").alias("k"), F.col(_WEIGHT).cast("double").alias("w"))
    grouped = weights.groupBy(col_user).agg(F.array_sort(F.collect_list(pairs)).alias("_kw"))
    lists = grouped.select(col_user, F.col("_kw.k").alias(_KEY), F.col("_kw.w").alias(_WEIGHT))
    if isinstance(exclude, DataFrame):
        ex = exclude.groupBy(col_user).agg(F.collect_list(F.col(col_item).cast("long")).alias(_EXCLUDED))
        lists = lists.join(ex, col_user, "left")
    return lists.mapInPandas(score, out)


def _anchors(
    cells: np.ndarray,
    shape: tuple[int, int],
    rows: np.ndarray,
    keys: np.ndarray,
    w: np.ndarray,
    pos: np.ndarray,
    ptr: np.ndarray,
    mcols: np.ndarray,
    mvals: np.ndarray,
) -> np.ndarray:
    """For each ``cell`` (``row * n_cols + column`` of the ``(n_rows, n_cols)`` scores), the key with the
    largest vote ``w M(key, column)``, ties to the smaller key. ``rows, keys, w, pos``: the voting
    keys (``pos``: their rows of ``M``). Linear in the votes: no sort."""
    from scipy import sparse

    lens = ptr[pos + 1] - ptr[pos]
    entry = np.repeat(ptr[pos] - np.cumsum(lens) + lens, lens) + np.arange(lens.sum())
    # each vote's cell, numbered 0.. in the order of ``cells``; -1: a cell outside the top K
    top_r, top_c = np.divmod(cells, shape[1])
    number = sparse.csr_matrix((np.arange(1, len(cells) + 1), (top_r, top_c)), shape=shape)
    cell = np.asarray(number[np.repeat(rows, lens), mcols[entry]]).ravel() - 1
    kept = cell >= 0
    cell, key, vote = cell[kept], np.repeat(keys, lens)[kept], (np.repeat(w, lens) * mvals[entry])[kept]
    best = np.full(len(cells), -np.inf)
    np.maximum.at(best, cell, vote)
    top = vote == best[cell]
    anchor = np.full(len(cells), np.iinfo(np.int64).max)
    np.minimum.at(anchor, cell[top], key[top])
    return anchor


def weighted_scores(
    weights: DataFrame,
    matrix: DataFrame,
    exclude: DataFrame,
    k: int,
    *,
    col_key: str,
    col_weight: str,
    col_value: str,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
) -> DataFrame:
    """``score(u, i) = sum_j w(u, j) M(j, i)``, the user's ``exclude`` items left out, top ``k`` per
    user by score (ties: the smaller item), nonzero scores only: ``(col_user, col_item, score, rank)``.
    ``weights``: ``(col_user, col_key, col_weight)``; ``matrix``: ``(col_key, col_item, col_value)``,
    broadcast (it must fit the driver and each worker); ``exclude``: ``(col_user, col_item)``."""
    require_columns(weights, [col_user, col_key, col_weight], "weights")
    require_columns(matrix, [col_key, col_item, col_value], "matrix")
    require_columns(exclude, [col_user, col_item], "exclude")
    return _vote_topk(
        weights.select(col_user, F.col(col_key).alias(_KEY), F.col(col_weight).alias(_WEIGHT)),
        matrix.select(F.col(col_key).alias(_KEY), col_item, F.col(col_value).alias(_VALUE)),
        k,
        col_user=col_user,
        col_item=col_item,
        exclude=exclude,
        normalize=False,
    )


def item_based_scores(
    neighbors: DataFrame,
    seen: DataFrame,
    k: int,
    *,
    recent: int | None = None,
    col_anchor: str | None = None,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_neighbor: str = COL_NEIGHBOR_IDX,
) -> DataFrame:
    """Item-kNN recommendations: ``score(u, i) = sum of sim(j, i) over the user's anchors j`` that
    have ``i`` among their neighbours; every seen item excluded; top ``k`` per user, ties to the smaller
    item. The anchors are the seen items, or with ``recent`` the latest ``recent`` by ``timestamp``
    (ties: the larger item). ``col_anchor`` adds the anchor of the largest ``sim(j, i)`` (ties: the
    smaller id). ``neighbors``: ``(col_item, col_neighbor, score)``; ``seen``: ``(col_user, col_item[,
    timestamp])``."""
    require_columns(neighbors, [col_item, col_neighbor, COL_SCORE], "neighbors")
    require_columns(seen, [col_user, col_item], "seen")
    if recent is None:
        pairs = seen.select(col_user, F.col(col_item).alias(_KEY)).distinct().withColumn(_WEIGHT, F.lit(1.0))
    else:  # older items keep weight 0: excluded, but they do not vote
        require_columns(seen, [COL_TIMESTAMP], "seen")
        latest = seen.groupBy(col_user, F.col(col_item).alias(_KEY)).agg(F.max(COL_TIMESTAMP).alias("_t"))
        order = Window.partitionBy(col_user).orderBy(F.col("_t").desc(), F.col(_KEY).desc())
        pairs = latest.select(
            col_user, _KEY, F.when(F.row_number().over(order) <= recent, 1.0).otherwise(0.0).alias(_WEIGHT)
        )
    matrix = neighbors.select(
        F.col(col_item).alias(_KEY), F.col(col_neighbor).alias(_ITEM), F.col(COL_SCORE).alias(_VALUE)
    )
    return _vote_topk(
        pairs,
        matrix,
        k,
        col_user=col_user,
        col_item=_ITEM,
        exclude="keys",
        normalize=False,
        col_anchor=col_anchor,
    ).withColumnRenamed(_ITEM, col_item)


def user_based_scores(
    user_neighbors: DataFrame,
    interactions: DataFrame,
    k: int,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_neighbor: str = COL_NEIGHBOR_IDX,
) -> DataFrame:
    """User-kNN recommendations: ``score(u, i) = sum of sim(u, v) over neighbours v who saw i``,
    divided by ``sum |sim(u, v)|`` (so scores are comparable across users); the user's own items
    excluded; top ``k`` per user, ties to the smaller item."""
    require_columns(user_neighbors, [col_user, col_neighbor, COL_SCORE], "user_neighbors")
    require_columns(interactions, [col_user, col_item], "interactions")
    weights = user_neighbors.select(
        col_user, F.col(col_neighbor).alias(_KEY), F.col(COL_SCORE).alias(_WEIGHT)
    )
    matrix = (
        interactions.select(F.col(col_user).alias(_KEY), col_item).distinct().withColumn(_VALUE, F.lit(1.0))
    )
    return _vote_topk(
        weights, matrix, k, col_user=col_user, col_item=col_item, exclude="own_row", normalize=True
    )
