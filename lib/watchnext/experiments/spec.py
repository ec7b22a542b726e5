"""Experiment configuration: the typed ``experiments:`` entries and the recipes their variants serve.

An experiment splits (a share of) the users between variants, each a recipe: the base
``recommend:`` section with the variant's overrides merged in (:func:`resolve_variant`). The control
variant overrides nothing, so it serves the base recipe; every other variant must change something.

The models validate on their own what they can (names, shares, the control); what needs the base
recipe (unknown or invalid override keys, a variant that changes nothing, salts shared between
experiments) is checked by :func:`validate_experiments`, which the root ``Config`` calls from a model
validator so that every error surfaces when the config is loaded. This module imports nothing from
``watchnext.config`` at run time (``config`` imports it), so the recipe class is taken from the base
instance it is given.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

if TYPE_CHECKING:
    from watchnext.config import RecommendConfig

log = logging.getLogger(__name__)

_NAME = re.compile(r"[a-z0-9_-]+")
SHARE_TOLERANCE = 1e-9  # |sum of the variant shares - 1| allowed


class _Strict(BaseModel):
    # The same rules as watchnext.config's sections: an unknown key is an error.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_name(v: str, what: str) -> str:
    if not _NAME.fullmatch(v):
        raise ValueError(f"{what} must be non-empty and hold only a-z, 0-9, '_' and '-', got {v!r}")
    return v


class VariantConfig(_Strict):
    """One arm of an experiment: its share of the experiment's users and its recipe overrides.

    ``recommend`` holds overrides of ``recommend.*`` keys, nested like the section itself (e.g.
    ``{"ranker": "linear", "learned": {"max_depth": 6}}``); see :func:`resolve_variant` for how they
    merge."""

    name: str
    share: float = Field(gt=0, le=1)
    recommend: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "variant name")


class ExperimentConfig(_Strict):
    """One experiment: who is in it (``traffic``, hashed with ``salt``), the variants, and the decision.

    * ``salt``: the only input of the assignment besides the user id; a new salt reshuffles every user
      (a new experiment), the same salt reproduces every assignment on any day or cluster. It may not
      contain ``:``, the separator of the hashed key.
    * ``traffic``: the share of all users in the experiment; the others get the base recipe.
    * ``variants``: in order; their shares (of the experiment's users) sum to 1. ``control`` names the
      variant every other one is compared with; it has no overrides.
    * ``metric``, ``alpha``: the primary metric and the significance level of the decision;
      ``srm_alpha``: the level below which a sample-ratio-mismatch p-value invalidates the analysis;
      ``min_users_per_variant``: fewer scored users in control or a variant and no verdict is given.
    """

    name: str
    salt: str = Field(min_length=1)
    enabled: bool = False
    traffic: float = Field(1.0, gt=0, le=1)
    control: str = "control"
    variants: list[VariantConfig] = Field(min_length=2)
    metric: str = Field("ndcg", min_length=1)
    alpha: float = Field(0.05, gt=0, lt=1)
    srm_alpha: float = Field(0.001, gt=0, lt=1)
    min_users_per_variant: int = Field(100, ge=2)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _check_name(v, "experiment name")

    @field_validator("salt")
    @classmethod
    def _salt(cls, v: str) -> str:
        if ":" in v:
            raise ValueError(f"salt may not contain ':' (the separator of the hashed key), got {v!r}")
        return v

    @model_validator(mode="after")
    def _variants(self) -> ExperimentConfig:
        names = [v.name for v in self.variants]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"experiment '{self.name}': duplicate variant name(s) {dupes}")
        if self.control not in names:
            raise ValueError(
                f"experiment '{self.name}': control variant '{self.control}' is not among the "
                f"variants {names}"
            )
        total = math.fsum(v.share for v in self.variants)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise ValueError(
                f"experiment '{self.name}': variant shares must sum to 1, got {total:.12g} "
                f"({', '.join(f'{v.name}={v.share}' for v in self.variants)})"
            )
        for v in self.variants:
            if v.name == self.control and v.recommend:
                raise ValueError(
                    f"experiment '{self.name}': the control variant '{v.name}' must not override anything "
                    f"(it serves the base recipe), got {sorted(v.recommend)}"
                )
            if v.name != self.control and not v.recommend:
                raise ValueError(
                    f"experiment '{self.name}': variant '{v.name}' has no recommend overrides, "
                    "so it changes nothing"
                )
        return self

    @property
    def shares(self) -> dict[str, float]:
        """``{variant name: share}`` in config order."""
        return {v.name: v.share for v in self.variants}

    @property
    def treatments(self) -> list[VariantConfig]:
        """The variants other than the control, in config order."""
        return [v for v in self.variants if v.name != self.control]

    def variant(self, name: str) -> VariantConfig:
        """The variant called ``name`` (``KeyError`` naming the known ones if there is none)."""
        for v in self.variants:
            if v.name == name:
                return v
        raise KeyError(f"experiment '{self.name}' has no variant {name!r}; variants: {list(self.shares)}")


def _merge(
    base: Mapping[str, Any], overrides: Mapping[str, Any], sections: Mapping[str, Any]
) -> dict[str, Any]:
    """``base`` with ``overrides`` applied: keys naming a nested config section (a dict in ``sections``)
    merge key by key, every other value replaces the base value whole."""
    out = dict(base)
    for k, v in overrides.items():
        section = sections.get(k)
        if isinstance(section, dict) and isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v, section)
        else:
            out[k] = v
    return out


def _sections(model: BaseModel) -> dict[str, Any]:
    """The nested-section structure of a model: ``{field: {subfield: ...}}`` for model-valued fields."""
    return {
        name: _sections(value)
        for name in type(model).model_fields
        if isinstance(value := getattr(model, name), BaseModel)
    }


def resolve_variant(
    base: RecommendConfig, variant: VariantConfig, *, experiment: str | None = None
) -> RecommendConfig:
    """The recipe ``variant`` serves: ``base`` with the variant's overrides merged in, validated.

    Merge rule: an override of a nested section (``ease``, ``learned``, ``tuning``) given as a mapping
    changes only the keys it names (``{"learned": {"max_depth": 6}}`` keeps the other ``learned``
    keys); any other value replaces the base value whole, mappings included: ``{"weights": {"ease":
    1.0}}`` is the blend of EASE alone, not the base weights with EASE's changed.

    Raises ``ValueError`` naming the experiment (when given), the variant and the key for an unknown
    key or an invalid value, and ``"variant 'x' of experiment 'y' changes nothing"`` for a variant
    with overrides whose recipe equals the base. A variant without overrides (the control) returns
    ``base`` itself.
    """
    where = f"variant '{variant.name}'" + (f" of experiment '{experiment}'" if experiment else "")
    if not variant.recommend:
        return base
    merged = _merge(base.model_dump(), variant.recommend, _sections(base))
    try:
        resolved = type(base).model_validate(merged)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"]) or "<root>"
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            problems.append(f"recommend.{key}: {msg}" if key != "<root>" else msg)
        raise ValueError(f"{where}: invalid recommend overrides: {'; '.join(problems)}") from None
    if resolved == base:
        raise ValueError(f"{where} changes nothing: its overrides equal the base recipe")
    return resolved


# The recommend keys a variant may change: how the published pool is ranked, capped and cut. The sources
# themselves are fitted once per run (ease, learned, tuning, candidates, item_source, ... change that
# fit), so a variant cannot change them; it can leave sources out (``sources``, a subset of the base's).
VARIABLE_KEYS = ("n", "ranker", "weights", "sources", "max_per_cluster", "cold_threshold", "cold_weights")


def check_servable(base: RecommendConfig, exp: ExperimentConfig) -> None:
    """Raise ``ValueError`` naming the key when a variant of ``exp`` changes what one run cannot serve
    side by side: a key outside :data:`VARIABLE_KEYS`, a source the base recipe does not fit, or the
    learned ranker where the base recipe trains none (``recommend.ranker: linear`` or tuning off)."""
    for v in exp.treatments:
        where = f"variant '{v.name}' of experiment '{exp.name}'"
        fixed = sorted(set(v.recommend) - set(VARIABLE_KEYS))
        if fixed:
            raise ValueError(
                f"{where} changes recommend.{', recommend.'.join(fixed)}: the sources are fitted once per "
                f"run, so a variant may change only {', '.join(VARIABLE_KEYS)}"
            )
        rc = resolve_variant(base, v, experiment=exp.name)
        extra = sorted(set(rc.sources) - set(base.sources))
        if extra:
            raise ValueError(
                f"{where} adds source(s) {extra} the base recipe does not fit; it may leave sources out"
            )
        learned = v.recommend.get("ranker") == "learned"
        if learned and "sources" in v.recommend:
            raise ValueError(
                f"{where} leaves sources out under the learned ranker, which is trained on all of them"
            )
        if learned and (base.ranker != "learned" or not base.tuning.enabled):
            raise ValueError(
                f"{where} asks for the learned ranker, which a run trains only with recommend.ranker: "
                "learned and recommend.tuning.enabled"
            )


def resolve_experiment(base: RecommendConfig, exp: ExperimentConfig) -> dict[str, RecommendConfig]:
    """``{variant name: recipe}`` of every variant of ``exp``, in config order (the control: ``base``)."""
    return {v.name: resolve_variant(base, v, experiment=exp.name) for v in exp.variants}


def validate_experiments(base: RecommendConfig, experiments: Sequence[ExperimentConfig]) -> None:
    """Check what the single models cannot: experiment names and salts are unique (two experiments
    with one salt would assign every user the same way in both, not independently), and every variant
    resolves against ``base`` (:func:`resolve_variant`). Raises ``ValueError`` naming the problem.

    Meant for the root config's model validator, e.g.::

        experiments: list[ExperimentConfig] = Field(default_factory=list)

        @model_validator(mode="after")
        def _experiments(self) -> Config:
            validate_experiments(self.recommend, self.experiments)
            return self
    """
    for attr in ("name", "salt"):
        values = [getattr(e, attr) for e in experiments]
        dupes = sorted({v for v in values if values.count(v) > 1})
        if dupes:
            raise ValueError(f"experiments: duplicate experiment {attr}(s) {dupes}")
    for exp in experiments:
        resolve_experiment(base, exp)
        check_servable(base, exp)
    enabled = [e.name for e in experiments if e.enabled]
    if len(enabled) > 1:
        raise ValueError(
            f"experiments: {enabled} are all enabled; one experiment runs at a time (each user's list "
            "carries one experiment and variant)"
        )
