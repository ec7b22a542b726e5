"""Small array helpers shared by the top-K engine, the neighbour search and the blend.

Each works on numpy arrays, pandas columns of lists or Spark/Arrow types, never on a DataFrame: the
callers run them inside ``mapInPandas``/``mapInArrow`` batches or on the driver.
"""

from __future__ import annotations

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
