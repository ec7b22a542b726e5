"""Floating-point sums and means that give the same bits on every run.

Spark's ``sum`` and ``avg`` of doubles add partial results in the order tasks and shuffle blocks
happen to finish, so the last bits of a sum change from run to run: a re-run of the same date then
publishes scores that differ in the 16th digit, and a top-K cut or a tie-break on them can keep
another item. These add in ``decimal(38, 18)`` instead, where addition is exact and so does not
depend on the order, and round the total to a double once. The values are rounded to 18 decimal
places first (far below a double's precision for the scores and metrics summed here). Like ``sum``,
they stream: no group's values are held in memory.
"""

from __future__ import annotations

from pyspark.sql import Column
from pyspark.sql import functions as F

EXACT = "decimal(38,18)"
LIMIT = 1e15  # 100,000 values of this size still sum below the decimal's 1e20


def _col(c: Column | str) -> Column:
    return F.col(c) if isinstance(c, str) else c


def exact_sum(c: Column | str) -> Column:
    """``sum(c)`` as a double, independent of the order of addition; null when every value is.

    A group holding a NaN, an infinity or a value of magnitude ``LIMIT`` or more (which the decimal
    cannot hold, or whose sum it could overflow) gets Spark's plain double sum, as before: NaN or
    infinity where ``sum`` gives them."""
    x = _col(c).cast("double")
    ok = F.abs(x) < F.lit(LIMIT)  # false for NaN and infinities, null for null
    exact = F.sum(F.when(ok, x.cast(EXACT))).cast("double")
    return F.when(F.count(F.when(~ok, 1)) > 0, F.sum(x)).otherwise(exact)


def exact_mean(c: Column | str) -> Column:
    """``avg(c)`` with the sum of :func:`exact_sum`; nulls left out, null when every value is."""
    n = F.count(_col(c))
    return F.when(n > 0, exact_sum(c) / n)
