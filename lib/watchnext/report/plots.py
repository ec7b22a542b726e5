"""The report's plots: matplotlib figures (Agg, no pyplot state) returned as base64 PNG data URIs."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from watchnext.config import DomainConfig
from watchnext.report.data import CATALOGUE, INTERACTIONS

DPI = 110
METRIC_LABELS = {
    "ndcg": "NDCG",
    "recall": "Recall",
    "precision": "Precision",
    "catalog_coverage": "Catalogue coverage",
    "long_tail_share": "Long-tail share",
    "exposure_gini": "Exposure Gini",
    "novelty": "Novelty (bits)",
    "map": "MAP",
    "mrr": "MRR",
    "hit_rate": "Hit rate",
}


def palette(models: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """One fixed colour per model (sorted names), the same in every plot of the page."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(models) <= 10 else "tab20"]
    return {m: cmap(i % cmap.N) for i, m in enumerate(sorted(models))}


def to_data_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(n_panels: int, width: float = 4.2, height: float = 3.2) -> tuple[Figure, list[Axes]]:
    fig = Figure(figsize=(width * n_panels, height), layout="constrained")
    axes = fig.subplots(1, n_panels, squeeze=False)[0]
    return fig, list(axes)


def metric_curves(curves: Mapping[str, pd.DataFrame], colors: Mapping[str, tuple[float, ...]]) -> str:
    """One panel per metric: its value at each K, one line per model."""
    fig, axes = _figure(len(curves))
    for ax, (name, frame) in zip(axes, curves.items(), strict=True):
        for model in frame.columns:
            ax.plot(frame.index.astype(int), frame[model], marker="o", label=model, color=colors.get(model))
        ax.set(title=f"{METRIC_LABELS.get(name, name)}@K", xlabel="K", xticks=frame.index.astype(int))
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return to_data_uri(fig)


def metric_bars(
    at_k: pd.DataFrame, names: Sequence[str], k: int, colors: Mapping[str, tuple[float, ...]]
) -> str:
    """One panel per metric (coverage, long-tail share, ...): a horizontal bar per model."""
    names = [n for n in names if n in at_k.columns]
    fig, axes = _figure(len(names), width=3.4, height=0.32 * len(at_k) + 1.2)
    for ax, name in zip(axes, names, strict=True):
        values = at_k[name].dropna()[::-1]
        ax.barh(values.index, values.to_numpy(), color=[colors.get(m) for m in values.index])
        ax.set_title(f"{METRIC_LABELS.get(name, name)}@{k}", fontsize="medium")
        ax.grid(axis="x", alpha=0.3)
        if ax is not axes[0]:
            ax.tick_params(labelleft=False)
    return to_data_uri(fig)


def popularity_exposure(
    exposure: pd.DataFrame,
    colors: Mapping[str, tuple[float, ...]],
    domain: DomainConfig | None = None,
) -> str:
    """Share of list slots per item-popularity bucket, one bar per model, beside the catalogue and
    interaction shares (lines); labelled in ``domain``'s words ("1 = most-watched items")."""
    words = domain or DomainConfig()
    fig, (ax,) = _figure(1, width=10.0, height=3.8)
    models = [c for c in exposure.columns if c not in (CATALOGUE, INTERACTIONS)]
    x = np.arange(len(exposure))
    width = 0.8 / max(len(models), 1)
    for i, model in enumerate(models):
        ax.bar(
            x + (i - (len(models) - 1) / 2) * width,
            exposure[model],
            width,
            label=model,
            color=colors.get(model),
        )
    ax.plot(x, exposure[INTERACTIONS], color="black", marker="s", label="interactions")
    ax.plot(
        x, exposure[CATALOGUE], color="grey", linestyle="--", marker=".", label=f"catalogue {words.items}"
    )
    n = len(exposure)
    ax.set_xticks(x, [f"{b}\n{'head' if b == 1 else 'tail' if b == n else ''}" for b in exposure.index])
    most = "most-" + "-".join(words.verb.split())  # "most-watched", "most-listened-to"
    ax.set(xlabel=f"item-popularity bucket (1 = {most} {words.items})", ylabel="share")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5))
    return to_data_uri(fig)


def cluster_sizes(clusters: pd.DataFrame, domain: DomainConfig | None = None) -> str:
    """Items per genre cluster, labelled (the axis in ``domain``'s plural noun)."""
    df = clusters.iloc[::-1]
    fig, (ax,) = _figure(1, width=9.0, height=0.3 * len(df) + 1.0)
    labels = [f"{cid}: {label}" for cid, label in zip(df["cluster_id"], df["label"], strict=True)]
    ax.barh(labels, df["size"], color="#4c72b0")
    ax.set(xlabel=(domain or DomainConfig()).items, title="Genre clusters")
    ax.grid(axis="x", alpha=0.3)
    return to_data_uri(fig)


def stage_timings(runs: pd.DataFrame) -> str:
    """Wall time of each stage run."""
    df = runs[runs["stage"] != "pipeline"].iloc[::-1]
    fig, (ax,) = _figure(1, width=8.0, height=0.35 * len(df) + 1.0)
    secs = df["seconds"].fillna(df["stage_seconds"]).fillna(0.0)
    ax.barh(df["stage"], secs, color="#dd8452")
    for y, s in enumerate(secs):
        ax.annotate(
            f"{s:.1f} s", (s, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize="small"
        )
    ax.set(xlabel="seconds", title="Stage wall time")
    ax.margins(x=0.15)
    ax.grid(axis="x", alpha=0.3)
    return to_data_uri(fig)


def scale_figure(scale: pd.DataFrame) -> Figure:
    """Wall time and peak memory per stage against the interactions (log-log), one line per stage."""
    fig, (wall, mem) = _figure(2, width=5.2, height=3.8)
    colors = palette(list(dict.fromkeys(scale["stage"])))
    for stage, df in scale.groupby("stage", sort=False):
        wall.plot(df["interactions"], df["wall_s"], marker="o", color=colors[stage], label=stage)
        mem.plot(df["interactions"], df["peak_total_gib"], marker="o", color=colors[stage], label=stage)
    # the whole pipeline only where every stage ran (a size cut short would show a false drop)
    totals = scale[scale["complete"]].groupby("interactions", sort=True)["wall_s"].sum()
    if not totals.empty:
        wall.plot(totals.index, totals.values, marker="s", color="black", lw=2, label="all stages")
    wall.set(xscale="log", yscale="log", xlabel="interactions", ylabel="seconds", title="Wall time per stage")
    mem.set(xscale="log", xlabel="interactions", ylabel="GiB", title="Peak RSS of the stage's processes")
    for ax in (wall, mem):
        ax.grid(alpha=0.3, which="both")
    fig.legend(*wall.get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    return fig


def scale(scale: pd.DataFrame) -> str:
    return to_data_uri(scale_figure(scale))


SIGNIFICANT_UP, SIGNIFICANT_DOWN, NOT_SIGNIFICANT = "#55a868", "#c44e52", "#8c8c8c"


def experiment_lifts(results: pd.DataFrame) -> str:
    """One panel per treatment variant of one experiment: the relative lift of each metric over the
    control (percent) as a bar with its bootstrap confidence interval, green or red where the
    difference is significant (up or down), grey where it is not; a metric without a lift (a control
    mean of 0) has no bar. ``results``: ``report_data.experiment_results`` rows of one experiment."""
    variants = list(dict.fromkeys(results["variant"]))
    n_metrics = results.groupby("variant")["metric"].count().max()
    fig, axes = _figure(len(variants), width=4.6, height=0.4 * n_metrics + 1.3)
    for ax, variant in zip(axes, variants, strict=True):
        rows = results[results["variant"] == variant].iloc[::-1]  # the primary metric on top
        y = np.arange(len(rows))
        lift = rows["lift"].to_numpy(float) * 100
        low = rows["lift_low"].to_numpy(float) * 100
        high = rows["lift_high"].to_numpy(float) * 100
        colors = [
            (SIGNIFICANT_UP if d > 0 else SIGNIFICANT_DOWN) if sig else NOT_SIGNIFICANT
            for sig, d in zip(rows["significant"], rows["diff"], strict=True)
        ]
        has = np.isfinite(lift)
        ax.barh(y[has], lift[has], color=[c for c, h in zip(colors, has, strict=True) if h], height=0.6)
        ci = has & np.isfinite(low) & np.isfinite(high)
        err = np.vstack([lift[ci] - low[ci], high[ci] - lift[ci]])
        ax.errorbar(lift[ci], y[ci], xerr=np.clip(err, 0, None), fmt="none", ecolor="black", capsize=3, lw=1)
        for yy in y[~has]:  # x in axes coordinates: the text stays inside the panel
            ax.text(
                0.02, yy, "no lift (control mean 0)", transform=ax.get_yaxis_transform(), va="center",
                fontsize="small", color="grey",
            )  # fmt: skip
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_ylim(-0.5, len(rows) - 0.5)
        # 0 always inside, with room on both sides (bars pin their base, so margins alone would not)
        ends = np.concatenate([[0.0], lift[has], low[ci], high[ci]])
        lo, hi = float(ends.min()), float(ends.max())
        pad = 0.08 * (hi - lo) or 1.0
        ax.set_xlim(lo - pad, hi + pad)
        labels = [METRIC_LABELS.get(m, m) for m in rows["metric"]]
        ax.set_yticks(y, labels)
        ax.set(xlabel=f"lift over {rows['control'].iloc[0]} (%)", title=f"{variant}")
        ax.grid(axis="x", alpha=0.3)
    return to_data_uri(fig)
