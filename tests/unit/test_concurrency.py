"""map_ordered: the loop's results in the loop's order, work really overlapping, errors not swallowed."""

from __future__ import annotations

import threading
import time

import pytest

from watchnext.concurrency import map_ordered


def test_results_keep_the_input_order_and_calls_overlap() -> None:
    running, peak, lock = 0, 0, threading.Lock()

    def work(x: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05 * (5 - x))  # later inputs finish first
        with lock:
            running -= 1
        return x * x

    assert map_ordered(work, range(5), workers=3) == [0, 1, 4, 9, 16]
    assert peak == 3
    peak = 0
    assert map_ordered(work, range(5), workers=1) == [0, 1, 4, 9, 16]
    assert peak == 1


def test_the_first_error_in_input_order_propagates() -> None:
    def work(x: int) -> int:
        if x in (1, 3):
            raise ValueError(f"bad {x}")
        return x

    with pytest.raises(ValueError, match="bad 1"):
        map_ordered(work, range(5), workers=4)
    with pytest.raises(ValueError, match="workers"):
        map_ordered(work, [1], workers=0)
