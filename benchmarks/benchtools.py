"""Helpers the bench scripts share (each bench runs as a script: ``benchmarks/`` is on its path)."""

from __future__ import annotations

import time
from collections.abc import Callable


def best(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``fn``, in seconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)
