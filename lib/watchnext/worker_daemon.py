"""Spark's Python worker daemon, with the pipeline's worker-side modules imported and frozen first.

Spark starts one daemon per executor (``pyspark.daemon``) and forks a worker from it for each
concurrent task; a reused worker runs ``gc.collect()`` after every task. A worker that imports numpy,
pandas, pyarrow, scipy and the pipeline's kernels holds ~100k tracked objects, so each task paid
~50 ms of garbage collection, and each new worker the imports. This daemon imports them once and
calls ``gc.freeze()`` before forking (what ``gc.freeze`` is for): the forked workers share the
imported modules and their collections skip the frozen objects.

The session factory sets ``spark.python.daemon.module`` to it for local masters (``spark.worker_daemon``,
on by default), where the workers run the driver's Python with ``watchnext`` installed. Not on a
cluster: executors that get ``watchnext`` through ``--py-files`` can import it only at task time, after
the daemon has started.
"""

from __future__ import annotations

import gc

import numpy  # noqa: F401
import pandas  # noqa: F401
import pyarrow  # noqa: F401
import scipy.sparse  # noqa: F401
from pyspark import daemon

import watchnext.evaluation.beyond_accuracy  # noqa: F401
import watchnext.grouped  # noqa: F401
import watchnext.models.blend  # noqa: F401
import watchnext.models.ease  # noqa: F401
import watchnext.models.knn  # noqa: F401
import watchnext.models.similarity  # noqa: F401
import watchnext.models.topk  # noqa: F401

if __name__ == "__main__":
    gc.freeze()
    daemon.manager()
