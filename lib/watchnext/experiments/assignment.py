"""Which variant of an experiment each user gets: a salted hash, and the append-only record of it.

**The hash.** ``u = int(sha256(f"{salt}:{purpose}:{user_id}")[:13 hex digits]) / 2**52``, a uniform
draw in ``[0, 1)`` with 52 bits, exact in a double. It depends on nothing but the salt, the purpose
and the user id (as a string), so it is the same on every run, day, partitioning and cluster, and the
Python (:func:`unit_hash`) and Spark (:func:`unit_hash_col`, built-in functions only) versions give
the same floats. Two purposes, two independent draws per user and experiment:

* ``traffic``: the user is in the experiment when ``u_t < traffic``;
* ``variant``: the variant is the first whose cumulative share (config order) exceeds ``u_v``.

Because the variant draw ignores ``traffic``, widening the traffic (a ramp-up, 10% -> 50%) keeps
every user already in the experiment in the same variant and only adds users. Different salts give
independent draws (experiments do not correlate).

**The record.** ``experiment_assignments`` (experiment, user_id, variant, first_assigned) only grows
(:func:`grow_assignments`): a user's first in-traffic assignment is kept for good. What a user is
served on a day (:func:`served_variants`) is their recorded variant while they are inside that day's
traffic, otherwise the default recipe:

* variant shares changed (treatment 50% -> 20%): recorded users keep their variant (sticky), users
  assigned later follow the new shares; the mix is then neither the old nor the new shares, which the
  analysis' sample-ratio check reports (docs/experiments.md);
* traffic shrunk (50% -> 10%): recorded users outside the new traffic get the default recipe but keep
  their row, and return to the same variant if the traffic widens again.

``enabled`` is the caller's switch (the pipeline assigns and serves only enabled experiments); these
functions compute the assignment of the experiment they are given either way.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from itertools import accumulate

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from watchnext.checks import require_columns
from watchnext.constants import COL_EXPERIMENT, COL_USER, COL_VARIANT
from watchnext.experiments.spec import ExperimentConfig

log = logging.getLogger(__name__)

PURPOSE_TRAFFIC = "traffic"
PURPOSE_VARIANT = "variant"
HASH_HEX_DIGITS = 13  # 52 bits: exact in a double, and u * 2**52 is an integer
_SCALE = float(2**52)

COL_IN_TRAFFIC = "in_traffic"
COL_FIRST_ASSIGNED = "first_assigned"


# ------------------------------------------------------------------------------------------- hashing
def unit_hash(salt: str, user_id: str, purpose: str) -> float:
    """The user's draw in ``[0, 1)``: the first 13 hex digits of ``sha256("salt:purpose:user_id")``
    (UTF-8) over ``2**52``. A non-string id is hashed as ``str(user_id)``, which equals Spark's cast
    to string for strings and integers (not for floating-point ids)."""
    digest = hashlib.sha256(f"{salt}:{purpose}:{user_id}".encode()).hexdigest()
    return int(digest[:HASH_HEX_DIGITS], 16) / _SCALE


def unit_hash_col(salt: str, user: str | Column, purpose: str) -> Column:
    """:func:`unit_hash` as a Spark column of doubles (the same floats), built-in functions only.

    ``user`` is a column or its name; it is cast to string. A null user gives a meaningless draw
    (``concat_ws`` skips nulls): drop null ids first, as :func:`assign` does."""
    col = F.col(user) if isinstance(user, str) else user
    key = F.concat_ws(":", F.lit(salt), F.lit(purpose), col.cast("string"))
    hex_prefix = F.substring(F.sha2(key, 256), 1, HASH_HEX_DIGITS)
    return F.conv(hex_prefix, 16, 10).cast("long").cast("double") / F.lit(_SCALE)


def _bounds(exp: ExperimentConfig) -> list[tuple[str, float]]:
    """(variant, cumulative share) in config order; the last variant takes whatever is left (so a
    rounding shortfall of the sum below 1 leaves no draw unassigned)."""
    names = [v.name for v in exp.variants]
    return list(zip(names, accumulate(v.share for v in exp.variants), strict=True))


def _pick(u: float, exp: ExperimentConfig) -> str:
    bounds = _bounds(exp)
    for name, upper in bounds[:-1]:
        if u < upper:
            return name
    return bounds[-1][0]


def _pick_col(u: Column, exp: ExperimentConfig) -> Column:
    bounds = _bounds(exp)
    name, upper = bounds[0]
    expr = F.when(u < F.lit(upper), F.lit(name))
    for name, upper in bounds[1:-1]:
        expr = expr.when(u < F.lit(upper), F.lit(name))
    return expr.otherwise(F.lit(bounds[-1][0]))


# ------------------------------------------------------------------------------------- pure Python
def in_traffic_python(user_id: str, exp: ExperimentConfig) -> bool:
    """Whether the user is inside the experiment's traffic (``u_traffic < exp.traffic``)."""
    return unit_hash(exp.salt, user_id, PURPOSE_TRAFFIC) < exp.traffic


def variant_python(user_id: str, exp: ExperimentConfig) -> str:
    """The user's hash variant, inside the traffic or not (the ``variant`` column of :func:`assign`)."""
    return _pick(unit_hash(exp.salt, user_id, PURPOSE_VARIANT), exp)


def assign_python(user_id: str, exp: ExperimentConfig) -> str | None:
    """The variant the hash serves ``user_id`` (``None``: outside the traffic, the default recipe),
    for a single lookup (serving, the CLI). It ignores the assignments table: after a change of the
    variant shares a recorded user keeps their recorded variant (:func:`served_variants`), which may
    differ from this."""
    return variant_python(user_id, exp) if in_traffic_python(user_id, exp) else None


# ------------------------------------------------------------------------------------------- Spark
def assign(users: DataFrame, exp: ExperimentConfig, *, col_user: str = COL_USER) -> DataFrame:
    """The hash assignment of every distinct non-null user of ``users`` to ``exp``.

    Columns: ``experiment`` (string, ``exp.name``), ``col_user`` (as in ``users``), ``variant``
    (string: the hash variant, for every user) and ``in_traffic`` (boolean: whether the user is inside
    the traffic, i.e. served the variant). One row per distinct user; a pure function of (salt, user id),
    whatever the partitioning. Narrow apart from the ``distinct``.
    """
    require_columns(users, [col_user], "users")
    distinct = users.select(col_user).where(F.col(col_user).isNotNull()).distinct()
    u_traffic = unit_hash_col(exp.salt, col_user, PURPOSE_TRAFFIC)
    u_variant = unit_hash_col(exp.salt, col_user, PURPOSE_VARIANT)
    return distinct.select(
        F.lit(exp.name).alias(COL_EXPERIMENT),
        F.col(col_user),
        _pick_col(u_variant, exp).alias(COL_VARIANT),
        (u_traffic < F.lit(float(exp.traffic))).alias(COL_IN_TRAFFIC),
    )


def new_assignments(
    existing: DataFrame | None, fresh: DataFrame, run_date: dt.date, *, col_user: str = COL_USER
) -> DataFrame:
    """The rows to append to ``experiment_assignments`` on ``run_date``: the in-traffic users of
    ``fresh`` (:func:`assign`'s output, any number of experiments) without a row for (experiment, user)
    in ``existing`` (the table, or ``None`` before its first write), with ``first_assigned = run_date``.

    Columns: experiment, ``col_user``, variant, first_assigned (date). Appending them to the same
    table again on a re-run adds nothing (they are then in ``existing``)."""
    require_columns(fresh, [COL_EXPERIMENT, col_user, COL_VARIANT, COL_IN_TRAFFIC], "fresh assignments")
    added = fresh.where(F.col(COL_IN_TRAFFIC)).select(
        COL_EXPERIMENT,
        col_user,
        COL_VARIANT,
        F.lit(run_date).cast("date").alias(COL_FIRST_ASSIGNED),
    )
    if existing is None:
        return added
    require_columns(existing, [COL_EXPERIMENT, col_user], "existing assignments")
    return added.join(existing.select(COL_EXPERIMENT, col_user), [COL_EXPERIMENT, col_user], "left_anti")


def grow_assignments(
    existing: DataFrame | None, fresh: DataFrame, run_date: dt.date, *, col_user: str = COL_USER
) -> DataFrame:
    """The new full content of ``experiment_assignments``: every row of ``existing`` unchanged
    (variant and first_assigned), plus :func:`new_assignments`. So the table only grows: a user keeps
    the variant they were first assigned when shares are later changed, and keeps their row when they
    fall outside a shrunk traffic. Columns: experiment, ``col_user``, variant, first_assigned."""
    added = new_assignments(existing, fresh, run_date, col_user=col_user)
    if existing is None:
        return added
    require_columns(existing, [COL_VARIANT, COL_FIRST_ASSIGNED], "existing assignments")
    return existing.select(*added.columns).unionByName(added)


def served_variants(assignments: DataFrame, fresh: DataFrame, *, col_user: str = COL_USER) -> DataFrame:
    """The variant each user of ``fresh`` (today's :func:`assign` output) is served today.

    One row per row of ``fresh``: experiment, ``col_user``, variant. The variant is the user's
    recorded (sticky) variant in ``assignments`` (the table, already grown with today's
    :func:`grow_assignments`) when the user is inside today's traffic, null (the default recipe)
    outside it. An in-traffic user without a record (the table not grown yet) gets today's hash
    variant. Consequences: after the variant shares change, recorded users keep their variant and new
    users follow the new shares; after the traffic shrinks, recorded users outside it get the default
    recipe, and their recorded variant again if the traffic widens."""
    require_columns(fresh, [COL_EXPERIMENT, col_user, COL_VARIANT, COL_IN_TRAFFIC], "fresh assignments")
    require_columns(assignments, [COL_EXPERIMENT, col_user, COL_VARIANT], "assignments")
    recorded = assignments.select(COL_EXPERIMENT, col_user, F.col(COL_VARIANT).alias("_recorded"))
    joined = fresh.join(recorded, [COL_EXPERIMENT, col_user], "left")
    served = F.when(F.col(COL_IN_TRAFFIC), F.coalesce(F.col("_recorded"), F.col(COL_VARIANT)))
    return joined.select(COL_EXPERIMENT, col_user, served.cast("string").alias(COL_VARIANT))


def served_today(
    users: DataFrame, exp: ExperimentConfig, assignments: DataFrame | None, *, col_user: str = COL_USER
) -> DataFrame:
    """:func:`served_variants` of ``users`` (a ``col_user`` column) against the ``experiment_assignments``
    rows of ``exp`` (``None``: nothing recorded yet, the hash variants): experiment, ``col_user``,
    variant (null outside the traffic). What the recommend stage serves and the evaluate stage scores."""
    fresh = assign(users, exp, col_user=col_user)
    if assignments is None:
        assignments = fresh.limit(0).select(COL_EXPERIMENT, col_user, COL_VARIANT)
    recorded = assignments.where(F.col(COL_EXPERIMENT) == F.lit(exp.name))
    return served_variants(recorded, fresh, col_user=col_user)
