"""Batch top-K from latent factors, with the user's seen items excluded inside the scoring.

``score(u, i) = p_u . q_i``. The item factors are collected to the driver once (as Arrow) and
broadcast as one dense ``(d, n_items)`` matrix, sorted by item id: items are few compared with users,
and this is one of the two places the project collects a model to the driver on purpose (the other:
the kNN scorers' neighbour / interaction matrix, ``models/knn.py``). Users stay in
Spark: their factors, joined with their seen-item lists (``groupBy(user).agg(collect_list(item))``;
no join at all when there is nothing to exclude), stream through ``mapInArrow``. Each Arrow batch is
read without per-row Python objects: the factor matrix is the list column's flat values reshaped, and
the seen ``(row, item position)`` pairs come from the list lengths. Every block of ``block_size``
users is scored with one BLAS GEMM ``(B, d) x (d, n_items)`` into a score buffer allocated once per
task (and reused: no fresh pages per block), seen items are set to ``-inf``,
and :func:`top_positions` picks the K. No user x item frame ever exists in Spark.

Selection (:func:`top_positions`) is exact and reads each score about three times, with no sort of
the row: the columns are split into ``C = 4K`` interleaved chunks, and the K-th largest chunk maximum
``t`` is a lower bound of the row's K-th score (K distinct cells reach it). So the cells ``>= t`` (one
compare and one ``flatnonzero`` over the block; ~1.15 K of them per row) hold the top K and every
cell tied with the K-th; packed per row in column order, one stable sort of those few ranks them by
(score desc, item asc). Rows without K finite scores, with a NaN, or with a flood of ties at ``t``
are redone on their full row (``argpartition``, and a stable sort where the K-th score is tied).

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
import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext.checks import require_columns
from watchnext.constants import COL_FEATURES, COL_ITEM_IDX, COL_RANK, COL_SCORE, COL_USER_IDX
from watchnext.kernels import arrow_int_type, flat_lists, list_len, lookup_sorted, ranked_schema

log = logging.getLogger(__name__)

_SEEN = "_seen"
# Default block: as many users as keep one block's score matrix near 2^23 cells (32 MiB in float32).
# Measured on 15k items x rank 64: ~500-1000 users per GEMM run at full BLAS speed and amortise the
# selection's per-call costs; smaller blocks lose both, larger ones fall out of the last-level cache.
_BLOCK_CELLS = 1 << 23
_MAX_BLOCK = 8192
_TIED_CHUNK = 256  # rows re-sorted at once when the K-th score is tied
# The threshold prefilter pays off once a row is much longer than K (below, one argpartition is as fast).
_THRESHOLD_MIN_RATIO = 8
_THRESHOLD_MIN_COLS = 256
_CHUNKS_PER_K = 4
_MAX_CANDIDATES = 8  # per K: rows with more cells at or above their threshold are redone on the full row
# A dense id -> position table for the seen lists when the item ids span at most this many times n_items.
_DENSE_LOOKUP_SPAN = 8


def top_by_partition(vals: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k < vals.shape[1]`` of each row by value desc, then position asc, through one
    ``argpartition``; only rows whose K-th value is tied with a cell outside the partition are sorted."""
    part = np.argpartition(-vals, k - 1, axis=1)[:, :k]
    kth = np.take_along_axis(vals, part, axis=1).min(axis=1)
    # More than k cells reach the K-th value: a tie at the boundary, so the smaller positions among the
    # tied cells must win, which argpartition does not promise.
    tied = np.flatnonzero(np.count_nonzero(vals >= kth[:, None], axis=1) > k)
    for start in range(0, len(tied), _TIED_CHUNK):
        rows = tied[start : start + _TIED_CHUNK]
        # A stable sort keeps equal scores in position order: exact, O(n log n) for these rows only.
        part[rows] = np.argsort(-vals[rows], axis=1, kind="stable")[:, :k]
    # Positions ascending, then a stable sort by value: ties stay in position order.
    part.sort(axis=1)
    pv = np.take_along_axis(vals, part, axis=1)
    order = np.argsort(-pv, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(pv, order, axis=1)


def top_by_threshold(
    scores: np.ndarray, k: int, n_chunks: int | None = None, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`top_positions` through a per-row threshold (module docstring); needs ``k < n_chunks <=
    n / 2``. ``mask``: an optional ``(B, n)`` bool buffer to reuse."""
    b, n = scores.shape
    c = n_chunks or _n_chunks(n, k)
    per = n // c  # chunk j: columns j, j + c, j + 2c, ... (the last n % c columns are in no chunk)
    cmax = np.maximum.reduce(scores[:, : per * c].reshape(b, per, c), axis=1)
    t = np.partition(cmax, c - k, axis=1)[:, c - k]  # the K-th largest chunk maximum
    # Rows with fewer than K finite chunk maxima, or a NaN (which np.partition ranks above every
    # number), have no valid bound: they select nothing here and are redone on their full row.
    redo = ~(t > -np.inf) | np.isnan(cmax).any(axis=1)
    t[redo] = np.inf
    mask = np.greater_equal(scores, t[:, None], out=mask)
    flat = np.flatnonzero(mask)  # row-major: rows ascending, columns ascending within a row
    rows = flat // n
    counts = np.bincount(rows, minlength=b)
    redo |= counts > _MAX_CANDIDATES * k  # a flood of ties at t: cheaper on the full row
    if redo.any():
        keep = ~redo[rows]
        flat, rows = flat[keep], rows[keep]
        counts[redo] = 0
        if not len(flat):
            return top_by_partition(scores, k)
    # Candidates packed left per row, padded, still in column order: a stable sort by value then ranks
    # ties by the smaller column, exactly. Negated, so the sort is ascending and the pads (+inf) last.
    width = max(int(counts.max()), k)
    starts = np.cumsum(counts) - counts
    neg = np.full((b, width), np.inf, dtype=scores.dtype)
    src = -(scores.ravel()[flat] if scores.flags.c_contiguous else scores[rows, flat - rows * n])
    neg.ravel()[np.arange(len(flat)) + (rows * width - starts[rows])] = src
    best = np.argsort(neg, axis=1, kind="stable")[:, :k]
    vals = -np.take_along_axis(neg, best, axis=1)
    # Back to columns through each row's start in ``flat`` (redo rows, with no candidates, are clipped).
    top = flat[np.minimum(starts[:, None] + best, len(flat) - 1)] - np.arange(b)[:, None] * n
    again = np.flatnonzero(redo)
    if len(again):
        top[again], vals[again] = top_by_partition(scores[again], k)
    return top, vals


def _n_chunks(n: int, k: int) -> int:
    """4k chunks: the K-th largest of their maxima admits ~1.15 k candidates, and ranking 4k maxima
    costs little next to one pass over the row."""
    return min(n // 2, _CHUNKS_PER_K * k)


def top_positions(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``scores`` (B, n): the column positions of the top ``min(k, n)`` and their scores.

    Rows are ordered by score descending, ties by the smaller position; ``-inf`` entries are kept
    (callers drop them). Rows much longer than ``k`` go through the threshold prefilter (module
    docstring), shorter ones through one ``argpartition``; either way only rows with a tie at the K-th
    place (or without K finite scores) fall back to a sort of the full row.
    """
    b, n = scores.shape
    kk = min(k, n)
    if b == 0 or kk == 0:
        return np.zeros((b, 0), dtype=np.int64), np.zeros((b, 0), dtype=scores.dtype)
    if n >= max(_THRESHOLD_MIN_COLS, _THRESHOLD_MIN_RATIO * kk):
        return top_by_threshold(scores, kk)
    if kk < n:
        return top_by_partition(scores, kk)
    part = np.broadcast_to(np.arange(n), (b, n))
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(scores, order, axis=1)


def block_rows_for(n_items: int, block_size: int | None) -> int:
    """Users scored per block against ``n_items`` items: ``block_size`` when given, else as many as keep
    a block's score matrix near ``_BLOCK_CELLS`` cells (at most ``_MAX_BLOCK``)."""
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        return block_size
    return max(1, min(_MAX_BLOCK, _BLOCK_CELLS // max(1, n_items)))


def _dense(arr: pa.Array, what: str) -> np.ndarray:
    """An Arrow list column of equal-length numeric lists as a ``(rows, d)`` matrix, from its flat
    values (no per-row objects)."""
    if arr.null_count:
        raise ValueError(f"{what} has null factor vectors")
    lens = pc.list_value_length(arr)
    lo, hi = pc.min_max(lens).values() if len(arr) else (pa.scalar(0), pa.scalar(0))
    if lo.as_py() != hi.as_py():
        raise ValueError(f"{what} factor vectors differ in length ({lo.as_py()} to {hi.as_py()})")
    flat = arr.flatten()
    if flat.null_count:
        raise ValueError(f"{what} factor vectors hold nulls")
    return flat.to_numpy(zero_copy_only=False).reshape(len(arr), hi.as_py() or 0)


def top_k_by_blocks(
    p: np.ndarray,
    qt: np.ndarray,
    user_ids: np.ndarray,
    item_ids: np.ndarray,
    k: int,
    block: int,
    seen_rows: np.ndarray | None = None,
    seen_cols: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each user's top ``k`` items by ``p @ qt``, ``block`` users per GEMM: ``(users, items, scores,
    ranks)`` arrays, users in the order of ``p``'s rows, ranks from 1, ties to the smaller position.
    ``p``: ``(n_users, d)``, rows named by ``user_ids``; ``qt``: ``(d, n_items)``, columns named by
    ``item_ids``; ``(seen_rows, seen_cols)``: (row of ``p``, column of ``qt``) pairs excluded, rows
    ascending. Computed in ``p``'s and ``qt``'s dtype; a user's scores do not depend on its block."""
    n_items = qt.shape[1]
    if len(p) == 0 or n_items == 0:
        empty = np.zeros(0, np.int64)
        return user_ids[:0], item_ids[:0], np.zeros(0, np.float64), empty.astype(np.int32)
    block = max(1, min(block, len(p)))
    buf = np.empty((block, n_items), dtype=np.result_type(p.dtype, qt.dtype))  # reused by every block
    threshold = n_items >= max(_THRESHOLD_MIN_COLS, _THRESHOLD_MIN_RATIO * k)
    mask = np.empty((block, n_items), dtype=bool) if threshold else None
    parts: list[tuple[np.ndarray, ...]] = []
    for start in range(0, len(p), block):
        stop = min(start + block, len(p))
        scores = buf[: stop - start]
        np.matmul(p[start:stop], qt, out=scores)
        if seen_rows is not None and seen_cols is not None:
            lo, hi = np.searchsorted(seen_rows, [start, stop])
            scores[seen_rows[lo:hi] - start, seen_cols[lo:hi]] = -np.inf
        if mask is not None:
            top, vals = top_by_threshold(scores, k, mask=mask[: stop - start])
        else:
            top, vals = top_positions(scores, k)
        keep = vals > -np.inf  # seen items (and NaN) never come back
        ranks = np.broadcast_to(np.arange(1, top.shape[1] + 1, dtype=np.int32), top.shape)
        parts.append(
            (
                np.repeat(user_ids[start:stop], np.count_nonzero(keep, axis=1)),
                item_ids[top[keep]],
                vals[keep].astype(np.float64),
                ranks[keep],
            )
        )
    users, items, scores_out, ranks_out = (np.concatenate(c) for c in zip(*parts, strict=True))
    return users, items, scores_out, ranks_out


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
    the scores need more than 24 bits). ``block_size`` users are scored per GEMM; by default as many
    as keep a block's ``(B, n_items)`` score matrix near 2^23 cells.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    require_columns(user_factors, [col_user, col_features], "user_factors")
    require_columns(item_factors, [col_item, col_features], "item_factors")
    if seen is not None:
        require_columns(seen, [col_user, col_item], "seen")
    np_dtype = np.dtype(dtype)
    spark = user_factors.sparkSession
    user_type = user_factors.schema[col_user].dataType
    item_type = item_factors.schema[col_item].dataType
    fields, _ = ranked_schema(user_type, item_type, col_user, col_item, col_score, col_rank)
    out_schema = T.StructType(fields)
    arrow_schema = pa.schema(
        [
            pa.field(col_user, arrow_int_type(user_type, f"user_factors.{col_user}"), False),
            pa.field(col_item, arrow_int_type(item_type, f"item_factors.{col_item}"), False),
            pa.field(col_score, pa.float64(), False),
            pa.field(col_rank, pa.int32(), False),
        ]
    )

    # The documented exception to "never collect item-sized data": the broadcast item matrix.
    items = item_factors.select(col_item, col_features).toArrow()
    ids_col = items.column(col_item).combine_chunks()
    if ids_col.null_count:
        raise ValueError(f"item_factors has null '{col_item}' values")
    raw_ids = ids_col.to_numpy()
    q = _dense(items.column(col_features).combine_chunks(), "item_factors")
    order = np.argsort(raw_ids, kind="stable")
    ids = raw_ids[order]
    if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
        raise ValueError(f"item_factors has duplicate '{col_item}' values")
    # (d, n_items), C-ordered: the GEMM's right operand.
    q_t = np.ascontiguousarray(q[order].astype(np_dtype).T) if len(ids) else np.zeros((0, 0), np_dtype)
    # Seen ids -> item positions: an O(1) table when the ids are dense enough, else a binary search.
    lookup = None
    if len(ids) and int(ids[-1]) - int(ids[0]) < _DENSE_LOOKUP_SPAN * len(ids) + 1024:
        lookup = np.full(int(ids[-1]) - int(ids[0]) + 1, -1, dtype=np.int64)
        lookup[ids - ids[0]] = np.arange(len(ids))
    block = block_rows_for(len(ids), block_size)
    log.info("top-%d from factors: %d items x %d dims broadcast, %d users per block", k, *q.shape, block)
    bc = spark.sparkContext.broadcast((ids, q_t, lookup))

    users = user_factors.select(col_user, col_features)
    has_seen = seen is not None  # the closures below must not capture the DataFrame
    if seen is not None:
        lists = seen.select(col_user, col_item).groupBy(col_user).agg(F.collect_list(col_item).alias(_SEEN))
        users = users.join(lists, col_user, "left")

    def positions(seen_lists: pa.Array, item_ids: np.ndarray, table: np.ndarray | None):
        """(row, item position) of every seen item that has factors, rows ascending."""
        lens = pc.fill_null(pc.list_value_length(seen_lists), 0).to_numpy()
        flat = seen_lists.flatten().drop_null().to_numpy(zero_copy_only=False).astype(np.int64)
        rows = np.repeat(np.arange(len(lens)), lens)
        if table is not None:
            off = flat - int(item_ids[0])
            inside = (off >= 0) & (off < len(table))
            rows, pos = rows[inside], table[off[inside]]
            hit = pos >= 0
        else:
            pos = np.minimum(np.searchsorted(item_ids, flat), len(item_ids) - 1)
            hit = item_ids[pos] == flat
        return rows[hit], pos[hit]

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        item_ids, qt, table = bc.value
        for batch in batches:
            if qt.shape[1] == 0 or batch.num_rows == 0:
                continue
            p = _dense(batch.column(col_features), "user_factors").astype(np_dtype, copy=False)
            if p.shape[1] != qt.shape[0]:
                raise ValueError(f"user factors have {p.shape[1]} dims, item factors {qt.shape[0]}")
            uids = batch.column(col_user).to_numpy(zero_copy_only=False)
            s_rows, s_pos = positions(batch.column(_SEEN), item_ids, table) if has_seen else (None, None)
            columns = top_k_by_blocks(p, qt, uids, item_ids, k, block, s_rows, s_pos)
            yield pa.RecordBatch.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(columns, arrow_schema, strict=True)],
                schema=arrow_schema,
            )

    return users.mapInArrow(score, out_schema)


def topk_from_item_scores(
    item_scores: DataFrame,
    users: DataFrame,
    k: int,
    seen: DataFrame | None = None,
    *,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_score: str = COL_SCORE,
    col_rank: str = COL_RANK,
) -> DataFrame:
    """Top ``k`` of one global item ranking for every distinct user of ``users``, seen items excluded,
    ties to the smaller item: :func:`top_unseen` with one group. ``item_scores``: ``(col_item,
    col_score)``, one row per item (e.g. popularity)."""
    return top_unseen(
        item_scores,
        users,
        k,
        seen,
        col_user=col_user,
        col_item=col_item,
        col_score=col_score,
        col_rank=col_rank,
    )


def top_unseen(
    item_scores: DataFrame,
    users: DataFrame,
    k: int,
    seen: DataFrame | None = None,
    *,
    col_group: str | None = None,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_score: str = COL_SCORE,
    col_rank: str = COL_RANK,
) -> DataFrame:
    """For every distinct user of ``users``, the first ``k`` unseen items of each group of
    ``item_scores`` (``(col_item, col_score[, col_group])``, one row per item; one group without
    ``col_group``) in the order score desc, item asc; ranked per user in that order over all groups.
    ``seen``: ``(col_user, col_item)``. Returns ``(col_user, col_item, col_score, col_rank)``.

    The ranking is item-sized: it is collected once, sorted, and broadcast. A user needs at most
    ``seen(u, g) + k`` of a group's first items, so each batch of users takes those positions in
    numpy and drops the seen ones: linear in users x groups x k plus the interactions, never in
    users x items (the GEMM path of :func:`topk_from_factors` with 1-dim factors scored all 20G cells
    at 500k users x 40k items)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cols = [col_item, col_score] + ([col_group] if col_group else [])
    require_columns(item_scores, cols, "item_scores")
    require_columns(users, [col_user], "users")
    group = F.col(col_group) if col_group else F.lit(0)
    ranking: pd.DataFrame = (
        item_scores.select(
            F.col(col_item).cast("long").alias("i"),
            F.col(col_score).cast("double").alias("s"),
            group.alias("g"),
        )
        .orderBy("g", F.col("s").desc(), "i")
        .toPandas()
    )
    for c, what in (("i", col_item), ("s", col_score), ("g", col_group)):
        if ranking[c].isna().any():
            raise ValueError(f"item_scores has null {what} values")
    items = ranking["i"].to_numpy(np.int64)
    if len(np.unique(items)) < len(items):
        raise ValueError(f"item_scores has more than one row for an item ({col_item})")
    g = ranking["g"].to_numpy()
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]]) if len(items) else np.zeros(0, np.int64)
    by_item = np.argsort(items, kind="stable")
    bc = users.sparkSession.sparkContext.broadcast(
        (items, ranking["s"].to_numpy(np.float64), starts, items[by_item], by_item)
    )
    user_type = users.schema[col_user].dataType
    item_type = item_scores.schema[col_item].dataType
    fields, np_types = ranked_schema(user_type, item_type, col_user, col_item, col_score, col_rank)
    out = T.StructType(fields)

    def take(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        items, scores, starts, sorted_items, by_item = bc.value
        n, n_groups = len(items), len(starts)
        sizes = np.diff(np.r_[starts, n])
        for pdf in batches:
            b = len(pdf)
            if not b or not n:
                continue
            # the seen items' positions in the ranking, one per (user, item), sorted
            found, ok = lookup_sorted(sorted_items, flat_lists(pdf[_SEEN], np.int64))
            rows = np.repeat(np.arange(b, dtype=np.int64), pdf[_SEEN].map(list_len).to_numpy())
            seen_keys = np.unique(rows[ok] * n + by_item[found[ok]])
            seen_row, seen_pos = np.divmod(seen_keys, n)
            per_group = np.zeros((b, n_groups), np.int64)
            np.add.at(per_group, (seen_row, np.searchsorted(starts, seen_pos, side="right") - 1), 1)
            # the first seen(u, g) + k positions of every group, the unseen ones, the first k of those
            depth = np.minimum(per_group + k, sizes[None, :]).ravel()
            cell = np.repeat(np.arange(b * n_groups, dtype=np.int64), depth)
            offset = np.arange(len(cell)) - np.repeat(np.cumsum(depth) - depth, depth)
            row, pos = cell // n_groups, starts[cell % n_groups] + offset
            unseen = ~lookup_sorted(seen_keys, row * n + pos)[1]
            cell, row, pos = cell[unseen], row[unseen], pos[unseen]
            first = np.arange(len(cell)) - np.searchsorted(cell, cell) < k
            row, pos = row[first], pos[first]
            order = np.lexsort((items[pos], -scores[pos], row))
            row, pos = row[order], pos[order]
            rank = np.arange(len(row)) - np.searchsorted(row, row) + 1
            frame = pd.DataFrame(
                {
                    col_user: pdf[col_user].to_numpy()[row],
                    col_item: items[pos],
                    col_score: scores[pos],
                    col_rank: rank.astype(np.int32),
                }
            )
            yield frame.astype(np_types)

    if seen is None:
        lists = users.select(col_user).distinct().withColumn(_SEEN, F.lit(None).cast("array<long>"))
    else:
        require_columns(seen, [col_user, col_item], "seen")
        seen_lists = seen.groupBy(col_user).agg(F.collect_list(F.col(col_item).cast("long")).alias(_SEEN))
        lists = users.select(col_user).distinct().join(seen_lists, col_user, "left")
    return lists.mapInPandas(take, out)
