"""Floating-point sums and means that give the same bits on every run.

Spark's ``sum`` and ``avg`` of doubles add partial results in the order tasks and shuffle blocks
happen to finish, so the last bits of a sum change from run to run: a re-run of the same date then
publishes scores that differ in the 16th digit, and a top-K cut or a tie-break on them can keep
another item. These add in ``decimal(38, 18)`` instead, where addition is exact and so does not
depend on the order, and round the total to a double once. The values are rounded to 18 decimal
places first (far below a double's precision for the scores and metrics summed here) and must stay
below 1e20 in magnitude (Spark raises an overflow error otherwise). Like ``sum``, they stream: no
group's values are held in memory.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

EXACT = "decimal(38,18)"


def _col(c: Column | str) -> Column:
    return F.col(c) if isinstance(c, str) else c


def exact_sum(c: Column | str) -> Column:
    """``sum(c)`` as a double, independent of the order of addition; null when every value is."""
    return F.sum(_col(c).cast(EXACT)).cast("double")


def exact_mean(c: Column | str) -> Column:
    """``avg(c)`` with the sum of :func:`exact_sum`; nulls left out, null when every value is."""
    n = F.count(_col(c))
    return F.when(n > 0, exact_sum(c) / n)
