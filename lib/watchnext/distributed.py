"""Horovod-on-Spark helpers shared by training code and health checks."""

from __future__ import annotations

import os


def allreduce_probe() -> tuple[int, int, float, list[float]]:
    """Run inside each Horovod rank: (rank, size, sum of rank+1 over ranks, allgather of rank*10).

    A cheap proof that the ranks found each other over Gloo (or MPI/NCCL) and that collectives work.
    """
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    total = hvd.allreduce(tf.constant([float(hvd.rank() + 1)]), op=hvd.Sum)
    gathered = hvd.allgather(tf.constant([float(hvd.rank() * 10)]))
    return hvd.rank(), hvd.size(), float(total.numpy()[0]), [float(x) for x in gathered.numpy()]


def horovod_selfcheck(
    num_proc: int = 2, start_timeout: int = 120
) -> list[tuple[int, int, float, list[float]]]:
    """Launch ``num_proc`` Horovod ranks as Spark tasks (active session) and run :func:`allreduce_probe`."""
    import horovod.spark

    return horovod.spark.run(
        allreduce_probe, num_proc=num_proc, use_gloo=True, start_timeout=start_timeout, verbose=0
    )
