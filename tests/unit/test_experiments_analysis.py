"""Experiment statistics against references: Welch's test against scipy and R's published example,
the bootstrap against an exact small case and the delta method, the SRM test against the chi-square
formula, the decision rule, and the A/A false-positive rate over many salts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from watchnext.experiments.analysis import (
    OUTPUT_COLUMNS,
    analyse,
    bootstrap_lift,
    compare,
    decide,
    srm,
    welch_test,
)
from watchnext.experiments.assignment import assign_python
from watchnext.experiments.spec import ExperimentConfig

# R's `t.test(extra ~ group, data = sleep)` (Student's sleep data, Welch by default), as printed in R:
# t = -1.8608, df = 17.776, p-value = 0.07939, 95 percent CI -3.3654832 0.2054832 (group 1 - group 2).
SLEEP_1 = [0.7, -1.6, -0.2, -1.2, -0.1, 3.4, 3.7, 0.8, 0.0, 2.0]
SLEEP_2 = [1.9, 0.8, 1.1, 0.1, -0.1, 4.4, 5.5, 1.6, 4.6, 3.4]

FIXED = [
    # (a, b): hand-written, unequal sizes and variances, ties, a negative difference
    ([0.1, 0.2, 0.15, 0.3, 0.25], [0.3, 0.35, 0.2, 0.5, 0.45, 0.4, 0.38]),
    ([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0]),
    ([0.0, 0.0, 1.0, 0.5, 0.5, 0.25, 0.75, 1.0], [0.0, 0.2]),
    ([10.0, 12.0, 11.5, 9.0, 10.5, 11.0], [8.0, 9.5, 7.0, 8.5, 9.0, 8.8, 7.9, 9.1, 8.3]),
    (SLEEP_1, SLEEP_2),
]


def _exp(**kw: Any) -> ExperimentConfig:
    data: dict[str, Any] = {
        "name": "e",
        "salt": "s",
        "variants": [
            {"name": "control", "share": 0.5},
            {"name": "b", "share": 0.5, "recommend": {"ranker": "linear"}},
        ],
    }
    return ExperimentConfig.model_validate(data | kw)


# -------------------------------------------------------------------------------------------- Welch
def test_welch_matches_r_published_example() -> None:
    res = compare(SLEEP_1, SLEEP_2, alpha=0.05)
    assert res["mean_a"] == pytest.approx(0.75) and res["mean_b"] == pytest.approx(2.33)
    assert res["diff"] == pytest.approx(1.58)
    assert res["t"] == pytest.approx(1.8608, abs=5e-5)
    assert res["df"] == pytest.approx(17.776, abs=5e-4)
    assert res["p_value"] == pytest.approx(0.07939, abs=5e-6)
    assert (res["diff_low"], res["diff_high"]) == pytest.approx((-0.2054832, 3.3654832), abs=5e-8)
    assert (res["n_a"], res["n_b"]) == (10, 10)


@pytest.mark.parametrize(("a", "b"), FIXED)
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.01])
def test_welch_matches_scipy_on_fixed_numbers(a: list[float], b: list[float], alpha: float) -> None:
    ref = stats.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval(1 - alpha)
    got = welch_test(a, b, alpha)
    assert got["t"] == pytest.approx(ref.statistic, rel=1e-10)
    assert got["df"] == pytest.approx(ref.df, rel=1e-10)
    assert got["p_value"] == pytest.approx(ref.pvalue, rel=1e-9)
    assert (got["diff_low"], got["diff_high"]) == pytest.approx((ci.low, ci.high), rel=1e-10)
    assert got["diff"] == pytest.approx(np.mean(b) - np.mean(a), rel=1e-12)


def test_welch_matches_scipy_on_random_samples() -> None:
    rng = np.random.default_rng(7)
    for _ in range(20):
        a = rng.exponential(0.3, size=rng.integers(2, 300))
        b = rng.beta(0.5, 2.0, size=rng.integers(2, 300))
        ref = stats.ttest_ind(b, a, equal_var=False)
        ci = ref.confidence_interval(0.95)
        got = welch_test(a, b)
        assert (got["t"], got["p_value"]) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)
        assert (got["diff_low"], got["diff_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)


def test_degenerate_groups_are_explicit() -> None:
    one = compare([0.5], [0.2, 0.4, 0.6])  # < 2 users: no test, but the means and diff exist
    assert one["n_a"] == 1 and one["diff"] == pytest.approx(-0.1)
    assert all(math.isnan(one[k]) for k in ("p_value", "t", "df", "diff_low", "diff_high", "lift_low"))
    empty = compare([], [0.2, 0.4])
    assert empty["n_a"] == 0 and math.isnan(empty["mean_a"]) and math.isnan(empty["diff"])
    assert math.isnan(empty["lift"]) and math.isnan(empty["p_value"])
    flat = compare([0.3] * 5, [0.3] * 7)  # no variance: scipy's 0/0; NaN here too, not "significant"
    assert flat["diff"] == 0.0 and math.isnan(flat["p_value"])
    zero = compare([0.0, 0.0, 0.0], [0.1, 0.2, 0.3])  # control mean 0: lift undefined, the test is not
    assert math.isnan(zero["lift"]) and math.isnan(zero["lift_low"]) and not math.isnan(zero["p_value"])
    with pytest.raises(ValueError, match="non-finite"):
        compare([0.1, float("nan")], [0.2, 0.3])


# ---------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_lift_exact_small_case() -> None:
    # a = [1, 3]: a resampled mean is 1, 2 or 3 (1/4, 1/2, 1/4); b = [2, 2] always has mean 2. The lift
    # 2/mean_a - 1 is -1/3 or 1 with probability 1/4 each: the 2.5% and 97.5% percentiles are exactly those.
    low, high = bootstrap_lift([1.0, 3.0], [2.0, 2.0], alpha=0.05, n_boot=2000, seed=3)
    assert (low, high) == pytest.approx((-1 / 3, 1.0))
    # 80% interval: the 10% and 90% percentiles still fall in the 25% tails
    assert bootstrap_lift([1.0, 3.0], [2.0, 2.0], alpha=0.2, n_boot=2000, seed=3) == pytest.approx(
        (-1 / 3, 1.0)
    )


def test_bootstrap_lift_agrees_with_delta_method_and_is_seeded() -> None:
    rng = np.random.default_rng(11)
    a = rng.beta(2.0, 5.0, size=5000)  # mean ~0.286
    b = rng.beta(2.2, 5.0, size=4000)  # mean ~0.306: a ~7% lift
    res = compare(a, b, alpha=0.05, n_boot=2000, seed=1)
    ma, mb = a.mean(), b.mean()
    assert res["lift"] == pytest.approx(mb / ma - 1)
    # delta method for the ratio of two independent means
    se = (mb / ma) * math.sqrt(a.var(ddof=1) / (len(a) * ma**2) + b.var(ddof=1) / (len(b) * mb**2))
    z = stats.norm.ppf(0.975)
    assert res["lift_low"] < res["lift"] < res["lift_high"]
    assert res["lift_low"] == pytest.approx(res["lift"] - z * se, abs=0.15 * z * se)
    assert res["lift_high"] == pytest.approx(res["lift"] + z * se, abs=0.15 * z * se)
    again = compare(a, b, alpha=0.05, n_boot=2000, seed=1)
    assert (again["lift_low"], again["lift_high"]) == (res["lift_low"], res["lift_high"])
    other = compare(a, b, alpha=0.05, n_boot=2000, seed=2)
    assert (other["lift_low"], other["lift_high"]) != (res["lift_low"], res["lift_high"])
    assert math.isnan(compare(a, b, n_boot=0)["lift_low"])


# ---------------------------------------------------------------------------------------------- SRM
def test_srm_against_the_chi_square_formula() -> None:
    # 3 variants, 2 degrees of freedom: the chi-square survival function is exp(-x/2)
    chi2, p = srm({"control": 520, "b": 290, "c": 190}, {"control": 0.5, "b": 0.3, "c": 0.2})
    expected = 20**2 / 500 + 10**2 / 300 + 10**2 / 200
    assert chi2 == pytest.approx(expected) and p == pytest.approx(math.exp(-expected / 2))
    # 2 variants, 1 degree of freedom: erfc(sqrt(x/2))
    chi2, p = srm({"control": 5200, "b": 4800}, {"control": 0.5, "b": 0.5})
    assert chi2 == pytest.approx(16.0) and p == pytest.approx(math.erfc(math.sqrt(8.0)))
    # a configured variant without users counts as 0
    chi2, _ = srm({"control": 10}, {"control": 0.5, "b": 0.5})
    assert chi2 == pytest.approx(10.0)
    assert all(math.isnan(x) for x in srm({}, {"control": 0.5, "b": 0.5}))
    with pytest.raises(ValueError, match=r"observed variant\(s\) \['x'\]"):
        srm({"control": 5, "x": 5}, {"control": 0.5, "b": 0.5})


def test_srm_flags_violated_shares_and_passes_fair_ones() -> None:
    shares = {"control": 0.5, "b": 0.3, "c": 0.2}
    rng = np.random.default_rng(5)
    fair_p = []
    for _ in range(200):
        counts = rng.multinomial(20_000, list(shares.values()))
        fair_p.append(srm(dict(zip(shares, counts.tolist(), strict=True)), shares)[1])
    assert sum(p < 0.001 for p in fair_p) <= 2  # 0.2 expected
    # 51.5% / 28.5% / 20%: a 1.5-point leak from b to control, on 20,000 users
    _, p = srm({"control": 10_300, "b": 5_700, "c": 4_000}, shares)
    assert p < 0.001
    # a variant dropped entirely for some users (e.g. a crash in its recipe): 10% of c lost
    _, p = srm({"control": 10_000, "b": 6_000, "c": 3_600}, shares)
    assert p < 0.001


# ----------------------------------------------------------------------------------- decide / analyse
def test_decide_rule_order() -> None:
    exp = _exp(min_users_per_variant=100)
    ok: dict[str, Any] = {"srm_p": 0.5, "n_control": 500, "n_variant": 500}
    assert decide(exp, "b", **ok, p_value=0.01, diff=0.02) == "ship b"
    assert decide(exp, "b", **ok, p_value=0.01, diff=-0.02) == "revert: b is worse"
    assert decide(exp, "b", **ok, p_value=0.2, diff=0.02) == "no significant difference"
    assert decide(exp, "b", **ok, p_value=math.nan, diff=0.0) == "no significant difference"
    assert decide(exp, "b", **(ok | {"n_variant": 99}), p_value=0.01, diff=0.02) == "too few users"
    bad = ok | {"srm_p": 0.0001, "n_variant": 5}
    assert decide(exp, "b", **bad, p_value=0.01, diff=0.02) == "invalid: sample ratio mismatch"


def _per_user(groups: dict[str, np.ndarray], extra: dict[str, np.ndarray] | None = None) -> pd.DataFrame:
    frames = []
    for variant, values in groups.items():
        frame = pd.DataFrame({"variant": variant, "ndcg": values})
        frame["user_id"] = [f"{variant}-{i}" for i in range(len(values))]
        frames.append(frame)
    out = pd.concat(frames, ignore_index=True)
    for name, values in (extra or {}).items():
        out[name] = values
    return out


def test_analyse_rows_and_verdicts() -> None:
    rng = np.random.default_rng(3)
    control = rng.beta(2, 5, 600)
    better = rng.beta(2, 5, 600) + 0.05
    exp = _exp(
        variants=[
            {"name": "control", "share": 0.4},
            {"name": "better", "share": 0.3, "recommend": {"n": 20}},
            {"name": "worse", "share": 0.3, "recommend": {"n": 5}},
        ],
    )
    groups = {"control": control[:400], "better": better[:300], "worse": rng.beta(2, 5, 300) - 0.05}
    per_user = _per_user(groups)
    per_user["recall"] = per_user["ndcg"] * 2
    per_user.loc[0, "recall"] = np.nan  # a control user without a recall value
    out = analyse(per_user, exp, ["ndcg", "recall"], n_boot=200)
    assert list(out.columns) == OUTPUT_COLUMNS
    assert list(zip(out["variant"], out["metric"], strict=True)) == [
        ("better", "ndcg"),
        ("better", "recall"),
        ("worse", "ndcg"),
        ("worse", "recall"),
    ]
    by = out.set_index(["variant", "metric"])
    assert by.loc[("better", "ndcg"), "verdict"] == "ship better"
    assert by.loc[("worse", "ndcg"), "verdict"] == "revert: worse is worse"
    assert set(by.xs("recall", level="metric")["verdict"]) == {"n/a"}
    assert by.loc[("better", "recall"), "n_control"] == 399 and by.loc[("better", "ndcg"), "n_control"] == 400
    row = by.loc[("better", "ndcg")]
    ref = stats.ttest_ind(groups["better"], groups["control"], equal_var=False)
    assert row["p_value"] == pytest.approx(ref.pvalue, rel=1e-9) and bool(row["significant"])
    assert row["control_value"] == pytest.approx(groups["control"].mean())
    assert row["lift"] == pytest.approx(groups["better"].mean() / groups["control"].mean() - 1)
    assert row["lift_low"] < row["lift"] < row["lift_high"]
    assert row["diff_low"] < row["diff"] < row["diff_high"]
    assert out["srm_ok"].all() and (out["srm_p"] == out["srm_p"].iloc[0]).all()
    assert out["srm_p"].iloc[0] == pytest.approx(
        srm({"control": 400, "better": 300, "worse": 300}, exp.shares)[1]
    )


def test_analyse_guards() -> None:
    rng = np.random.default_rng(4)
    exp = _exp()
    same = _per_user({"control": rng.beta(2, 5, 500), "b": rng.beta(2, 5, 500)})
    assert analyse(same, exp, ["ndcg"], n_boot=100)["verdict"].tolist() == ["no significant difference"]
    # users outside the traffic (no variant) are left out
    outside = pd.DataFrame({"user_id": ["x1", "x2"], "variant": [None, None], "ndcg": [9.0, 9.0]})
    with_outside = analyse(pd.concat([same, outside], ignore_index=True), exp, ["ndcg"], n_boot=100)
    pd.testing.assert_frame_equal(with_outside, analyse(same, exp, ["ndcg"], n_boot=100))
    # a clear winner on skewed groups (600 vs 400 of 50/50): invalid, whatever the metric says
    skewed = _per_user({"control": rng.beta(2, 5, 600), "b": rng.beta(2, 5, 400) + 0.2})
    row = analyse(skewed, exp, ["ndcg"], n_boot=100).iloc[0]
    assert bool(row["significant"]) and not bool(row["srm_ok"])
    assert row["verdict"] == "invalid: sample ratio mismatch"
    small = _per_user({"control": rng.beta(2, 5, 60), "b": rng.beta(2, 5, 60) + 0.3})
    assert analyse(small, exp, ["ndcg"], n_boot=100)["verdict"].tolist() == ["too few users"]
    assert analyse(small, _exp(min_users_per_variant=50), ["ndcg"], n_boot=100)["verdict"].tolist() == [
        "ship b"
    ]
    with pytest.raises(ValueError, match="primary metric 'ndcg'"):
        analyse(same, exp, ["recall"])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['recall'\]"):
        analyse(same, exp, ["ndcg", "recall"])
    with pytest.raises(ValueError, match="several rows for user"):
        analyse(pd.concat([same, same.iloc[:1]]), exp, ["ndcg"])
    with pytest.raises(ValueError, match=r"observed variant\(s\) \['zzz'\]"):
        analyse(pd.concat([same, same.iloc[:1].assign(variant="zzz", user_id="new")]), exp, ["ndcg"])


# ---------------------------------------------------------------------------------------------- A/A
def test_a_a_false_positive_rate() -> None:
    """Two identical recipes (the treatment's override equals the default n: the config models accept
    it; validate_experiments would refuse it against the base) split by the hash under 400 salts: the
    share of salts whose p-value is under 0.05 must be about 0.05 (binomial sd 0.011 at 400 salts)."""
    rng = np.random.default_rng(2024)
    n_users = 1000
    users = [f"user-{i}" for i in range(n_users)]
    # a fixed per-user metric, skewed like NDCG: many zeros and a long tail
    ndcg = np.where(rng.random(n_users) < 0.3, 0.0, rng.beta(0.7, 2.0, n_users))
    n_salts = 400
    p_values, srm_flags = [], 0
    for i in range(n_salts):
        exp = _exp(
            salt=f"aa-{i}",
            variants=[{"name": "control", "share": 0.5}, {"name": "b", "share": 0.5, "recommend": {"n": 10}}],
        )
        variants = [assign_python(u, exp) for u in users]
        row = analyse(
            pd.DataFrame({"user_id": users, "variant": variants, "ndcg": ndcg}), exp, ["ndcg"], n_boot=0
        ).iloc[0]
        p_values.append(row["p_value"])
        srm_flags += not row["srm_ok"]
    rate = float(np.mean(np.array(p_values) < 0.05))
    assert 0.01 < rate <= 0.08, rate
    assert srm_flags <= 3  # srm_alpha 0.001: 0.4 expected
    # the p-values of a valid test are uniform under the null
    assert stats.kstest(p_values, "uniform").pvalue > 0.001
