"""Per-key work on whole partitions: one shuffle by a key, then one Arrow -> Arrow step per partition.

For per-user steps that are vectorised numpy over many users at once (the recommend pool, intra-list
diversity): every row of a key lands in the same partition, so the step sees each user's rows whole
without a window or a ``groupBy`` per column, and one Python call handles a whole partition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pyarrow as pa
from pyspark.sql import DataFrame
from pyspark.sql import types as T
from pyspark.sql.pandas.types import to_arrow_schema

OUT_ROWS = 65_536  # rows per output Arrow batch


def by_key(
    df: DataFrame,
    key: str,
    step: Callable[[pa.Table], pa.Table],
    schema: T.StructType,
    partitions: int | None = None,
) -> DataFrame:
    """``df`` shuffled by ``key`` into ``partitions`` (default the shuffle partitions), then ``step``
    applied to each whole, non-empty partition; its output is cast to ``schema``."""
    arrow = to_arrow_schema(schema)

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = [b for b in batches if b.num_rows]
        if parts:
            out = step(pa.Table.from_batches(parts)).select(arrow.names).cast(arrow)
            yield from out.to_batches(max_chunksize=OUT_ROWS)

    n = partitions or int(df.sparkSession.conf.get("spark.sql.shuffle.partitions") or "8")
    return df.repartition(n, key).mapInArrow(run, schema)
