"""Batch top-K from latent factors, with the user's seen items excluded inside the scoring.

``score(u, i) = p_u . q_i``. The item factors are collected to the driver once and broadcast as one
dense ``(n_items, d)`` matrix: items are few compared with users, and this is the one place the
project pulls an item-sized table to the driver on purpose. Users stay in Spark: their factors, joined
with their seen-item lists (``groupBy(user).agg(collect_list(item))``), stream through
``mapInPandas``; each block of ``block_size`` users is scored with a single BLAS matmul
``(B, d) x (d, n_items)``, seen items are set to ``-inf``, and the top K come out of
``np.argpartition`` followed by a sort of the K. No user x item frame ever exists in Spark.

Order within a user's list: score descending, ties broken by the smaller item id, exactly (ties at
the K-th place are resolved against every item with that score, not just the ones argpartition
happened to pick). Items whose score is ``-inf`` (seen ones) are never returned, so a user with fewer
than K unseen items gets a shorter list.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext.checks import require_columns
from watchnext.constants import COL_FEATURES, COL_ITEM_IDX, COL_RANK, COL_SCORE, COL_USER_IDX

log = logging.getLogger(__name__)

_SEEN = "_seen"
# Default block: as many users as keep one block's score matrix near 2^25 cells (128 MiB in float32).
_BLOCK_CELLS = 1 << 25
_MAX_BLOCK = 8192
_TIED_CHUNK = 256  # rows re-sorted at once when the K-th score is tied


def top_positions(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores`` (B, n): the column positions of the top ``min(k, n)`` and their scores.

    Rows are ordered by score descending, ties by the smaller position; ``-inf`` entries are kept
    (callers drop them). Uses ``argpartition`` (O(n) per row); only rows whose K-th value is tied with
    a column outside the partition fall back to a stable full sort of the row.
    """
    b, n = scores.shape
    kk = min(k, n)
    if b == 0 or kk == 0:
        return np.zeros((b, 0), dtype=np.int64), np.zeros((b, 0), dtype=scores.dtype)
    if kk < n:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
        vals = np.take_along_axis(scores, part, axis=1)
        kth = vals.min(axis=1)
        # More than kk columns reach the K-th value: a tie at the boundary, so the smaller positions
        # among the tied columns must win, which argpartition does not promise.
        tied = np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > kk)
        for start in range(0, len(tied), _TIED_CHUNK):
            rows = tied[start : start + _TIED_CHUNK]
            # A stable sort keeps equal scores in position order: exact, O(n log n) for these rows only.
            best = np.argsort(-scores[rows], axis=1, kind="stable")[:, :kk]
            part[rows] = best
            vals[rows] = np.take_along_axis(scores[rows], best, axis=1)
    else:
        part = np.broadcast_to(np.arange(n), (b, n)).copy()
        vals = scores.copy()
    order = np.lexsort((part, -vals), axis=1)
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(vals, order, axis=1)


def _block_for(n_items: int, block_size: int | None) -> int:
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        return block_size
    return max(1, min(_MAX_BLOCK, _BLOCK_CELLS // max(1, n_items)))


def topk_from_factors(
    user_factors: DataFrame,
    item_factors: DataFrame,
    k: int,
    seen: DataFrame | None = None,
    *,
    block_size: int | None = None,
    dtype: str = "float32",
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_features: str = COL_FEATURES,
    col_score: str = COL_SCORE,
    col_rank: str = COL_RANK,
) -> DataFrame:
    """Top ``k`` items per user by ``p_u . q_i``, excluding each user's ``seen`` items.

    ``user_factors``: ``(col_user, col_features: array<float|double>)``, one row per user;
    ``item_factors``: ``(col_item, col_features)``, one row per item, same length ``d``;
    ``seen``: optional ``(col_user, col_item)`` pairs to exclude (items without factors are ignored).
    Returns ``(col_user, col_item, col_score: double, col_rank: int 1..k)``, ordered as in the module
    docstring. Scores are computed in ``dtype`` (``float32`` like Spark's factors; ``float64`` where
    the scores need more than 24 bits). ``block_size`` users are scored per matmul; by default as many
    as keep a block's ``(B, n_items)`` score matrix near 2^25 cells.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    require_columns(user_factors, [col_user, col_features], "user_factors")
    require_columns(item_factors, [col_item, col_features], "item_factors")
    if seen is not None:
        require_columns(seen, [col_user, col_item], "seen")
    np_dtype = np.dtype(dtype)
    spark = user_factors.sparkSession
    out_schema = T.StructType(
        [
            T.StructField(col_user, user_factors.schema[col_user].dataType, False),
            T.StructField(col_item, item_factors.schema[col_item].dataType, False),
            T.StructField(col_score, T.DoubleType(), False),
            T.StructField(col_rank, T.IntegerType(), False),
        ]
    )

    # The documented exception to "never collect item-sized data": the broadcast item matrix.
    items = item_factors.select(col_item, col_features).toPandas()
    if items[col_item].duplicated().any():
        raise ValueError(f"item_factors has duplicate '{col_item}' values")
    items = items.sort_values(col_item, kind="stable").reset_index(drop=True)
    ids = items[col_item].to_numpy()
    if len(items):
        matrix = np.ascontiguousarray(np.stack(items[col_features].to_numpy()).astype(np_dtype).T)
    else:
        matrix = np.zeros((0, 0), dtype=np_dtype)
    block = _block_for(len(ids), block_size)
    log.info(
        "top-%d from factors: %d items x %d dims broadcast, %d users per block", k, *matrix.T.shape, block
    )
    bc = spark.sparkContext.broadcast((ids, matrix))

    users = user_factors.select(col_user, col_features)
    if seen is not None:
        lists = seen.select(col_user, col_item).groupBy(col_user).agg(F.collect_list(col_item).alias(_SEEN))
        users = users.join(lists, col_user, "left")
    else:
        users = users.withColumn(_SEEN, F.lit(None).cast(T.ArrayType(item_factors.schema[col_item].dataType)))

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        item_ids, q_t = bc.value
        n_items = len(item_ids)
        for pdf in batches:
            for start in range(0, len(pdf), block):
                chunk = pdf.iloc[start : start + block]
                if n_items == 0 or chunk.empty:
                    continue
                p = np.stack(chunk[col_features].to_numpy()).astype(np_dtype, copy=False)
                if p.shape[1] != q_t.shape[0]:
                    raise ValueError(f"user factors have {p.shape[1]} dims, item factors {q_t.shape[0]}")
                scores = p @ q_t
                lists = chunk[_SEEN].to_numpy()
                lens = np.fromiter(
                    (0 if s is None else len(s) for s in lists), dtype=np.int64, count=len(lists)
                )
                if lens.sum():
                    flat = np.concatenate([s for s in lists if s is not None and len(s)])
                    rows = np.repeat(np.arange(len(lists)), lens)
                    pos = np.minimum(np.searchsorted(item_ids, flat), n_items - 1)
                    hit = item_ids[pos] == flat
                    scores[rows[hit], pos[hit]] = -np.inf
                top, vals = top_positions(scores, k)
                keep = vals > -np.inf  # seen items (and NaN) never come back
                ranks = np.broadcast_to(np.arange(1, top.shape[1] + 1, dtype=np.int32), top.shape)
                user_ids = np.broadcast_to(chunk[col_user].to_numpy()[:, None], top.shape)
                yield pd.DataFrame(
                    {
                        col_user: user_ids[keep],
                        col_item: item_ids[top[keep]],
                        col_score: vals[keep].astype(np.float64),
                        col_rank: ranks[keep],
                    }
                )

    return users.mapInPandas(score, out_schema)


def topk_from_item_scores(
    item_scores: DataFrame,
    users: DataFrame,
    k: int,
    seen: DataFrame | None = None,
    *,
    block_size: int | None = None,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_score: str = COL_SCORE,
    col_rank: str = COL_RANK,
) -> DataFrame:
    """Top ``k`` of one global item ranking for every distinct user of ``users``, seen items excluded.

    ``item_scores``: ``(col_item, col_score)``, one row per item (e.g. popularity). Runs through
    :func:`topk_from_factors` with 1-dim factors (``q_i = [score_i]``, ``p_u = [1]``) in float64, so
    the scores come back unchanged; ties go to the smaller item.
    """
    require_columns(item_scores, [col_item, col_score], "item_scores")
    require_columns(users, [col_user], "users")
    feats = "_f"
    item_f = item_scores.select(col_item, F.array(F.col(col_score).cast("double")).alias(feats))
    user_f = users.select(col_user).distinct().withColumn(feats, F.array(F.lit(1.0)))
    return topk_from_factors(
        user_f,
        item_f,
        k,
        seen,
        block_size=block_size,
        dtype="float64",
        col_user=col_user,
        col_item=col_item,
        col_features=feats,
        col_score=col_score,
        col_rank=col_rank,
    )
