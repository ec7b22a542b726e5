"""Exact top-K neighbours, computed blockwise across the cluster; item-item and user-user CF on top.

The engine (:func:`blocked_topk`) never builds or shuffles the full ``n x n`` similarity matrix:

1. **Pack.** Rows (items or users) are vectors: dense (ALS factors) or sparse (TF-IDF content
   vectors, or the set of users who watched an item). Each row goes to block
   ``pmod(xxhash64(id), n_blocks)`` with ``n_blocks = ceil(n / block_size)``, so blocks hold about
   ``block_size`` rows whatever the id distribution. A block becomes one record: its ids in ascending
   order and its matrix (a flat dense array, or CSR parts), built with SQL higher-order functions.
2. **Pair.** Block records are cross-joined into ordered block pairs ``(a, b)``, all pairs of one
   row block ``a`` in one task: the row blocks are repartitioned one per task and the candidate
   blocks broadcast, so each block reaches every task once (as a broadcast, not as ``n_blocks``
   shuffled copies, the cost of MLlib's ``BlockMatrix.multiply``), and never a cell of ``S``. The
   limit this sets: the candidates' packed blocks must fit a broadcast (90 MB at 20M interactions). When the
   candidates are the rows themselves, ``(a, b)`` and ``(b, a)`` are both computed as ``a' @ b'.T``
   with ``a' <= b'``, so both directions get bit-identical scores.
3. **Multiply.** Inside ``mapInPandas`` a pair is one BLAS matmul ``A @ B.T`` (scipy's sparse
   product for sparse blocks); self-pairs are masked; each row's top K within the pair comes out of
   :func:`~watchnext.models.topk.top_positions`, and the task keeps a running top K per row of its
   row blocks across their pairs (:class:`RunningTopK`: a candidate below its row's K-th score so
   far is dropped before any sort). Set measures stay sparse: only the product's nonzeros with at
   least ``min_overlap`` shared members are scored.
4. **Merge.** Every row leaves its task with at most K candidates (not ``n_blocks * K``: the window
   would otherwise sort ``n * n_blocks * K`` rows, 6e9 for 500k users); a window numbers them.

Measures (``measure``):

* ``cosine``: rows are L2-normalised while packing; ``S = A @ B.T``. Zero vectors have no direction
  and are left out (they get no neighbours and are nobody's neighbour).
* ``jaccard`` and ``set_cosine``: rows are binary sets (e.g. an item's users); with the overlap
  ``C = A @ B.T``, ``S = C / (|a| + |b| - C)`` or ``S = C / sqrt(|a| |b|)``. Pairs sharing fewer
  than ``min_overlap`` members are not neighbours.

Order: score descending, ties broken by the smaller neighbour id, exactly (the same rule as the
user top-K). Scores are computed in ``dtype`` (float32 by default, like Spark's factors).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Literal

import numpy as np
import pandas as pd
from pyspark.ml.linalg import SparseVector, Vector, VectorUDT
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext.checks import require_columns
from watchnext.constants import (
    COL_FEATURES,
    COL_ITEM_IDX,
    COL_NEIGHBOR_IDX,
    COL_RANK,
    COL_SCORE,
    COL_TIMESTAMP,
    COL_USER_IDX,
)
from watchnext.kernels import arrow_int_type, flat_lists, list_len, lookup_sorted, ranked_schema
from watchnext.models.topk import top_positions

log = logging.getLogger(__name__)

Measure = Literal["cosine", "jaccard", "set_cosine"]
_SET_MEASURES = ("jaccard", "set_cosine")

# Internal column names of the packed representation.
_ID, _DENSE, _IDX, _VAL, _BLOCK = "_id", "_dense", "_idx", "_val", "_block"
_IDS, _DATA, _LENS, _INDICES, _VALUES = "_ids", "_data", "_lens", "_indices", "_values"
_SEED = 20240601  # block hashing seed: any fixed value; part of no result


# ------------------------------------------------------------------------------------ row formats
def dense_rows(df: DataFrame, *, col_id: str, col_features: str = COL_FEATURES) -> DataFrame:
    """``(col_id, col_features: array<float|double>)`` -> the engine's dense row format."""
    require_columns(df, [col_id, col_features], "dense rows")
    return df.select(
        F.col(col_id).cast("long").alias(_ID), F.col(col_features).cast("array<double>").alias(_DENSE)
    )


def sparse_rows(df: DataFrame, *, col_id: str, col_features: str = COL_FEATURES) -> DataFrame:
    """``(col_id, col_features: ml Vector)`` -> the engine's sparse row format (non-zeros only)."""
    require_columns(df, [col_id, col_features], "sparse rows")
    if not isinstance(df.schema[col_features].dataType, VectorUDT):
        raise ValueError(
            f"column '{col_features}' must be an ml Vector, got {df.schema[col_features].dataType}"
        )
    parts = F.udf(
        lambda v: _nonzeros(v),  # a lambda: type hints would make Spark guess a pandas UDF
        T.StructType(
            [
                T.StructField("i", T.ArrayType(T.IntegerType())),
                T.StructField("v", T.ArrayType(T.DoubleType())),
            ]
        ),
    )
    return df.select(F.col(col_id).cast("long").alias(_ID), parts(col_features).alias("_p")).select(
        _ID, F.col("_p.i").alias(_IDX), F.col("_p.v").alias(_VAL)
    )


def _nonzeros(v: Vector | None) -> tuple[list[int], list[float]]:
    # A Python UDF: ml Vectors have no SQL accessors, and vector_to_array would densify them.
    if v is None:
        return [], []
    if isinstance(v, SparseVector):
        keep = v.values != 0
        return v.indices[keep].tolist(), v.values[keep].tolist()
    arr = v.toArray()
    nz = np.flatnonzero(arr)
    return nz.tolist(), arr[nz].tolist()


def set_rows(df: DataFrame, *, col_id: str, col_member: str) -> DataFrame:
    """Pairs ``(col_id, col_member)`` (e.g. item, user) -> one binary sparse row per ``col_id``."""
    require_columns(df, [col_id, col_member], "set rows")
    members = F.array_sort(F.collect_set(F.col(col_member).cast("int")))
    return (
        df.groupBy(F.col(col_id).cast("long").alias(_ID))
        .agg(members.alias(_IDX))
        .select(_ID, _IDX, F.transform(_IDX, lambda _: F.lit(1.0)).alias(_VAL))
    )


def _kind(rows: DataFrame) -> str:
    if _DENSE in rows.columns:
        return "dense"
    if {_IDX, _VAL} <= set(rows.columns):
        return "sparse"
    raise ValueError("rows must come from dense_rows, sparse_rows or set_rows")


# ------------------------------------------------------------------------------------------ engine
def _check_measure(kind: str, measure: Measure) -> None:
    if measure in _SET_MEASURES and kind == "dense":
        raise ValueError(f"{measure} needs set rows (set_rows), not dense vectors")


def _pack(rows: DataFrame, kind: str, measure: Measure, n_blocks: int) -> DataFrame:
    """One record per block: ids ascending and the block's matrix (a flat dense array, or CSR parts),
    L2-normalised rows for cosine; rows that can have no neighbour (zero or empty) are left out."""
    block = F.pmod(F.xxhash64(F.col(_ID), F.lit(_SEED)), F.lit(n_blocks)).cast("int")
    cosine = measure == "cosine"

    def pack_dense(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values(_ID, kind="stable")
        m = np.stack(pdf[_DENSE].to_numpy()).astype(np.float64) if len(pdf) else np.zeros((0, 0))
        norms = np.linalg.norm(m, axis=1)
        keep = norms > 0
        m = m[keep] / norms[keep, None] if cosine else m[keep]
        return pd.DataFrame({_BLOCK: [block_of(pdf)], _IDS: [pdf[_ID].to_numpy()[keep]], _DATA: [m.ravel()]})

    def pack_sparse(pdf: pd.DataFrame) -> pd.DataFrame:
        pdf = pdf.sort_values(_ID, kind="stable")
        lens = pdf[_IDX].map(len).to_numpy()
        keep = lens > 0
        block_id = block_of(pdf)
        pdf, lens = pdf[keep], lens[keep]
        indices = np.concatenate([np.zeros(0, np.int32), *(np.asarray(x) for x in pdf[_IDX])])
        values = np.zeros(0)  # set measures: a row's nonzeros are its members; no values travel
        if cosine:
            values = np.concatenate([values, *(np.asarray(x) for x in pdf[_VAL])]).astype(np.float64)
            row = np.repeat(np.arange(len(lens)), lens)
            norms = np.sqrt(np.bincount(row, weights=values * values, minlength=len(lens)))
            values = values / norms[row]
        return pd.DataFrame(
            {
                _BLOCK: [block_id],
                _IDS: [pdf[_ID].to_numpy()],
                _LENS: [lens.astype(np.int32)],
                _INDICES: [indices.astype(np.int32)],
                _VALUES: [values],
            }
        )

    with_block = rows.withColumn(_BLOCK, block)
    if kind == "dense":
        schema = f"{_BLOCK} int, {_IDS} array<long>, {_DATA} array<double>"
        return with_block.groupBy(_BLOCK).applyInPandas(pack_dense, schema)
    schema = ", ".join(
        [
            f"{_BLOCK} int",
            f"{_IDS} array<long>",
            f"{_LENS} array<int>",
            f"{_INDICES} array<int>",
            f"{_VALUES} array<double>",
        ]
    )
    return with_block.groupBy(_BLOCK).applyInPandas(pack_sparse, schema)


def block_of(pdf: pd.DataFrame) -> int:
    return int(pdf[_BLOCK].iloc[0])  # applyInPandas never calls with an empty group


def _matrix(rec: pd.Series, side: str, kind: str, dtype: np.dtype, n_cols: int, binary: bool) -> object:
    ids = np.asarray(rec[f"{side}{_IDS}"], dtype=np.int64)
    if kind == "dense":
        data = np.asarray(rec[f"{side}{_DATA}"], dtype=dtype)
        return data.reshape(len(ids), -1)
    from scipy import sparse

    lens = np.asarray(rec[f"{side}{_LENS}"], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(lens)])
    indices = np.asarray(rec[f"{side}{_INDICES}"], dtype=np.int64)
    values = np.ones(len(indices), dtype) if binary else np.asarray(rec[f"{side}{_VALUES}"], dtype=dtype)
    return sparse.csr_matrix((values, indices, indptr), shape=(len(ids), n_cols))


def blocked_topk(
    rows: DataFrame,
    k: int,
    *,
    candidates: DataFrame | None = None,
    measure: Measure = "cosine",
    block_size: int = 2048,
    min_overlap: int = 1,
    positive_only: bool = False,
    exclude_self: bool = True,
    dtype: str = "float32",
    col_id: str = COL_ITEM_IDX,
    col_neighbor: str = COL_NEIGHBOR_IDX,
    col_score: str = COL_SCORE,
    col_rank: str = COL_RANK,
) -> DataFrame:
    """Top ``k`` neighbours of every row of ``rows`` among ``candidates`` (default: ``rows`` itself).

    ``rows``/``candidates`` come from :func:`dense_rows`, :func:`sparse_rows` or :func:`set_rows`
    (the same kind on both sides). Returns ``(col_id, col_neighbor: long, col_score: double,
    col_rank: int 1..k)``; a row with fewer than ``k`` admissible neighbours gets a shorter list.
    ``exclude_self`` drops pairs of equal ids; ``positive_only`` drops scores <= 0 (no shared
    feature); ``min_overlap`` (set measures) is the least number of shared members.
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if measure not in ("cosine", *_SET_MEASURES):
        raise ValueError(f"unknown measure {measure!r}: cosine | jaccard | set_cosine")
    kind = _kind(rows)
    symmetric = candidates is None
    if not symmetric and _kind(candidates) != kind:
        raise ValueError("rows and candidates must be the same kind (dense or sparse)")
    np_dtype = np.dtype(dtype)
    set_measure = measure in _SET_MEASURES

    _check_measure(kind, measure)
    n = max(rows.count(), 1 if symmetric else candidates.count(), 1)
    n_blocks = max(1, math.ceil(n / block_size))
    lp = _pack(rows, kind, measure, n_blocks)
    rp = lp if symmetric else _pack(candidates, kind, measure, n_blocks)
    lp = lp.select([F.col(c).alias(f"a{c}") for c in lp.columns])
    rp = rp.select([F.col(c).alias(f"b{c}") for c in rp.columns])
    # Every ordered block pair (a, b), all pairs of one row block a in one task: the task keeps a
    # running top-K per row of a across its b blocks, so each row leaves it with at most K candidates
    # (n x K rows reach the window, not n x n_blocks x K: 6e9 rows for 500k users in 245 blocks).
    # The row blocks are spread one per task and the candidate blocks broadcast (at 20M interactions
    # 90 MB of CSR), so the pairs are formed inside the tasks: shuffling the pair records instead
    # would move every block n_blocks times (40+ GB at 20M).
    # A symmetric pair is multiplied once per direction, oriented as (smaller block, larger block)
    # both times, so both directions see bit-identical cosines (set measures need no orientation).
    pairs = lp.repartition(n_blocks, f"a{_BLOCK}").crossJoin(F.broadcast(rp))
    n_pairs = n_blocks * n_blocks
    log.info(
        "blocked top-%d (%s, %s): %d rows, %d blocks, %d block pairs", k, kind, measure, n, n_blocks, n_pairs
    )

    schema = T.StructType(
        [
            T.StructField(col_id, T.LongType(), False),
            T.StructField(col_neighbor, T.LongType(), False),
            T.StructField(col_score, T.DoubleType(), False),
        ]
    )

    def operands(rec: pd.Series, left: str, right: str) -> tuple[object, object]:
        n_cols = 0
        if kind == "sparse":
            n_cols = 1 + max(
                int(np.max(rec[f"{left}{_INDICES}"], initial=-1)),
                int(np.max(rec[f"{right}{_INDICES}"], initial=-1)),
            )
        return (
            _matrix(rec, left, kind, np_dtype, n_cols, set_measure),
            _matrix(rec, right, kind, np_dtype, n_cols, set_measure),
        )

    def set_pairs(rec: pd.Series, left: str, right: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Set measures: the ``left`` x ``right`` pairs sharing at least ``min_overlap`` members, as
        (row positions, column positions, scores), from the product's nonzeros alone. In a block
        pair of 2,041 x 2,041 users at 20M interactions 14% of the pairs share an item and 4.6%
        share two: a dense block, its masks and its top-K cost about 4x the product itself.
        Elementwise on exact counts, the scores do not depend on the orientation of the pair."""
        a, b = operands(rec, left, right)
        prod = a @ b.T  # CSR
        nz = np.flatnonzero(prod.data >= min_overlap)  # exact counts
        rows = np.searchsorted(prod.indptr, nz, side="right") - 1
        cols = prod.indices[nz].astype(np.int64)
        overlap = prod.data[nz].astype(np.float64)
        # an id hashes to the same block number on both sides: only a block with itself has self-pairs
        if exclude_self and int(rec[f"{left}{_BLOCK}"]) == int(rec[f"{right}{_BLOCK}"]):
            l_ids = np.asarray(rec[f"{left}{_IDS}"], dtype=np.int64)
            r_ids = np.asarray(rec[f"{right}{_IDS}"], dtype=np.int64)
            other = l_ids[rows] != r_ids[cols]
            rows, cols, overlap = rows[other], cols[other], overlap[other]
        na = np.asarray(rec[f"{left}{_LENS}"], dtype=np.float64)[rows]
        nb = np.asarray(rec[f"{right}{_LENS}"], dtype=np.float64)[cols]
        # Counts are exact; one correctly rounded division (and a monotone sqrt) maps equal
        # fractions to equal floats, so tied pairs stay tied
        if measure == "jaccard":
            s = overlap / ((na + nb) - overlap)
        else:
            s = np.sqrt((overlap * overlap) / (na * nb))
        if positive_only:
            rows, cols, s = rows[s > 0], cols[s > 0], s[s > 0]
        return rows, cols, s

    def score(rec: pd.Series, left: str, right: str) -> np.ndarray:
        """Cosine: the masked similarity matrix of ``left`` rows x ``right`` columns of one pair record."""
        l_ids = np.asarray(rec[f"{left}{_IDS}"], dtype=np.int64)
        r_ids = np.asarray(rec[f"{right}{_IDS}"], dtype=np.int64)
        a, b = operands(rec, left, right)
        prod = a @ b.T
        s = np.asarray(prod.toarray() if hasattr(prod, "toarray") else prod, dtype=np_dtype)
        if positive_only:
            np.copyto(s, -np.inf, where=s <= 0)
        np.copyto(s, -np.inf, where=np.isnan(s))
        if exclude_self:
            np.copyto(s, -np.inf, where=np.equal.outer(l_ids, r_ids))
        return s

    def pair_candidates(rec: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One pair record's candidates: (row positions in a, column positions in b, scores)."""
        if set_measure:
            return set_pairs(rec, "a", "b")
        if symmetric and int(rec[f"a{_BLOCK}"]) > int(rec[f"b{_BLOCK}"]):
            s = score(rec, "b", "a").T
        else:
            s = score(rec, "a", "b")
        top, vals = top_positions(s, k)  # each row's top K within the pair
        keep = vals > -np.inf
        rows = np.broadcast_to(np.arange(len(top), dtype=np.int64)[:, None], top.shape)
        return rows[keep], top[keep].astype(np.int64), vals[keep].astype(np.float64)

    def multiply(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        running: dict[int, RunningTopK] = {}  # row block -> its rows' best K so far
        for pdf in batches:
            for _, rec in pdf.iterrows():
                a_block = int(rec[f"a{_BLOCK}"])
                if a_block not in running:
                    running[a_block] = RunningTopK(np.asarray(rec[f"a{_IDS}"], dtype=np.int64), k)
                rows, cols, scores = pair_candidates(rec)
                running[a_block].add(rows, np.asarray(rec[f"b{_IDS}"], dtype=np.int64)[cols], scores)
        for top in running.values():
            yield top.frame(col_id, col_neighbor, col_score)

    candidates_df = pairs.mapInPandas(multiply, schema)
    order = Window.partitionBy(col_id).orderBy(F.col(col_score).desc(), F.col(col_neighbor).asc())
    return (
        candidates_df.withColumn(col_rank, F.row_number().over(order).cast("int"))
        .where(F.col(col_rank) <= k)
        .select(col_id, col_neighbor, col_score, col_rank)
    )


class RunningTopK:
    """The best ``k`` neighbours (score descending, ties to the smaller neighbour id) of each row of a
    row block, across its block pairs (both kernels: a cosine pair adds each row's top K within the
    pair, a set-measure pair every pair with enough overlap). Each row keeps a floor, the ``k``-th
    score of its last reduce: a candidate below it can never enter (later pairs only add
    competitors), so most of a block pair's candidates are dropped by one compare before anything is
    sorted. Candidates at the floor stay (a tie can still win on the neighbour id): exact."""

    def __init__(self, ids: np.ndarray, k: int, limit: int | None = None) -> None:
        self.ids, self.k = ids, k
        self.floor = np.full(len(ids), -np.inf)
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.size = 0
        # candidates buffered before a reduce
        self.limit = 4 * k * max(len(ids), 1) + 100_000 if limit is None else limit

    def add(self, rows: np.ndarray, nbrs: np.ndarray, scores: np.ndarray) -> None:
        keep = scores >= self.floor[rows]
        self.parts.append((rows[keep], nbrs[keep], scores[keep]))
        self.size += int(keep.sum())
        if self.size > self.limit:
            self.reduce()

    def reduce(self) -> None:
        rows, nbrs, scores = (np.concatenate(x) for x in zip(*self.parts, strict=True))
        # one argsort of a composite integer key (row, score rank descending, neighbour rank): 4x
        # faster than a three-key lexsort
        u_s, s_rank = np.unique(scores, return_inverse=True)
        u_n, n_rank = np.unique(nbrs, return_inverse=True)
        if len(rows) and len(self.ids) * len(u_s) * len(u_n) < 2**63:
            key = (rows * len(u_s) + (len(u_s) - 1 - s_rank)) * len(u_n) + n_rank
            order = np.argsort(key, kind="stable")
        else:
            order = np.lexsort((nbrs, -scores, rows))
        rows, nbrs, scores = rows[order], nbrs[order], scores[order]
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.zeros(0, int)
        place = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
        keep = place < self.k
        rows, nbrs, scores = rows[keep], nbrs[keep], scores[keep]
        full = place[keep] == self.k - 1
        self.floor[rows[full]] = scores[full]
        self.parts, self.size = [(rows, nbrs, scores)], len(rows)

    def frame(self, col_id: str, col_neighbor: str, col_score: str) -> pd.DataFrame:
        if self.parts:
            self.reduce()
        rows, nbrs, scores = self.parts[0] if self.parts else (np.zeros(0, np.int64),) * 3
        return pd.DataFrame(
            {col_id: self.ids[rows], col_neighbor: nbrs, col_score: scores.astype(np.float64)}
        )


# ------------------------------------------------------------------------------ neighbour sources
def item_neighbors_from_factors(
    item_factors: DataFrame,
    k: int,
    *,
    block_size: int = 2048,
    col_item: str = COL_ITEM_IDX,
    col_features: str = COL_FEATURES,
    col_neighbor: str = COL_NEIGHBOR_IDX,
) -> DataFrame:
    """Cosine neighbours of ALS item factors ``(col_item, col_features)``: ``(col_item, col_neighbor,
    score, rank)``."""
    rows = dense_rows(item_factors, col_id=col_item, col_features=col_features)
    return _named(
        blocked_topk(rows, k, block_size=block_size, col_id=col_item, col_neighbor=col_neighbor),
        col_item,
        col_neighbor,
    )


def item_neighbors_from_content(
    features: DataFrame,
    k: int,
    *,
    block_size: int = 2048,
    col_item: str = COL_ITEM_IDX,
    col_features: str = COL_FEATURES,
    col_neighbor: str = COL_NEIGHBOR_IDX,
) -> DataFrame:
    """Cosine neighbours of content vectors (ml Vectors); items sharing no feature are not neighbours."""
    rows = sparse_rows(features, col_id=col_item, col_features=col_features)
    out = blocked_topk(
        rows, k, block_size=block_size, positive_only=True, col_id=col_item, col_neighbor=col_neighbor
    )
    return _named(out, col_item, col_neighbor)


def item_neighbors_from_cooccurrence(
    interactions: DataFrame,
    k: int,
    *,
    measure: Literal["jaccard", "cosine"] = "jaccard",
    min_overlap: int = 2,
    block_size: int = 2048,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_neighbor: str = COL_NEIGHBOR_IDX,
) -> DataFrame:
    """Classic item-based CF: items watched by the same users.

    An item is the set of its users. ``jaccard``: ``|U_i & U_j| / |U_i | U_j|``; ``cosine`` (binary):
    ``|U_i & U_j| / sqrt(|U_i| |U_j|)``. Pairs sharing fewer than ``min_overlap`` users are dropped
    (one shared user is noise, not evidence).
    """
    rows = set_rows(interactions, col_id=col_item, col_member=col_user)
    engine_measure: Measure = "set_cosine" if measure == "cosine" else "jaccard"
    out = blocked_topk(
        rows,
        k,
        measure=engine_measure,
        min_overlap=min_overlap,
        block_size=block_size,
        col_id=col_item,
        col_neighbor=col_neighbor,
    )
    return _named(out, col_item, col_neighbor)


def user_neighbors_from_factors(
    user_factors: DataFrame,
    k: int,
    *,
    block_size: int = 2048,
    col_user: str = COL_USER_IDX,
    col_features: str = COL_FEATURES,
    col_neighbor: str = COL_NEIGHBOR_IDX,
) -> DataFrame:
    """User-based CF neighbours: cosine of ALS user factors, ``(col_user, col_neighbor, score, rank)``."""
    rows = dense_rows(user_factors, col_id=col_user, col_features=col_features)
    return _named(
        blocked_topk(rows, k, block_size=block_size, col_id=col_user, col_neighbor=col_neighbor),
        col_user,
        col_neighbor,
    )


def user_neighbors_from_cooccurrence(
    interactions: DataFrame,
    k: int,
    *,
    min_overlap: int = 2,
    block_size: int = 2048,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_neighbor: str = COL_NEIGHBOR_IDX,
) -> DataFrame:
    """User-based CF neighbours from shared items: binary cosine ``|I_u & I_v| / sqrt(|I_u| |I_v|)``
    over users' item sets, at least ``min_overlap`` shared items."""
    rows = set_rows(interactions, col_id=col_user, col_member=col_item)
    out = blocked_topk(
        rows,
        k,
        measure="set_cosine",
        min_overlap=min_overlap,
        block_size=block_size,
        col_id=col_user,
        col_neighbor=col_neighbor,
    )
    return _named(out, col_user, col_neighbor)


def _named(df: DataFrame, col_id: str, col_neighbor: str) -> DataFrame:
    """The engine's long ids back to the int indices the tables use."""
    return df.select(
        F.col(col_id).cast("int").alias(col_id),
        F.col(col_neighbor).cast("int").alias(col_neighbor),
        COL_SCORE,
        COL_RANK,
    )


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
