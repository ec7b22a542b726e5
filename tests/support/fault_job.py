"""A stage job (as ``jobs/<stage>.py`` runs it) with a Spark task failure injected into every Delta write.

``python tests/support/fault_job.py MARKER_DIR STAGE [job arguments]``: the first attempt of partition 0 of
every partition-scoped write (``tables.overwrite_partition``, which ``overwrite_run_date`` and the
evaluation writers call) raises inside the task, after leaving a marker file in ``MARKER_DIR``. With a
master that allows task retries (``local[N,F]``, or ``spark.task.maxFailures`` on a cluster) Spark
runs the task again and the job must finish with the same tables as a clean run (test_faults.py).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa

from watchnext import tables
from watchnext.cli import main as cli_main


def _fail_first_attempt(marker_dir: str, label: str):  # type: ignore[no-untyped-def]
    def fn(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        ctx = TaskContext.get()
        if ctx.partitionId() == 0 and ctx.attemptNumber() == 0:
            name = f"{label}-stage{ctx.stageId()}-attempt{ctx.attemptNumber()}-{uuid.uuid4().hex[:8]}"
            Path(marker_dir, name).touch()
            raise RuntimeError(f"injected task failure writing {label}")
        yield from batches

    return fn


def main(argv: list[str]) -> int:
    marker_dir, stage, *args = argv
    os.makedirs(marker_dir, exist_ok=True)
    real = tables.overwrite_partition

    def flaky(df, path, values, commit_note=None, **kwargs):  # type: ignore[no-untyped-def]
        label = path.rstrip("/").rsplit("/", 1)[-1]
        return real(
            df.mapInArrow(_fail_first_attempt(marker_dir, label), df.schema),
            path,
            values,
            commit_note,
            **kwargs,
        )

    tables.overwrite_partition = flaky
    return cli_main([stage, *args])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
