"""Offline analysis of an experiment: each variant against the control, per metric, and the verdict.

Every test user belongs to exactly one variant (a between-user comparison of independent groups).
For a metric with per-user values ``a`` (control) and ``b`` (a variant):

* the difference of the means ``mean_b - mean_a`` with Welch's t-test (unequal variances): its
  p-value and confidence interval, the same numbers as ``scipy.stats.ttest_ind(b, a,
  equal_var=False)`` and its ``confidence_interval``;
* the relative lift ``diff / mean_a`` with a percentile bootstrap interval (each group resampled on
  its own, seeded);
* a sample-ratio-mismatch guard: the observed users per variant against the configured shares
  (chi-square goodness of fit). A mismatch means the groups were not formed by the hash as
  configured (a bug, a filter that depends on the variant, shares changed mid-experiment), so no
  difference between them can be trusted.

The decision rule (:func:`decide`) reads the primary metric only; docs/experiments.md says why these
tests. Numpy/scipy/pandas only: the per-user frame is small (one row per test user).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from watchnext.constants import COL_USER
from watchnext.experiments.spec import ExperimentConfig

log = logging.getLogger(__name__)

COL_VARIANT = "variant"  # the column assignment.served_variants writes (no Spark import here)
_BOOT_CELLS = 1 << 22  # resampled values held at once by the bootstrap (32 MiB of float64)
OUTPUT_COLUMNS = [
    "experiment",
    "variant",
    "control",
    "metric",
    "n_control",
    "n_variant",
    "control_value",
    "variant_value",
    "diff",
    "diff_low",
    "diff_high",
    "lift",
    "lift_low",
    "lift_high",
    "p_value",
    "significant",
    "srm_chi2",
    "srm_p",
    "srm_ok",
    "verdict",
]
NOT_PRIMARY = "n/a"


def _values(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64).ravel()
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} holds non-finite values; drop users without a value first")
    return arr


def welch_test(a: Any, b: Any, alpha: float = 0.05) -> dict[str, float]:
    """Welch's two-sample t-test of ``mean(b) - mean(a)``, two-sided.

    Returns ``diff``, ``se``, ``t``, ``df`` (Welch-Satterthwaite), ``p_value`` and the ``1 - alpha``
    interval ``diff_low``/``diff_high`` (``diff +- t_{1-alpha/2, df} * se``): the statistic, p-value
    and interval of ``scipy.stats.ttest_ind(b, a, equal_var=False)``. With fewer than 2 users in a
    group, or no variance in either (``se == 0``), the test is undefined: ``t``, ``df``, ``p_value``
    and the interval are NaN (``diff`` is still the difference of the means when both groups have
    users)."""
    a, b = _values(a, "a"), _values(b, "b")
    n_a, n_b = len(a), len(b)
    nan = math.nan
    diff = float(b.mean() - a.mean()) if n_a and n_b else nan
    out = {"diff": diff, "se": nan, "t": nan, "df": nan, "p_value": nan, "diff_low": nan, "diff_high": nan}
    if n_a < 2 or n_b < 2:
        return out
    s_a, s_b = a.var(ddof=1) / n_a, b.var(ddof=1) / n_b
    se = math.sqrt(s_a + s_b)
    if se == 0.0:
        return out | {"se": 0.0}
    df = (s_a + s_b) ** 2 / (s_a**2 / (n_a - 1) + s_b**2 / (n_b - 1))
    t = diff / se
    half = float(stats.t.ppf(1.0 - alpha / 2.0, df)) * se
    return {
        "diff": diff,
        "se": se,
        "t": float(t),
        "df": float(df),
        "p_value": float(2.0 * stats.t.sf(abs(t), df)),
        "diff_low": diff - half,
        "diff_high": diff + half,
    }


def _boot_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement, size ``len(x)``), in chunks of bounded memory."""
    n = len(x)
    chunk = max(1, _BOOT_CELLS // n)
    parts = []
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        parts.append(x[rng.integers(0, n, size=(size, n))].mean(axis=1))
    return np.concatenate(parts)


def bootstrap_lift(
    a: Any, b: Any, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap ``1 - alpha`` interval of the relative lift ``mean(b) / mean(a) - 1``.

    Each group is resampled on its own (the groups are independent), ``n_boot`` times, with
    ``numpy.random.default_rng(seed)``: the same inputs and seed give the same interval. NaN when a
    group has fewer than 2 users, ``n_boot`` is 0, or a resampled control mean is 0 (the lift is
    unbounded there: a control whose mean can be 0 has no meaningful relative lift)."""
    a, b = _values(a, "a"), _values(b, "b")
    if len(a) < 2 or len(b) < 2 or n_boot < 1:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    mean_a = _boot_means(a, n_boot, rng)
    mean_b = _boot_means(b, n_boot, rng)
    if (mean_a == 0).any():
        return math.nan, math.nan
    lifts = mean_b / mean_a - 1.0
    low, high = np.percentile(lifts, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return float(low), float(high)


def compare(a: Any, b: Any, alpha: float = 0.05, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """Variant values ``b`` against control values ``a`` (one value per user, finite).

    Returns ``n_a``, ``n_b``, ``mean_a``, ``mean_b``, ``diff`` (``mean_b - mean_a``), ``diff_low``,
    ``diff_high``, ``t``, ``df``, ``p_value`` (:func:`welch_test`), ``lift`` (``diff / mean_a``; NaN
    when ``mean_a`` is 0 or a group is empty) and ``lift_low``/``lift_high`` (:func:`bootstrap_lift`).
    Groups with fewer than 2 users give a NaN p-value and intervals."""
    a, b = _values(a, "a"), _values(b, "b")
    mean_a = float(a.mean()) if len(a) else math.nan
    mean_b = float(b.mean()) if len(b) else math.nan
    test = welch_test(a, b, alpha)
    lift = test["diff"] / mean_a if mean_a and not math.isnan(mean_a) else math.nan
    lift_low, lift_high = (
        (math.nan, math.nan) if math.isnan(lift) else bootstrap_lift(a, b, alpha, n_boot, seed)
    )
    return {
        "n_a": len(a),
        "n_b": len(b),
        "mean_a": mean_a,
        "mean_b": mean_b,
        "diff": test["diff"],
        "diff_low": test["diff_low"],
        "diff_high": test["diff_high"],
        "t": test["t"],
        "df": test["df"],
        "p_value": test["p_value"],
        "lift": lift,
        "lift_low": lift_low,
        "lift_high": lift_high,
    }


def srm(observed_counts: Mapping[str, int], shares: Mapping[str, float]) -> tuple[float, float]:
    """Sample-ratio-mismatch test: chi-square goodness of fit of the users per variant against the
    configured shares (``scipy.stats.chisquare``, ``len(shares) - 1`` degrees of freedom). A variant
    of ``shares`` missing from ``observed_counts`` has 0 users; a variant not in ``shares`` is an
    error. Returns ``(chi2, p)``; ``(nan, nan)`` when there are no users."""
    unknown = sorted(set(observed_counts) - set(shares))
    if unknown:
        raise ValueError(f"observed variant(s) {unknown} are not among the configured {sorted(shares)}")
    names = list(shares)
    observed = np.array([observed_counts.get(n, 0) for n in names], dtype=np.float64)
    total = observed.sum()
    if total == 0:
        return math.nan, math.nan
    weights = np.array([shares[n] for n in names], dtype=np.float64)
    expected = total * weights / weights.sum()  # shares sum to 1 up to rounding; chisquare wants it exact
    chi2, p = stats.chisquare(observed, expected)
    return float(chi2), float(p)


def decide(
    exp: ExperimentConfig,
    variant: str,
    *,
    srm_p: float,
    n_control: int,
    n_variant: int,
    p_value: float,
    diff: float,
) -> str:
    """The verdict on ``variant`` against the control for the primary metric, the first rule that
    applies: ``"invalid: sample ratio mismatch"`` (``srm_p < exp.srm_alpha``), ``"too few users"``
    (control or variant under ``exp.min_users_per_variant``), ``"ship <variant>"`` (``p_value <
    exp.alpha`` and ``diff > 0``), ``"revert: <variant> is worse"`` (significant and ``diff < 0``),
    else ``"no significant difference"`` (a NaN p-value is not significant). Higher is better for the
    metric."""
    if not math.isnan(srm_p) and srm_p < exp.srm_alpha:
        return "invalid: sample ratio mismatch"
    if min(n_control, n_variant) < exp.min_users_per_variant:
        return "too few users"
    significant = not math.isnan(p_value) and p_value < exp.alpha
    if significant and diff > 0:
        return f"ship {variant}"
    if significant and diff < 0:
        return f"revert: {variant} is worse"
    return "no significant difference"


def analyse(
    per_user: pd.DataFrame,
    exp: ExperimentConfig,
    metrics: Sequence[str],
    *,
    col_user: str = COL_USER,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Every variant of ``exp`` against its control on every metric.

    ``per_user``: one row per test user: ``col_user``, ``variant`` (the variant the user was served;
    null for users outside the traffic, who are left out) and one column per metric (NaN: the user has
    no value for that metric and is left out of that metric only). ``metrics`` must include
    ``exp.metric``, the primary one.

    Returns one row per (treatment variant in config order, metric in the given order) with the
    columns :data:`OUTPUT_COLUMNS`: the group sizes and means, ``diff`` with its Welch interval, the
    ``lift`` with its bootstrap interval, ``p_value``, ``significant`` (``p_value < exp.alpha``), the
    sample-ratio test over all the users of ``per_user`` (the same on every row; ``srm_ok`` is
    ``srm_p >= exp.srm_alpha``) and ``verdict``: :func:`decide` on the primary metric's rows,
    ``"n/a"`` on the others (they are reported, not decided on). No correction for several treatments
    or metrics is applied: ``significant`` is per comparison.
    """
    metrics = list(metrics)
    if exp.metric not in metrics:
        raise ValueError(f"experiment '{exp.name}': primary metric '{exp.metric}' is not in {metrics}")
    missing = [c for c in [col_user, COL_VARIANT, *metrics] if c not in per_user.columns]
    if missing:
        raise ValueError(f"per-user frame is missing column(s) {missing} (has {list(per_user.columns)})")
    served = per_user[per_user[COL_VARIANT].notna()]
    if served[col_user].duplicated().any():
        dupes = served.loc[served[col_user].duplicated(), col_user].unique()[:5].tolist()
        raise ValueError(f"per-user frame has several rows for user(s) {dupes}: one row per test user")
    counts = {str(k): int(v) for k, v in served[COL_VARIANT].value_counts().items()}
    srm_chi2, srm_p = srm(counts, exp.shares)
    srm_ok = not (srm_p < exp.srm_alpha)  # NaN (no users) is not a mismatch
    if not srm_ok:
        log.warning(
            "experiment %s: sample ratio mismatch (chi2 %.2f, p %.3g): observed %s, configured %s",
            exp.name,
            srm_chi2,
            srm_p,
            counts,
            exp.shares,
        )
    groups = {name: frame for name, frame in served.groupby(COL_VARIANT, sort=False)}
    empty = served.iloc[0:0]
    control = groups.get(exp.control, empty)
    rows = []
    for treatment in exp.treatments:
        group = groups.get(treatment.name, empty)
        for metric in metrics:
            a = control[metric].dropna().to_numpy(dtype=np.float64)
            b = group[metric].dropna().to_numpy(dtype=np.float64)
            res = compare(a, b, exp.alpha, n_boot=n_boot, seed=seed)
            verdict = (
                decide(
                    exp,
                    treatment.name,
                    srm_p=srm_p,
                    n_control=int(res["n_a"]),
                    n_variant=int(res["n_b"]),
                    p_value=res["p_value"],
                    diff=res["diff"],
                )
                if metric == exp.metric
                else NOT_PRIMARY
            )
            rows.append(
                {
                    "experiment": exp.name,
                    "variant": treatment.name,
                    "control": exp.control,
                    "metric": metric,
                    "n_control": int(res["n_a"]),
                    "n_variant": int(res["n_b"]),
                    "control_value": res["mean_a"],
                    "variant_value": res["mean_b"],
                    "diff": res["diff"],
                    "diff_low": res["diff_low"],
                    "diff_high": res["diff_high"],
                    "lift": res["lift"],
                    "lift_low": res["lift_low"],
                    "lift_high": res["lift_high"],
                    "p_value": res["p_value"],
                    "significant": bool(res["p_value"] < exp.alpha),
                    "srm_chi2": srm_chi2,
                    "srm_p": srm_p,
                    "srm_ok": srm_ok,
                    "verdict": verdict,
                }
            )
    log.info("experiment %s: %d comparison(s), users per variant %s", exp.name, len(rows), counts)
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)
