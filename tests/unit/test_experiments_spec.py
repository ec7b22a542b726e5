"""Experiment config: what the models refuse (with messages naming the problem), and how a variant's
overrides resolve into a recipe."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from watchnext.config import RecommendConfig
from watchnext.experiments.spec import (
    ExperimentConfig,
    VariantConfig,
    resolve_experiment,
    resolve_variant,
    validate_experiments,
)

BASE = RecommendConfig()


def _exp(**kw: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "name": "ranker-test",
        "salt": "2026-01-ranker",
        "enabled": True,
        "traffic": 0.5,
        "variants": [
            {"name": "control", "share": 0.5},
            {"name": "linear", "share": 0.5, "recommend": {"ranker": "linear"}},
        ],
    }
    data.update(kw)
    return data


def _error(data: dict[str, Any]) -> str:
    with pytest.raises(ValidationError) as exc:
        ExperimentConfig.model_validate(data)
    return str(exc.value)


def test_yaml_entry_loads_with_defaults() -> None:
    text = """
    - name: blend-vs-ease
      salt: s1
      enabled: true
      traffic: 0.2
      variants:
        - {name: control, share: 0.34}
        - name: ease_only
          share: 0.33
          recommend: {weights: {ease: 1.0, popular: 0.05}, max_per_cluster: null}
        - name: deeper
          share: 0.33
          recommend: {learned: {max_depth: 6}}
    """
    (exp,) = [ExperimentConfig.model_validate(e) for e in yaml.safe_load(text)]
    assert exp.shares == {"control": 0.34, "ease_only": 0.33, "deeper": 0.33}
    assert [v.name for v in exp.treatments] == ["ease_only", "deeper"]
    assert (exp.control, exp.metric, exp.alpha, exp.srm_alpha, exp.min_users_per_variant) == (
        "control",
        "ndcg",
        0.05,
        0.001,
        100,
    )
    assert exp.variant("deeper").recommend == {"learned": {"max_depth": 6}}
    with pytest.raises(KeyError, match="no variant 'nope'"):
        exp.variant("nope")
    assert (
        ExperimentConfig.model_validate({k: v for k, v in _exp().items() if k != "enabled"}).enabled is False
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {
                "variants": [
                    {"name": "control", "share": 0.5},
                    {"name": "b", "share": 0.4, "recommend": {"n": 5}},
                ]
            },
            "shares must sum to 1, got 0.9",
        ),
        (
            {"variants": [{"name": "control", "share": 0.5}, {"name": "control", "share": 0.5}]},
            "duplicate variant name",
        ),
        (
            {"variants": [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "recommend": {"n": 5}}]},
            "control variant 'control' is not among the variants",
        ),
        (
            {
                "variants": [
                    {"name": "control", "share": 0.5, "recommend": {"n": 5}},
                    {"name": "b", "share": 0.5, "recommend": {"n": 6}},
                ]
            },
            "control variant 'control' must not override anything",
        ),
        (
            {"variants": [{"name": "control", "share": 0.5}, {"name": "b", "share": 0.5}]},
            "variant 'b' has no recommend overrides",
        ),
        ({"variants": [{"name": "control", "share": 1.0}]}, "at least 2 items"),
        (
            {
                "variants": [
                    {"name": "control", "share": 0.5},
                    {"name": "B!", "share": 0.5, "recommend": {"n": 5}},
                ]
            },
            "variant name must be non-empty",
        ),
        (
            {
                "variants": [
                    {"name": "control", "share": 0.0},
                    {"name": "b", "share": 1.0, "recommend": {"n": 5}},
                ]
            },
            "greater than 0",
        ),
        ({"name": "Ranker Test"}, "experiment name must be non-empty"),
        ({"name": ""}, "experiment name must be non-empty"),
        ({"salt": ""}, "at least 1 character"),
        ({"salt": "a:b"}, "salt may not contain ':'"),
        ({"traffic": 0.0}, "greater than 0"),
        ({"traffic": 1.5}, "less than or equal to 1"),
        ({"alpha": 1.0}, "less than 1"),
        ({"colour": "red"}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_experiments_are_refused(change: dict[str, Any], message: str) -> None:
    assert message in _error(_exp(**change))


def test_shares_sum_within_tolerance() -> None:
    thirds = [
        {"name": "control", "share": 1 / 3},
        {"name": "b", "share": 1 / 3, "recommend": {"n": 5}},
        {"name": "c", "share": 1 / 3, "recommend": {"n": 6}},
    ]
    assert len(ExperimentConfig.model_validate(_exp(variants=thirds)).variants) == 3
    thirds[2]["share"] = 1 / 3 + 1e-8
    assert "shares must sum to 1" in _error(_exp(variants=thirds))


def test_custom_control_name() -> None:
    variants = [{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "recommend": {"n": 5}}]
    exp = ExperimentConfig.model_validate(_exp(control="a", variants=variants))
    assert [v.name for v in exp.treatments] == ["b"]


def _variant(overrides: dict[str, Any], name: str = "v") -> VariantConfig:
    return VariantConfig(name=name, share=0.5, recommend=overrides)


def test_resolve_replaces_leaves_and_merges_sections() -> None:
    got = resolve_variant(
        BASE,
        _variant(
            {
                "ranker": "linear",
                "n": 20,
                "sources": ["ease", "popular"],
                "weights": {"ease": 1.0, "popular": 0.05},
                "max_per_cluster": None,
                "learned": {"max_depth": 6},
                "tuning": {"enabled": False},
            }
        ),
    )
    assert isinstance(got, RecommendConfig)
    assert (got.ranker, got.n, got.sources, got.max_per_cluster) == ("linear", 20, ["ease", "popular"], None)
    assert got.weights == {"ease": 1.0, "popular": 0.05}  # replaced whole, not merged into the base
    # a nested section changes only the keys named
    assert got.learned == BASE.learned.model_copy(update={"max_depth": 6})
    assert got.tuning == BASE.tuning.model_copy(update={"enabled": False})
    # everything not named is the base's
    untouched = set(RecommendConfig.model_fields) - {
        "ranker",
        "n",
        "sources",
        "weights",
        "max_per_cluster",
        "learned",
        "tuning",
    }
    assert {k: getattr(got, k) for k in untouched} == {k: getattr(BASE, k) for k in untouched}
    # the base is not modified
    assert BASE == RecommendConfig()


def test_resolve_control_is_the_base() -> None:
    assert resolve_variant(BASE, _variant({})) is BASE


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"colour": "red"}, "recommend.colour: unknown key"),
        ({"learned": {"depth": 3}}, "recommend.learned.depth: unknown key"),
        ({"n": 0}, "recommend.n: Input should be greater than or equal to 1"),
        ({"ranker": "magic"}, "recommend.ranker: Input should be 'learned' or 'linear'"),
        ({"weights": {"svd": 1.0}}, "unknown source(s) ['svd']"),
        ({"n": 500}, "recommend.candidates (100) < recommend.n (500)"),
        ({"ease": 3}, "recommend.ease"),
    ],
)
def test_resolve_names_experiment_variant_and_key(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as exc:
        resolve_variant(BASE, _variant(overrides, name="bad_one"), experiment="exp-x")
    text = str(exc.value)
    assert "variant 'bad_one' of experiment 'exp-x'" in text
    assert message in text


@pytest.mark.parametrize(
    "overrides", [{"n": 10}, {"learned": {"max_depth": 4}}, {"weights": dict(BASE.weights)}]
)
def test_variant_that_changes_nothing_is_an_error(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="variant 'same' of experiment 'exp-x' changes nothing"):
        resolve_variant(BASE, _variant(overrides, name="same"), experiment="exp-x")


def test_resolve_experiment_and_validate() -> None:
    exp = ExperimentConfig.model_validate(_exp())
    recipes = resolve_experiment(BASE, exp)
    assert list(recipes) == ["control", "linear"]
    assert recipes["control"] == BASE and recipes["linear"].ranker == "linear"
    validate_experiments(BASE, [exp])
    validate_experiments(BASE, [])
    # the same experiment against a base that already is linear: the variant changes nothing
    with pytest.raises(ValueError, match="variant 'linear' of experiment 'ranker-test' changes nothing"):
        validate_experiments(BASE.model_copy(update={"ranker": "linear"}), [exp])


def test_validate_refuses_shared_names_and_salts() -> None:
    a = ExperimentConfig.model_validate(_exp())
    b = ExperimentConfig.model_validate(_exp(name="other"))
    with pytest.raises(ValueError, match=r"duplicate experiment salt\(s\) \['2026-01-ranker'\]"):
        validate_experiments(BASE, [a, b])
    c = ExperimentConfig.model_validate(_exp(salt="other-salt"))
    with pytest.raises(ValueError, match=r"duplicate experiment name\(s\) \['ranker-test'\]"):
        validate_experiments(BASE, [a, c])
    other = ExperimentConfig.model_validate(_exp(name="other", salt="other-salt"))
    with pytest.raises(ValueError, match=r"\['ranker-test', 'other'\] are all enabled; one experiment runs"):
        validate_experiments(BASE, [a, other])
    validate_experiments(BASE, [a, other.model_copy(update={"enabled": False})])


def test_a_variant_changes_only_what_one_run_can_serve() -> None:
    def exp(overrides: dict[str, object]) -> ExperimentConfig:
        return ExperimentConfig.model_validate(
            _exp(
                variants=[
                    {"name": "control", "share": 0.5},
                    {"name": "v", "share": 0.5, "recommend": overrides},
                ]
            )
        )

    with pytest.raises(ValueError, match=r"changes recommend.ease: the sources are fitted once per run"):
        validate_experiments(BASE, [exp({"ease": {"reg": 100.0}})])
    with pytest.raises(ValueError, match=r"adds source\(s\) \['ncf'\] the base recipe does not fit"):
        validate_experiments(BASE, [exp({"sources": [*BASE.sources, "ncf"]})])
    with pytest.raises(ValueError, match=r"leaves sources out under the learned ranker"):
        validate_experiments(BASE, [exp({"ranker": "learned", "sources": ["als", "popular"], "n": 5})])
    linear_base = BASE.model_copy(update={"ranker": "linear"})
    with pytest.raises(ValueError, match=r"asks for the learned ranker, which a run trains only with"):
        validate_experiments(linear_base, [exp({"ranker": "learned"})])
    validate_experiments(BASE, [exp({"sources": ["als", "popular"], "max_per_cluster": 2, "n": 5})])


class _Root(BaseModel):
    """The way the root Config is meant to carry experiments (a field and a model validator)."""

    model_config = ConfigDict(extra="forbid")

    recommend: RecommendConfig = Field(default_factory=RecommendConfig)
    experiments: list[ExperimentConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _experiments(self) -> _Root:
        validate_experiments(self.recommend, self.experiments)
        return self


def test_errors_surface_when_a_root_config_loads() -> None:
    assert _Root.model_validate({"experiments": [_exp()]}).experiments[0].name == "ranker-test"
    bad = _exp(
        variants=[{"name": "control", "share": 0.5}, {"name": "b", "share": 0.5, "recommend": {"nn": 3}}]
    )
    with pytest.raises(
        ValidationError, match="variant 'b' of experiment 'ranker-test'.*recommend.nn: unknown key"
    ):
        _Root.model_validate({"experiments": [bad]})
    # the variant is checked against the configured base, not the defaults
    with pytest.raises(ValidationError, match="changes nothing"):
        _Root.model_validate({"recommend": {"ranker": "linear"}, "experiments": [_exp()]})
