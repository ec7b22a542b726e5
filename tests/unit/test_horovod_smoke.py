"""Proves the from-source Horovod build: two real Gloo processes launched by horovod.spark allreduce."""

from __future__ import annotations

import pytest
from pyspark.sql import SparkSession

from watchnext.distributed import horovod_selfcheck

pytestmark = [pytest.mark.horovod, pytest.mark.spark]


def test_horovod_spark_gloo_allreduce(spark: SparkSession) -> None:
    from horovod.common.util import gloo_built

    assert gloo_built()
    results = horovod_selfcheck(num_proc=2)
    # each rank: sum over ranks of (rank + 1) = 1 + 2; allgather of rank * 10 = [0, 10]
    assert sorted(results) == [(0, 2, 3.0, [0.0, 10.0]), (1, 2, 3.0, [0.0, 10.0])]
