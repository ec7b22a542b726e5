"""The report page: :class:`ReportData` (small pandas frames) -> one self-contained HTML string.

Plots are embedded as base64 PNG data URIs and the CSS is inline, so the page needs nothing but
itself (no script, no font or image URL); the only URLs are links to the MLflow UI. Headings, axis
labels and column names that name the catalogue speak in :attr:`ReportData.domain`'s words.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import jinja2
import pandas as pd

from watchnext.config import DomainConfig
from watchnext.experiments.analysis import NOT_PRIMARY
from watchnext.report import data as report_data
from watchnext.report import plots

BASELINES = ("popularity", "trending")
# The higher the better, except these (and nothing is "best" among NaNs).
LOWER_IS_BETTER = {"exposure_gini", "rmse", "mae"}
BIAS_METRICS = ("catalog_coverage", "long_tail_share", "exposure_gini", "novelty")
HEADERS = {
    "ndcg": "NDCG", "precision": "P", "recall": "R", "map": "MAP", "mrr": "MRR", "hit_rate": "hit rate",
    "catalog_coverage": "coverage", "novelty": "novelty", "ild": "ILD", "exposure_gini": "Gini",
    "long_tail_share": "long tail", "rmse": "RMSE", "mae": "MAE",
}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class ReportData:
    """Everything the page shows; a section whose frame is None says what is missing instead."""

    run_date: dt.date
    k: int
    protocol: str
    env: str = "local"
    domain: DomainConfig = dataclasses.field(default_factory=DomainConfig)  # the catalogue's words
    generated: dt.datetime = dataclasses.field(default_factory=lambda: dt.datetime.now(dt.UTC))
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    metrics: pd.DataFrame | None = None  # report_data.metrics_frame
    exposure: pd.DataFrame | None = None  # report_data.popularity_exposure
    exposure_note: str = ""  # which lists the exposure columns count
    clusters: pd.DataFrame | None = None  # report_data.cluster_table
    lists: pd.DataFrame | None = None  # report_data.user_lists
    history: pd.DataFrame | None = None  # report_data.recent_history
    reasons: pd.DataFrame | None = None  # report_data.reason_mix
    runs: pd.DataFrame | None = None  # runs.stage_runs
    scale: pd.DataFrame | None = None  # report_data.scale_frame (only when report.scale_results is set)
    scale_source: str = ""  # the scale results file it was read from
    experiments: pd.DataFrame | None = None  # report_data.experiment_results (only when it has rows)
    mlflow: dict[str, str] = dataclasses.field(default_factory=dict)  # tracking_uri, ui, run_id, ...
    missing: dict[str, str] = dataclasses.field(default_factory=dict)  # section -> why it is empty


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers as the page shows them (the test reads the same format back)."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.{digits}f}"


def metrics_rows(at_k: pd.DataFrame) -> list[dict[str, Any]]:
    """Table rows of the side-by-side metrics: model, whether a baseline, cells with the best marked."""
    best = {
        c: (at_k[c].min() if c in LOWER_IS_BETTER else at_k[c].max())
        for c in at_k.columns
        if at_k[c].notna().sum() > 1
    }
    return [
        {
            "model": model,
            "baseline": model in BASELINES,
            "cells": [
                {"metric": c, "text": fmt(v), "best": c in best and v == best[c]} for c, v in row.items()
            ],
        }
        for model, row in at_k.iterrows()
    ]


def pct(value: Any, digits: int = 1) -> str:
    """A relative lift as the page shows it: ``+3.1%``; empty for NaN."""
    if value is None or value != value:
        return ""
    return f"{100 * value:+.{digits}f}%"


def _label(metric: str) -> str:
    return plots.METRIC_LABELS.get(metric, metric)


def experiment_sections(results: pd.DataFrame) -> list[dict[str, Any]]:
    """Per experiment of ``report_data.experiment_results``: its verdicts (one per treatment, on the
    primary metric), the comparison rows per treatment, the sample-ratio check (users per variant,
    observed and configured share, the expected users, chi-square and p) and the lift plot."""
    out = []
    for name, exp in results.groupby("experiment", sort=True):
        primary = exp[exp["verdict"] != NOT_PRIMARY]
        first = exp.iloc[0]
        # users per variant: the control's once, each treatment's (on the primary metric's rows)
        basis = primary if not primary.empty else exp.drop_duplicates("variant")
        counts = {str(first["control"]): (int(first["n_control"]), float(first["control_share"]))}
        for r in basis.itertuples(index=False):
            counts[str(r.variant)] = (int(r.n_variant), float(r.variant_share))
        total = sum(n for n, _ in counts.values())
        out.append(
            {
                "name": str(name),
                "k": int(first["k"]),
                "control": str(first["control"]),
                "verdicts": [
                    {"variant": r.variant, "metric": _label(r.metric), "verdict": r.verdict}
                    for r in primary.itertuples(index=False)
                ],
                "rows": [
                    {
                        "variant": r.variant,
                        "metric": r.metric,
                        "label": _label(r.metric),
                        "n": f"{int(r.n_control):,} / {int(r.n_variant):,}",
                        "control": fmt(r.control_value),
                        "value": fmt(r.variant_value),
                        "diff": fmt(r.diff),
                        "diff_ci": f"[{fmt(r.diff_low)}, {fmt(r.diff_high)}]"
                        if r.diff_low == r.diff_low
                        else "",
                        "lift": pct(r.lift),
                        "lift_ci": f"[{pct(r.lift_low)}, {pct(r.lift_high)}]"
                        if r.lift_low == r.lift_low
                        else "",
                        "p": "" if r.p_value != r.p_value else f"{r.p_value:.3g}",
                        "significant": "" if not r.significant else "sig-up" if r.diff > 0 else "sig-down",
                        "primary": r.verdict != NOT_PRIMARY,
                    }
                    for r in exp.itertuples(index=False)
                ],
                "srm": {
                    "rows": [
                        {
                            "variant": v,
                            "users": f"{n:,}",
                            "observed": fmt(n / total if total else float("nan"), 3),
                            "configured": fmt(share, 3),
                            "expected": f"{total * share:,.1f}",
                        }
                        for v, (n, share) in counts.items()
                    ],
                    "chi2": fmt(float(first["srm_chi2"]), 3),
                    "p": "" if first["srm_p"] != first["srm_p"] else f"{float(first['srm_p']):.3g}",
                    "ok": bool(first["srm_ok"]),
                },
                "plot": plots.experiment_lifts(exp),
            }
        )
    return out


def render(data: ReportData) -> str:
    """The whole page."""
    ctx: dict[str, Any] = {"d": data, "fmt": fmt, "headers": HEADERS, "plots": {}}
    models = set() if data.metrics is None else set(data.metrics["model"])
    if data.exposure is not None:
        models |= set(data.exposure.columns) - {report_data.CATALOGUE, report_data.INTERACTIONS}
    colors = plots.palette(sorted(models))
    if data.metrics is not None and not data.metrics.empty:
        at_k = report_data.metrics_at_k(data.metrics, data.k)
        ctx["metric_columns"] = list(at_k.columns)
        ctx["metric_rows"] = metrics_rows(at_k)
        long = data.metrics.sort_values(["metric", "k", "model"], na_position="first")
        ctx["all_metrics"] = [
            {"model": m, "metric": name, "k": "" if pd.isna(k) else int(k), "value": fmt(v)}
            for m, name, k, v in long[["model", "metric", "k", "value"]].itertuples(index=False)
        ]
        if curves := report_data.curves(data.metrics):
            ctx["plots"]["curves"] = plots.metric_curves(curves, colors)
        if any(c in at_k.columns for c in BIAS_METRICS):
            ctx["plots"]["bias"] = plots.metric_bars(at_k, BIAS_METRICS, data.k, colors)
    if data.exposure is not None and not data.exposure.empty:
        ctx["plots"]["exposure"] = plots.popularity_exposure(data.exposure, colors, data.domain)
    if data.clusters is not None and not data.clusters.empty:
        ctx["plots"]["clusters"] = plots.cluster_sizes(data.clusters, data.domain)
    if data.runs is not None and not data.runs.empty:
        ctx["plots"]["timings"] = plots.stage_timings(data.runs)
    if data.experiments is not None and not data.experiments.empty:
        ctx["experiments"] = experiment_sections(data.experiments)
    if data.scale is not None and not data.scale.empty:
        ctx["plots"]["scale"] = plots.scale(data.scale)
        ctx["scale_totals"] = report_data.scale_totals(data.scale).to_dict("records")
    if data.lists is not None:
        ctx["users"] = [
            {
                "user": user,
                "items": rows.to_dict("records"),
                "history": []
                if data.history is None
                else data.history[data.history["user_id"] == user]["title"].tolist(),
            }
            for user, rows in data.lists.groupby("user_id", sort=True)
        ]
    return _template().render(**ctx)


def _template() -> jinja2.Template:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("watchnext.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )
    return env.get_template("report.html.j2")
