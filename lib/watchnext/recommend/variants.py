"""An experiment's variants as recipes of the recommend path, and who is served which.

A recipe is what ranks the published pool: the recommend config it runs with (``n``, the cap, the cold
switch, the sources it blends), the linear weights and the learned ranker (or none). The run tunes one
recipe (``recommend/tune.py``); each variant of the enabled experiment (docs/experiments.md) derives
its recipe from that run's outcome and its overrides (:func:`recipes`), without fitting anything
again, so the variants differ exactly where their overrides say:

* ``ranker: linear``: the tuned linear weights, no ranker (the base weights when tuning is off);
* ``ranker: learned``: the trained ranker over the tuned weights, whether or not the base recipe
  published it;
* ``weights``: exactly those weights, no ranker;
* ``sources`` (a subset of the base's): the weights restricted to them, no ranker;
* ``n``, ``max_per_cluster``, ``cold_threshold``, ``cold_weights``: through the variant's config.

Who gets which (:func:`served_users`): the experiment's hash assignment (``experiments/assignment.py``),
sticky through ``experiment_assignments``; users outside the traffic get the base recipe.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from watchnext.config import Config
from watchnext.constants import COL_EXPERIMENT, COL_USER, COL_USER_IDX, COL_VARIANT
from watchnext.experiments.assignment import assign, new_assignments, served_today
from watchnext.experiments.spec import ExperimentConfig, resolve_variant


@dataclass(frozen=True)
class Recipe:
    """One way of ranking the pool, and the variants it serves: ``None`` stands for the users with no
    variant (no experiment, or outside its traffic); the base recipe serves them and the control."""

    serves: tuple[str | None, ...]
    cfg: Config
    weights: dict[str, float]
    ranker: Any | None

    @property
    def n(self) -> int:
        return self.cfg.recommend.n


def recipes(
    cfg: Config,
    weights: dict[str, float],
    ranker: Any | None,
    *,
    tuned_weights: dict[str, float] | None = None,
    trained: Any | None = None,
) -> list[Recipe]:
    """The base recipe, then one per variant of the enabled experiment (none when there is none).

    ``weights`` / ``ranker``: the recipe the run publishes; ``tuned_weights``: the tuned linear weights
    (None when tuning was off); ``trained``: the trained learned ranker, published or not."""
    exp = cfg.experiment
    if exp is None:
        return [Recipe((None,), cfg, dict(weights), ranker)]
    out = [Recipe((None, exp.control), cfg, dict(weights), ranker)]
    for v in exp.treatments:
        rc = resolve_variant(cfg.recommend, v, experiment=exp.name)
        w, r = dict(weights), ranker
        if "ranker" in v.recommend:
            if rc.ranker == "linear":
                w, r = dict(tuned_weights if tuned_weights is not None else rc.weights), None
            else:
                if trained is None:
                    raise ValueError(
                        f"variant '{v.name}' of experiment '{exp.name}' asks for the learned ranker, "
                        "and this run trained none"
                    )
                w, r = dict(tuned_weights if tuned_weights is not None else rc.weights), trained
        if "weights" in v.recommend:
            w, r = dict(rc.weights), None
        if "sources" in v.recommend:  # the linear blend of the sources left (the ranker needs them all)
            w, r = {s: x for s, x in w.items() if s in rc.sources}, None
        if not w:
            raise ValueError(f"variant '{v.name}' of experiment '{exp.name}' leaves no weighted source")
        out.append(Recipe((v.name,), cfg.model_copy(update={"recommend": rc}), w, r))
    return out


def assignments_to_add(
    users: DataFrame, exp: ExperimentConfig, existing: DataFrame | None, run_date: Any
) -> DataFrame:
    """The rows ``experiment_assignments`` gains on this run: the users (``user_id``) inside the
    experiment's traffic without a row yet, first assigned on ``run_date``."""
    return new_assignments(existing, assign(users.select(COL_USER), exp), run_date)


def served_users(users: DataFrame, exp: ExperimentConfig | None, assignments: DataFrame | None) -> DataFrame:
    """``users`` (user_id, user_idx) with the experiment and variant each is served: the recorded
    (sticky) variant inside today's traffic, nulls outside it or without an experiment."""
    if exp is None:
        return users.select(
            COL_USER,
            COL_USER_IDX,
            F.lit(None).cast("string").alias(COL_EXPERIMENT),
            F.lit(None).cast("string").alias(COL_VARIANT),
        )
    served = served_today(users.select(COL_USER), exp, assignments)
    return (
        users.select(COL_USER, COL_USER_IDX)
        .join(served, COL_USER, "left")
        .select(
            COL_USER,
            COL_USER_IDX,
            F.when(F.col(COL_VARIANT).isNotNull(), F.lit(exp.name)).cast("string").alias(COL_EXPERIMENT),
            F.col(COL_VARIANT).cast("string").alias(COL_VARIANT),
        )
    )


def users_of(served: DataFrame, recipe: Recipe) -> DataFrame:
    """The rows of ``served`` (:func:`served_users`) that ``recipe`` ranks."""
    named = [v for v in recipe.serves if v is not None]
    cond = F.col(COL_VARIANT).isin(*named) if named else F.lit(False)
    if None in recipe.serves:
        cond = cond | F.col(COL_VARIANT).isNull()
    return served.where(cond)
