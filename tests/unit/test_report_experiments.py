"""The run report's "Experiments" section, rendered from a hand-made ``experiment_results`` frame (no
browser): the verdicts, the comparison and sample-ratio tables, the lift plot's bars and intervals;
and the report stage's read of the table (a section only for a run date with rows)."""

from __future__ import annotations

import datetime as dt
import math
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from matplotlib.figure import Figure
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from support.common import RUN_DATE, local_overrides
from watchnext import tables
from watchnext.config import load_config
from watchnext.constants import TABLE_EXPERIMENT_RESULTS
from watchnext.report import data as report_data
from watchnext.report import html, plots
from watchnext.stages import report

NAN = math.nan
COLUMNS = report_data.EXPERIMENT_COLUMNS


def _row(variant: str, metric: str, lift: float, low: float, high: float, **kw: Any) -> dict[str, Any]:
    base = {
        "experiment": "diversity-cap", "variant": variant, "control": "control", "metric": metric, "k": 10,
        "n_control": 1010, "n_variant": 495 if variant == "cap3" else 505, "control_value": 0.2,
        "variant_value": 0.2 * (1 + lift), "diff": 0.2 * lift, "diff_low": 0.2 * low, "diff_high": 0.2 * high,
        "lift": lift, "lift_low": low, "lift_high": high, "p_value": 0.5, "significant": False,
        "srm_chi2": 0.2475, "srm_p": 0.8836, "srm_ok": True, "verdict": "n/a", "control_share": 0.5,
        "variant_share": 0.25,
    }  # fmt: skip
    return base | kw


# Two treatments (cap3, cap2: a quarter of the users each) on NDCG (primary) and recall.
# cap3: NDCG +12% [+4%, +20%], p 0.003: ship; recall -1% [-9%, +7%]: not significant.
# cap2: NDCG -15% [-25%, -5%], p 0.004: revert; recall: no lift (a control mean of 0).
ROWS = [
    _row("cap3", "recall", -0.01, -0.09, 0.07),
    _row("cap3", "ndcg", 0.12, 0.04, 0.20, p_value=0.003, significant=True, verdict="ship cap3"),
    _row(
        "cap2", "ndcg", -0.15, -0.25, -0.05, p_value=0.004, significant=True, verdict="revert: cap2 is worse"
    ),
    _row("cap2", "recall", NAN, NAN, NAN, control_value=0.0, variant_value=0.0, p_value=NAN),
]


def _frame() -> pd.DataFrame:
    return pd.DataFrame(ROWS, columns=COLUMNS)


class _Cells(HTMLParser):
    """The texts of the cells of every ``<tr>`` inside elements of ``class`` (a table's rows)."""

    def __init__(self, cls: str) -> None:
        super().__init__()
        self.cls, self.depth, self.rows, self.cell = cls, 0, [], None  # type: ignore[var-annotated]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and self.cls in (dict(attrs).get("class") or "").split():
            self.depth += 1
        elif self.depth and tag == "tr":
            self.rows.append([])
        elif self.depth and tag in ("td", "th"):
            self.cell = ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "table" and self.depth:
            self.depth -= 1
        elif self.depth and tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(self.cell.strip())
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell += data


def _table(page: str, cls: str) -> list[list[str]]:
    parser = _Cells(cls)
    parser.feed(page)
    return parser.rows


def _page(monkeypatch: pytest.MonkeyPatch, frame: pd.DataFrame) -> tuple[str, list[Figure]]:
    figures: list[Figure] = []
    monkeypatch.setattr(plots, "to_data_uri", lambda fig: figures.append(fig) or "data:image/png;base64,")
    data = html.ReportData(run_date=RUN_DATE, k=10, protocol="p", experiments=frame)
    return html.render(data), figures


def test_section_shows_verdicts_comparisons_and_the_sample_ratio_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frame = _frame().sort_values(["variant", "verdict"], ascending=[False, False])  # cap3, primary first
    page, figures = _page(monkeypatch, frame.reset_index(drop=True))

    assert '<a href="#experiments">Experiments</a>' in page and '<section id="experiments">' in page
    assert (
        'class="verdict" data-variant="cap3">cap3 against control on NDCG@10: <strong>ship cap3</strong>'
        in page
    )
    assert "cap2 against control on NDCG@10: <strong>revert: cap2 is worse</strong>" in page
    assert _table(page, "experiment-table") == [
        ["variant", "metric", "users (control / variant)", "control", "variant", "diff", "diff CI", "lift",
         "lift CI", "p"],
        ["cap3", "NDCG (primary)", "1,010 / 495", "0.2000", "0.2240", "0.0240", "[0.0080, 0.0400]", "+12.0%",
         "[+4.0%, +20.0%]", "0.003"],
        ["cap3", "Recall", "1,010 / 495", "0.2000", "0.1980", "-0.0020", "[-0.0180, 0.0140]", "-1.0%",
         "[-9.0%, +7.0%]", "0.5"],
        ["cap2", "NDCG (primary)", "1,010 / 505", "0.2000", "0.1700", "-0.0300", "[-0.0500, -0.0100]",
         "-15.0%", "[-25.0%, -5.0%]", "0.004"],
        ["cap2", "Recall", "1,010 / 505", "0.0000", "0.0000", "", "", "", "", ""],
    ]  # fmt: skip
    # users per variant against the configured shares: 2,010 users, expected 1,005 / 502.5 / 502.5
    assert _table(page, "srm-table") == [
        ["variant", "users", "observed share", "configured share", "expected users"],
        ["control", "1,010", "0.502", "0.500", "1,005.0"],
        ["cap3", "495", "0.246", "0.250", "502.5"],
        ["cap2", "505", "0.251", "0.250", "502.5"],
    ]
    assert "chi-square 0.247, p = 0.884: no sample ratio mismatch" in page and "srm srm-bad" not in page
    assert '<td class="sig-up">+12.0%</td>' in page and '<td class="sig-down">-15.0%</td>' in page

    # the plot: a panel per treatment, the primary metric on top, bars in percent with their interval
    (fig,) = figures
    cap3, cap2 = fig.axes
    assert cap3.get_title() == "cap3" and cap3.get_xlabel() == "lift over control (%)"
    assert [t.get_text() for t in cap3.get_yticklabels()] == ["Recall", "NDCG"]
    bars = [(p.get_y() + p.get_height() / 2, p.get_width()) for p in cap3.patches]
    assert bars == [(0.0, pytest.approx(-1.0)), (1.0, pytest.approx(12.0))]
    assert [p.get_facecolor()[:3] for p in cap3.patches] == [
        pytest.approx(_rgb(plots.NOT_SIGNIFICANT)),
        pytest.approx(_rgb(plots.SIGNIFICANT_UP)),
    ]
    (errors,) = cap3.collections  # the intervals: from low to high at each bar
    segments = [sorted(float(x) for x in seg[:, 0]) for seg in errors.get_segments()]
    assert segments == [pytest.approx([-9.0, 7.0]), pytest.approx([4.0, 20.0])]
    # cap2: recall has no lift, so one bar, red (significantly worse)
    assert [(p.get_width(), p.get_facecolor()[:3]) for p in cap2.patches] == [
        (pytest.approx(-15.0), pytest.approx(_rgb(plots.SIGNIFICANT_DOWN)))
    ]


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    h = hex_colour.lstrip("#")
    return tuple(int(h[i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def test_a_sample_ratio_mismatch_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    frame = _frame().assign(srm_chi2=21.5, srm_p=2.1e-5, srm_ok=False)
    frame.loc[frame["verdict"] != "n/a", "verdict"] = "invalid: sample ratio mismatch"
    page, _ = _page(monkeypatch, frame)
    assert '<p class="srm srm-bad">chi-square 21.500, p = 2.1e-05: sample ratio mismatch' in page
    assert page.count("<strong>invalid: sample ratio mismatch</strong>") == 2


def test_no_results_no_section(monkeypatch: pytest.MonkeyPatch) -> None:
    page, figures = _page(monkeypatch, _frame().iloc[0:0])
    assert 'id="experiments"' not in page and "#experiments" not in page and figures == []
    page, _ = _page(monkeypatch, None)  # type: ignore[arg-type]
    assert 'id="experiments"' not in page


@pytest.mark.spark
@pytest.mark.delta
def test_report_stage_reads_the_run_dates_results(spark: SparkSession, tmp_path: Path) -> None:
    cfg = load_config(env="local", overrides=[*local_overrides(tmp_path), "mlflow.enabled=false"])
    path = cfg.table_path(TABLE_EXPERIMENT_RESULTS)
    # no table: no section, and nothing reported missing for it
    data = report.collect(spark, cfg, RUN_DATE)
    assert data.experiments is None and not any("experiment" in k for k in data.missing)

    frame = spark.createDataFrame(_frame()).withColumn("run_id", F.lit("r1"))
    tables.overwrite_run_date(frame.withColumn("run_date", F.lit(RUN_DATE)), path, RUN_DATE)
    data = report.collect(spark, cfg, RUN_DATE)
    assert data.experiments is not None
    # ordered by experiment, variant, the primary metric first
    assert data.experiments[["variant", "metric"]].values.tolist() == [
        ["cap2", "ndcg"], ["cap2", "recall"], ["cap3", "ndcg"], ["cap3", "recall"],
    ]  # fmt: skip
    expected = _frame().iloc[[2, 3, 1, 0]].reset_index(drop=True)
    pd.testing.assert_frame_equal(data.experiments, expected, check_dtype=False)
    # another date's rows (or an emptied partition) give no section
    assert report.collect(spark, cfg, RUN_DATE - dt.timedelta(days=1)).experiments is None
