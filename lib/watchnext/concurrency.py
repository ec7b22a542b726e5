"""Independent Spark work submitted side by side from driver threads.

On small data each Spark job is bound by scheduling latency (task launch, result collection), not by the
cores, so independent chains of jobs (the k-means starts of a cluster search, the models of an
evaluation) finish sooner when their jobs interleave. Results come back in the order of the inputs and
each piece of work is deterministic on its own, so the outcome is the same as a plain loop; ``workers=1``
is that loop. At scale, where one job fills the cores, interleaving gains little and holds more data in
memory at once: the callers' worker counts are config keys for that reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_ordered(fn: Callable[[T], R], items: Iterable[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]``, with up to ``workers`` calls running at once; the first error raised
    (in input order) propagates after every submitted call has finished."""
    items = list(items)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(items) < 2:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        futures = [pool.submit(fn, x) for x in items]
        return [f.result() for f in futures]
