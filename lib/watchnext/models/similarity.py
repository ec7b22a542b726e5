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
from typing import Any, Literal

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
)
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
    others = rows if candidates is None else candidates
    if _kind(others) != kind:
        raise ValueError("rows and candidates must be the same kind (dense or sparse)")
    np_dtype = np.dtype(dtype)
    set_measure = measure in _SET_MEASURES

    _check_measure(kind, measure)
    n = max(rows.count(), 1 if symmetric else others.count(), 1)
    n_blocks = max(1, math.ceil(n / block_size))
    lp = _pack(rows, kind, measure, n_blocks)
    rp = lp if symmetric else _pack(others, kind, measure, n_blocks)
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

    def operands(rec: pd.Series, left: str, right: str) -> tuple[Any, Any]:
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
