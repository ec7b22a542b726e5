"""EASE (Steck, 2019): a closed-form linear item-item model, one of the recommend path's sources.

With ``X`` the binary user x item matrix, ``B = argmin ||X - XB||^2 + lambda ||B||^2`` subject to
``diag(B) = 0`` has the closed form ``P = (X^T X + lambda I)^-1``, ``B_ij = -P_ij / P_jj``,
``B_jj = 0``; a user's scores are ``x_u B``. On ml-latest-small (the quality bar's protocol) lambda 500
scores NDCG@10 0.407, above tuned ALS (docs/quality.md).

**Size limit.** ``B`` is dense: the solve runs on the driver in ``n^2`` float64 cells and ``O(n^3)``
time for the ``n`` items kept, and ``B`` (float32, ``4 n^2`` bytes) is broadcast to the executors.
``max_items`` caps ``n`` (default 10,000: 800 MB for the solve, 400 MB broadcast, about 30 s on
2 cores). A larger catalogue keeps its ``max_items`` most-interacted items (the fallback: the other
items get no EASE score, the other sources still propose them; :func:`fit_ease` logs how many were left
out). Items with fewer than ``min_item_interactions`` interactions are left out too: their rows of
``B`` are almost all zero.

**Gram.** ``X^T X`` is formed on the driver from the ``(user, item)`` pairs of the kept items, sent as
Arrow int32 pairs (8 bytes a pair: 160 MB at 20M interactions), with scipy's sparse product; the item
counts that choose the kept items are a Spark aggregate.

**Sessions.** Two items a user took within minutes of each other are stronger evidence of a shared
taste than two items taken years apart, and plain co-occurrence counts both the same. With
``session_weight`` ``w > 0`` the solve uses ``X^T X + w T`` with the session Gram

    ``T_ij = sum over users u of exp(-|t_ui - t_uj| / session_seconds)``,  ``i != j``,

over the pairs of a user's items less than ``SESSION_SPAN`` time constants apart (their first
interaction's time; the kernel is below 0.7 % beyond). :func:`session_gram` walks each user's time-sorted
items once per offset, dropping a pair start as soon as its next neighbour is out of reach, so the work is
the number of close pairs, not ``sum n_u^2``. On ml-latest-small (the quality bar's protocol) the session
term (5 minutes, ``w = 2``) lifts EASE from 0.407 to about 0.436 NDCG@10 and the validation split from
0.201 to 0.216 (docs/quality.md); on data without sessions (timestamps spread at random, as the synthetic
generator's) ``T`` is nearly zero and the model is plain EASE. The timestamps travel as int64 seconds
(8 more bytes a pair).

**Scoring.** :func:`top_k_ease` sends each user's seen items as one list; a task multiplies a block of
users' sparse rows by the broadcast ``B`` and keeps each user's top K unseen items
(``models/topk.py``'s ``top_positions``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext.checks import require_columns
from watchnext.constants import (
    COL_ANCHOR_IDX,
    COL_ITEM_IDX,
    COL_RANK,
    COL_SCORE,
    COL_TIMESTAMP,
    COL_USER_IDX,
)
from watchnext.kernels import lookup_sorted
from watchnext.models.topk import block_rows_for, top_positions

log = logging.getLogger(__name__)

_SEEN = "_seen"
_SECONDS = "_seconds"
SESSION_SPAN = 5.0  # time constants: pairs further apart add nothing to the session Gram
_FLUSH_PAIRS = 4_000_000  # session pairs buffered before they are summed into the sparse Gram


@dataclass(frozen=True)
class EaseModel:
    """``weights[i, j]``: how much having item ``ids[i]`` adds to item ``ids[j]``'s score."""

    ids: np.ndarray  # (n,) sorted item_idx of the kept items
    weights: np.ndarray  # (n, n) float32, zero diagonal
    left_out: int  # items of the history without an EASE score (max_items, min_item_interactions)

    @property
    def n_items(self) -> int:
        return len(self.ids)


def fit_ease(
    history: DataFrame,
    reg: float = 500.0,
    *,
    max_items: int = 10_000,
    min_item_interactions: int = 2,
    session_weight: float = 0.0,
    session_seconds: float = 300.0,
) -> EaseModel:
    """EASE on the distinct ``(user_idx, item_idx)`` pairs of ``history`` (module docstring), with the
    session Gram weighted ``session_weight`` when that is above 0 (``history`` then needs
    ``timestamp``: the first one of a pair is its time; a pair without one adds nothing to the session
    Gram, so data without timestamps fits plain EASE)."""
    if reg <= 0:
        raise ValueError(f"EASE needs reg > 0, got {reg}")
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    if session_weight < 0 or session_seconds <= 0:
        raise ValueError(
            f"EASE needs session_weight >= 0 and session_seconds > 0, got {session_weight}, {session_seconds}"
        )
    sessions = session_weight > 0
    require_columns(history, [COL_USER_IDX, COL_ITEM_IDX] + ([COL_TIMESTAMP] if sessions else []), "history")
    if sessions:
        pairs = history.groupBy(COL_USER_IDX, COL_ITEM_IDX).agg(
            F.min(F.unix_timestamp(COL_TIMESTAMP)).alias(_SECONDS)
        )
    else:
        pairs = history.select(COL_USER_IDX, COL_ITEM_IDX).distinct()
    counts = pairs.groupBy(COL_ITEM_IDX).count().where(F.col("count") >= min_item_interactions)
    ranked = counts.orderBy(F.col("count").desc(), F.col(COL_ITEM_IDX)).limit(max_items)
    total = pairs.select(COL_ITEM_IDX).distinct().count()
    kept = pairs.join(F.broadcast(ranked.select(COL_ITEM_IDX)), COL_ITEM_IDX, "left_semi").toArrow()
    users = kept.column(COL_USER_IDX).to_numpy().astype(np.int64)
    items = kept.column(COL_ITEM_IDX).to_numpy().astype(np.int64)
    ids = np.unique(items)
    n = len(ids)
    left_out = total - n
    if left_out:
        log.info(
            "EASE: %d items kept, %d left out (max_items=%d, min_item_interactions=%d)",
            n,
            left_out,
            max_items,
            min_item_interactions,
        )
    if n == 0:
        return EaseModel(ids, np.zeros((0, 0), np.float32), left_out)
    _, rows = np.unique(users, return_inverse=True)
    cols = np.searchsorted(ids, items)
    x = sp.csr_matrix((np.ones(len(items), np.float64), (rows, cols)), shape=(rows.max() + 1, n))
    gram = (x.T @ x).toarray()
    if sessions:
        secs = kept.column(_SECONDS)
        timed = ~np.asarray(secs.is_null().to_numpy(zero_copy_only=False), bool)
        if not timed.all():
            log.info("EASE: session term over the %d of %d pairs with a timestamp", timed.sum(), len(timed))
        if timed.any():
            seconds = secs.filter(pa.array(timed)).to_numpy().astype(np.int64)
            t = session_gram(rows[timed], cols[timed], seconds, n, session_seconds)
            gram += session_weight * t.toarray()
    gram[np.diag_indices(n)] += reg
    p = np.linalg.inv(gram)
    b = p / -np.diag(p)
    b[np.diag_indices(n)] = 0.0
    return EaseModel(ids, b.astype(np.float32), left_out)


def session_gram(
    users: np.ndarray, items: np.ndarray, seconds: np.ndarray, n: int, window: float
) -> sp.csr_matrix:
    """The symmetric ``(n, n)`` session Gram (module docstring) of the interactions
    ``(users[r], items[r], seconds[r])``, one row per distinct ``(user, item)``; ``items`` in ``0..n-1``.

    Pairs ``(r, r + d)`` of the user's time-sorted rows are taken for ``d = 1, 2, ...``; a row stays a
    pair start only while its ``d``-th successor is the same user's and within reach, since a farther
    successor is then out of reach too."""
    order = np.lexsort((items, seconds, users))  # a fixed order: the sums do not depend on the input's
    u, p, t = users[order], items[order], seconds[order].astype(np.float64)
    reach = SESSION_SPAN * window
    gram = sp.csr_matrix((n, n), dtype=np.float64)
    buf: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    buffered = 0
    start = np.arange(len(u) - 1)
    d = 1
    while start.size:
        start = start[start + d < len(u)]
        nxt = start + d
        dt = t[nxt] - t[start]
        ok = (u[nxt] == u[start]) & (dt <= reach)
        start, nxt, dt = start[ok], nxt[ok], dt[ok]
        buf.append((p[start], p[nxt], np.exp(-dt / window)))
        buffered += start.size
        if buffered >= _FLUSH_PAIRS or not start.size:
            r, c, v = (np.concatenate(x) for x in zip(*buf, strict=True))
            gram = gram + sp.csr_matrix((v, (r, c)), shape=(n, n))
            buf, buffered = [], 0
        d += 1
    return gram + gram.T


def top_k_ease(model: EaseModel, history: DataFrame, users: DataFrame, k: int) -> DataFrame:
    """Top ``k`` unseen items of every user of ``users`` (distinct ``user_idx``) by ``x_u B``:
    ``(user_idx, item_idx, score: double, rank: int 1..k, anchor_idx: int)``, ties to the smaller item;
    ``anchor_idx`` is the seen item that adds most to the item's score (the "because you watched" of
    the reason). ``history``: ``(user_idx, item_idx)``, the seen items (the row ``x_u`` and the
    exclusions)."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    out_schema = T.StructType(
        [
            T.StructField(COL_USER_IDX, T.IntegerType(), False),
            T.StructField(COL_ITEM_IDX, T.IntegerType(), False),
            T.StructField(COL_SCORE, T.DoubleType(), False),
            T.StructField(COL_RANK, T.IntegerType(), False),
            T.StructField(COL_ANCHOR_IDX, T.IntegerType(), False),
        ]
    )
    types = (pa.int32(), pa.int32(), pa.float64(), pa.int32(), pa.int32())
    arrow_schema = pa.schema([pa.field(f.name, t, False) for f, t in zip(out_schema, types, strict=True)])
    spark = history.sparkSession
    if model.n_items == 0:
        return spark.createDataFrame([], out_schema)
    block = block_rows_for(model.n_items, None)
    bc = spark.sparkContext.broadcast((model.ids, model.weights))
    lists = (
        history.select(F.col(COL_USER_IDX).cast("int"), F.col(COL_ITEM_IDX).cast("int"))
        .join(users.select(F.col(COL_USER_IDX).cast("int")), COL_USER_IDX, "left_semi")
        .groupBy(COL_USER_IDX)
        .agg(F.collect_set(COL_ITEM_IDX).alias(_SEEN))
    )

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        ids, b = bc.value
        n = len(ids)
        for batch in batches:
            if batch.num_rows == 0:
                continue
            uids = batch.column(COL_USER_IDX).to_numpy()
            seen = batch.column(_SEEN)
            lens = seen.value_lengths().to_numpy()
            flat = seen.flatten().to_numpy()
            rows = np.repeat(np.arange(len(uids)), lens)
            pos, hit = lookup_sorted(ids, flat)
            rows, pos = rows[hit], pos[hit]
            x = sp.csr_matrix((np.ones(len(pos), np.float32), (rows, pos)), shape=(len(uids), n))
            known = np.diff(x.indptr) > 0  # users without a kept item get no EASE list
            parts = []
            for start in range(0, len(uids), block):
                stop = min(start + block, len(uids))
                scores = np.asarray(x[start:stop] @ b, dtype=np.float32)
                sel = (rows >= start) & (rows < stop)
                scores[rows[sel] - start, pos[sel]] = -np.inf
                top, vals = top_positions(scores, k)
                keep = (vals > -np.inf) & known[start:stop, None]
                ranks = np.broadcast_to(np.arange(1, top.shape[1] + 1, dtype=np.int32), top.shape)
                anchors = np.zeros(top.shape, np.int64)
                for r in np.flatnonzero(known[start:stop]):
                    mine = x.indices[x.indptr[start + r] : x.indptr[start + r + 1]]
                    anchors[r] = mine[np.argmax(b[np.ix_(mine, top[r])], axis=0)]
                parts.append(
                    (
                        np.repeat(uids[start:stop], np.count_nonzero(keep, axis=1)),
                        ids[top[keep]],
                        vals[keep].astype(np.float64),
                        ranks[keep],
                        ids[anchors[keep]],
                    )
                )
            cols = [np.concatenate(c) for c in zip(*parts, strict=True)]
            yield pa.RecordBatch.from_arrays(
                [pa.array(c, type=f.type) for c, f in zip(cols, arrow_schema, strict=True)],
                schema=arrow_schema,
            )

    return lists.mapInArrow(score, out_schema)
