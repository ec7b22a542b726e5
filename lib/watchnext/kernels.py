"""Small array helpers shared by the top-K engine, the neighbour search, the blend and its tuning.

Each works on numpy arrays, pandas columns of lists or Spark/Arrow types, never on a DataFrame: the
callers run them inside ``mapInPandas``/``mapInArrow`` batches or on the driver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
from pyspark.sql import types as T

from watchnext.constants import COL_ITEM_IDX, COL_RANK, COL_SCORE, COL_USER_IDX

ARROW_INT_TYPES: dict[type[T.DataType], pa.DataType] = {
    T.ByteType: pa.int8(),
    T.ShortType: pa.int16(),
    T.IntegerType: pa.int32(),
    T.LongType: pa.int64(),
}


def list_len(x: object) -> int:
    """Length of a list cell (None: 0)."""
    return 0 if x is None else len(x)  # type: ignore[arg-type]


def flat_lists(lists: pd.Series, dtype: type) -> np.ndarray:
    """The concatenation of a column of lists (None: empty)."""
    return np.concatenate([np.zeros(0, dtype), *(np.asarray(x, dtype) for x in lists if x is not None)])


def lookup_sorted(ids: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``x`` in the sorted ``ids`` and whether each is there."""
    if not len(ids):
        return np.zeros(len(x), np.int64), np.zeros(len(x), bool)
    pos = np.minimum(np.searchsorted(ids, x), len(ids) - 1)
    return pos, ids[pos] == x


def arrow_int_type(dt: T.DataType, what: str) -> pa.DataType:
    """The Arrow type of a Spark integer column; ``ValueError`` naming ``what`` for any other type."""
    for spark_type, arrow_type in ARROW_INT_TYPES.items():
        if isinstance(dt, spark_type):
            return arrow_type
    raise ValueError(f"{what} must be an integer column, got {dt.simpleString()}")


def ranked_schema(
    user_type: T.DataType,
    item_type: T.DataType,
    col_user: str = COL_USER_IDX,
    col_item: str = COL_ITEM_IDX,
    col_score: str = COL_SCORE,
    col_rank: str = COL_RANK,
) -> tuple[list[T.StructField], dict[str, np.dtype]]:
    """A ranked list's fields ``(user, item, score: double, rank: int)`` and the numpy dtypes of its
    id columns (what a pandas batch is cast to before it goes back to Spark)."""
    fields = [
        T.StructField(col_user, user_type, False),
        T.StructField(col_item, item_type, False),
        T.StructField(col_score, T.DoubleType(), False),
        T.StructField(col_rank, T.IntegerType(), False),
    ]
    np_types = {
        col_user: arrow_int_type(user_type, col_user).to_pandas_dtype(),
        col_item: arrow_int_type(item_type, col_item).to_pandas_dtype(),
    }
    return fields, np_types


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """True where a run of equal keys begins (arrays sorted by those keys)."""
    new = np.zeros(len(keys[0]), bool)
    if len(new):
        new[0] = True
        for key in keys:
            new[1:] |= key[1:] != key[:-1]
    return new


def run_position(new: np.ndarray) -> np.ndarray:
    """0-based position of each row within its run (``new``: :func:`run_starts`)."""
    return np.arange(len(new)) - np.flatnonzero(new)[np.cumsum(new) - 1]


def capped_rank(
    user: np.ndarray, item: np.ndarray, score: np.ndarray, group: np.ndarray, n: int, cap: int | None
) -> np.ndarray:
    """Per row, its rank 1..n in the user's capped top ``n``, 0 when not chosen: at most ``cap`` rows of
    one ``group`` (the row's cluster; ``-1 - item`` for an item without one), then the best capped-out
    rows when a user has fewer than ``n`` eligible ones (``models/blend.py``'s module docstring).

    With rows sorted by user (the blend's tuning pool, scored once per trial), each user's rows are
    first cut to those at or above the user's ``depth``-th best score (ties kept), so the sorts run on
    a few dozen rows per user, not hundreds; a user whose cut holds fewer than ``n`` eligible rows is
    ranked again on all of its rows. The result is the same as without the cut."""
    size = len(user)
    depth = n if cap is None else PREFILTER_DEPTH * n
    if size < PREFILTER_MIN_ROWS or not np.all(user[1:] >= user[:-1]):
        return _capped_rank(user, item, score, group, n, cap)[0]
    new = run_starts(user)
    code = np.cumsum(new) - 1
    pos = run_position(new)
    n_users, width = int(code[-1]) + 1, int(pos.max()) + 1
    if width <= depth or n_users * width > PREFILTER_MAX_CELLS * size:
        return _capped_rank(user, item, score, group, n, cap)[0]
    dense = np.full((n_users, width), np.inf)
    dense[code, pos] = -score
    threshold = -np.partition(dense, depth - 1, axis=1)[:, depth - 1]  # the depth-th best (or -inf)
    sub = np.flatnonzero(score >= threshold[code])
    rank = np.zeros(size, np.int32)
    rank[sub], eligible = _capped_rank(user[sub], item[sub], score[sub], group[sub], n, cap)
    short = np.bincount(code[sub][eligible], minlength=n_users) < n
    short &= np.bincount(code[sub], minlength=n_users) < np.bincount(code, minlength=n_users)
    if short.any():  # the cut may have left out an eligible row these users need: all their rows
        redo = np.flatnonzero(short[code])
        rank[redo] = _capped_rank(user[redo], item[redo], score[redo], group[redo], n, cap)[0]
    return rank


PREFILTER_MIN_ROWS = 20_000  # below this the plain sorts are as fast
PREFILTER_DEPTH = 4  # rows kept per user, as a multiple of n (with a cap; n without one)
PREFILTER_MAX_CELLS = 4  # the users x longest-pool matrix may hold at most this many cells per row


def _capped_rank(
    user: np.ndarray, item: np.ndarray, score: np.ndarray, group: np.ndarray, n: int, cap: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`capped_rank` on every row, and whether each row is eligible (within its group's cap)."""
    size = len(user)
    rank = np.zeros(size, np.int32)
    ok = np.ones(size, bool)
    if not size:
        return rank, ok
    order = np.lexsort((item, -score, user))  # within user: score desc, item asc
    u, g = user[order], group[order]
    if cap is not None:
        by_group = np.lexsort((np.arange(size), g, u))  # stable: keeps the score order
        ok[by_group] = run_position(run_starts(u[by_group], g[by_group])) < cap
    pick = np.lexsort((np.arange(size), ~ok, u))  # eligible first, each part in score order
    chosen = np.sort(pick[run_position(run_starts(u[pick])) < n])  # back to score order
    rank[order[chosen]] = run_position(run_starts(u[chosen])) + 1
    eligible = np.empty(size, bool)
    eligible[order] = ok
    return rank, eligible


def weight_vector(weights: Mapping[str, float], sources: Sequence[str]) -> np.ndarray:
    """``weights`` in the order of ``sources`` (a missing source weighs 0)."""
    return np.array([float(weights.get(s, 0.0)) for s in sources])
