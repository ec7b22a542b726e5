"""The run report: the session's whole pipeline run (``conftest.whole_run``: every stage of
``pipeline.stages``, NCF and the report included) on planted-cluster synthetic data, its page
rendered in headless Chromium (Debian's chromium + chromedriver, driven by selenium) and checked
against the tables it reports on; plus the report's aggregates on a hand-made example and the page of
a run date with no tables."""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import shutil
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from support.common import E2E_TIMEOUT, RUN_DATE
from support.whole_run import WholeRun
from watchnext import pipeline, tables
from watchnext.cli import build_parser
from watchnext.config import Config
from watchnext.constants import TABLE_CLUSTERS, TABLE_EVALUATION, TABLE_RECOMMENDATIONS
from watchnext.locations import local_path
from watchnext.report import data as report_data
from watchnext.stages.report import ARTIFACT

pytestmark = [pytest.mark.spark, pytest.mark.delta, pytest.mark.mlflow]

N = 10
SECTIONS = ["overview", "metrics", "curves", "bias", "clusters", "samples", "stages"]
# the cell texts of the rows matching a selector
ROWS = "return [...document.querySelectorAll(arguments[0])].map(tr => [...tr.cells].map(c => c.innerText))"
PLOTS = ["plot-curves", "plot-bias", "plot-exposure", "plot-clusters", "plot-timings"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium through its chromedriver (both from Debian: `make setup-browser`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chrome = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.fail("headless Chromium and chromedriver are needed: run `make setup-browser`")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chrome
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1300,1000")
    session = webdriver.Chrome(options=opts, service=Service(driver))
    yield session
    session.quit()


class _Resources(HTMLParser):
    """Every URL the page would load (src of any tag, href of <link>), and whether it has scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.loaded: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.scripts += tag == "script"
        self.loaded += [v for k, v in a.items() if v and (k == "src" or (tag == "link" and k == "href"))]


def _colours(png: bytes) -> tuple[int, float]:
    """Distinct colours of a screenshot and the share of its pixels that are not white."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    colours = img.getcolors(maxcolors=1 << 24) or []
    white = sum(c for c, rgb in colours if rgb == (255, 255, 255))
    return len(colours), 1.0 - white / (img.width * img.height)


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.horovod
# The session's whole pipeline run may be this test's setup (conftest.whole_run).
@pytest.mark.timeout(E2E_TIMEOUT)
def test_report_page_shows_the_run(
    spark: SparkSession, whole_run: WholeRun, browser: Any, tmp_path: Path
) -> None:
    cfg = whole_run.cfg
    stages = list(cfg.pipeline.stages)
    assert stages[-1] == "report" and "ncf" in stages
    path = local_path(cfg.report.out_dir) / f"report-{RUN_DATE}.html"
    page = path.read_text(encoding="utf-8")

    # each stage's MLflow run (the DAG's tasks); the page is the report run's artifact
    client = mlflow.MlflowClient(tracking_uri=cfg.mlflow.tracking_uri)
    exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    runs = {
        r.data.tags["watchnext.stage"]: r
        for r in client.search_runs([exp.experiment_id])
        if "mlflow.parentRunId" not in r.data.tags
    }
    assert sorted(runs) == sorted(stages)
    report_run = runs["report"]
    assert report_run.data.tags["airflow.task_id"] == "report"
    artifact = Path(client.download_artifacts(report_run.info.run_id, ARTIFACT, str(tmp_path)))
    assert artifact.read_text(encoding="utf-8") == page

    # self-contained: no script, nothing loaded but embedded PNGs
    res = _Resources()
    res.feed(page)
    assert res.scripts == 0 and len(res.loaded) == len(PLOTS)
    assert all(u.startswith("data:image/png;base64,") for u in res.loaded)
    assert "url(" not in page and "@import" not in page

    browser.get(path.as_uri())
    js = browser.execute_script
    assert js("return document.readyState") == "complete"
    assert js("return [...document.querySelectorAll('section, header')].map(e => e.id)") == SECTIONS
    assert js("return document.querySelectorAll('.missing').length") == 0

    # every plot decoded and drawn
    images = js(
        "return [...document.images].map(i => [i.id, i.complete, i.naturalWidth, i.naturalHeight, "
        "i.getBoundingClientRect().width])"
    )
    assert [i[0] for i in images] == PLOTS
    assert all(ok and w > 100 and h > 100 and shown > 100 for _, ok, w, h, shown in images), images

    # the metrics table: one row per model and baseline, the evaluation table's values at K
    shown = js(
        "const t = {}; for (const tr of document.querySelectorAll('#metrics-table tbody tr')) {"
        "  t[tr.dataset.model] = {};"
        "  for (const td of tr.querySelectorAll('td[data-metric]'))"
        "    t[tr.dataset.model][td.dataset.metric] = td.innerText;"
        "} return t;"
    )
    ev = tables.read_run_date(spark, cfg.table_path(TABLE_EVALUATION), RUN_DATE)
    expected: dict[str, dict[str, str]] = {}
    for r in ev.where(f"k = {cfg.evaluation.k} OR k IS NULL").collect():
        if r.metric in report_data.TABLE_METRICS:
            if r.value == r.value:  # NaN shows as an empty cell
                expected.setdefault(r.model, {})[r.metric] = f"{r.value:.4f}"
    models = {r.model for r in ev.select("model").distinct().collect()}
    baselines = {"popularity", "trending"}
    assert set(shown) == models == {*baselines, "als", "item_knn", "content_knn", "user_knn", "ncf", "blend"}
    for model, cells in shown.items():
        assert {m: v for m, v in cells.items() if v} == expected.get(model, {}), model
    order = js("return [...document.querySelectorAll('#metrics-table tbody tr')].map(tr => tr.dataset.model)")
    ndcg = [float(shown[m]["ndcg"]) for m in order if shown[m].get("ndcg")]
    assert ndcg == sorted(ndcg, reverse=True)

    # clusters: ids, labels and sizes of the clusters table
    rows = js(ROWS, "#clusters-table tbody tr")
    clusters = tables.read_run_date(spark, cfg.table_path(TABLE_CLUSTERS), RUN_DATE)
    assert sorted((int(r[0]), r[1], int(r[2])) for r in rows) == sorted(
        (r.cluster_id, r.label, r.size) for r in clusters.collect()
    )

    # sample users: their published lists with the reasons, rank by rank
    lists = js(
        "return Object.fromEntries([...document.querySelectorAll('.user')].map(u => [u.dataset.user,"
        " [...u.querySelectorAll('tbody tr')].map(tr => [tr.cells[1].innerText, tr.cells[3].innerText])]))"
    )
    assert len(lists) == 3
    recs = tables.read_run_date(spark, cfg.table_path(TABLE_RECOMMENDATIONS), RUN_DATE)
    for user, items in lists.items():
        rows = recs.where(F.col("user_id") == user).orderBy("rank").select("title", "reason").collect()
        assert items == [[r.title, r.reason] for r in rows] and len(items) == N

    # stages: every stage's MLflow run, linked, with its wall time
    shown_stages = js(
        "return [...document.querySelectorAll('#stages-table tbody tr')].map(tr => [tr.dataset.stage,"
        " tr.querySelector('a').getAttribute('href'), tr.cells[2].innerText, tr.cells[4].innerText])"
    )
    assert [s[0] for s in shown_stages] == stages  # a DAG run has no parent `pipeline` run
    for stage, href, status, seconds in shown_stages:
        run_id = runs[stage].info.run_id
        assert href == f"http://127.0.0.1:5000/#/experiments/{exp.experiment_id}/runs/{run_id}"
        # the report's own run was still running while it rendered the page: its seconds so far
        assert status == ("RUNNING" if stage == "report" else "FINISHED") and float(seconds) > 0

    # what a person sees: a full-page screenshot with colourful plots, not a blank page
    height = js("return document.documentElement.scrollHeight")
    browser.set_window_size(1300, height + 200)
    screenshot = browser.get_screenshot_as_png()
    (tmp_path / "report.png").write_bytes(screenshot)
    n_colours, ink = _colours(screenshot)
    assert n_colours > 500 and ink > 0.05, (n_colours, ink)
    for plot in PLOTS:
        n_colours, ink = _colours(browser.find_element("id", plot).screenshot_as_png)
        assert n_colours > 30 and ink > 0.03, (plot, n_colours, ink)


def test_popularity_exposure_on_a_hand_made_example(spark: SparkSession) -> None:
    # items 1..4 watched 4, 3, 1, 0 times: 2 buckets of 2 items, {1, 2} (7 of 8 interactions) and {3, 4}
    items = spark.createDataFrame([(i,) for i in (1, 2, 3, 4)], "item_idx int")
    inter = spark.createDataFrame([(i,) for i in [1] * 4 + [2] * 3 + [3]], "item_idx int")
    recs = spark.createDataFrame([(1, "a"), (1, "a"), (3, "a"), (4, "b")], "item_idx int, model string")
    got = report_data.popularity_exposure(inter, items, recs, n_buckets=2)
    expected = pd.DataFrame(
        {"catalogue": [0.5, 0.5], "interactions": [7 / 8, 1 / 8], "a": [2 / 3, 1 / 3], "b": [0.0, 1.0]},
        index=pd.Index([1, 2], name="bucket"),
    )
    pd.testing.assert_frame_equal(got, expected)

    metrics = pd.DataFrame(
        [("x", "ndcg", 10, 0.1), ("y", "ndcg", 10, 0.3), ("y", "ndcg", 5, 0.9), ("z", "rmse", None, 0.8)],
        columns=["model", "metric", "k", "value"],
    ).astype({"k": "Int64"})
    at = report_data.metrics_at_k(metrics, 10)
    assert list(at.index) == ["y", "x", "z"] and list(at.columns) == ["ndcg", "rmse"]
    assert at.loc["y", "ndcg"] == 0.3 and at.loc["z", "rmse"] == 0.8
    curve = report_data.curves(metrics)["ndcg"]  # K x model, NaN where a model was not measured at a K
    assert list(curve.index) == [5, 10] and curve.loc[10].tolist() == [0.1, 0.3]
    assert curve.loc[5, "y"] == 0.9 and pd.isna(curve.loc[5, "x"])


def test_report_of_a_date_without_tables_says_what_is_missing(
    spark: SparkSession, cfg: Config, run_date: dt.date
) -> None:
    assert build_parser().parse_args(["report", "--run-date", "2024-06-01"]).command == "report"
    c = cfg.with_overrides(f"report.out_dir={local_path(cfg.storage.lakehouse).parent / 'reports'}")
    summary = pipeline.run_stage(spark, c, run_date, "report")
    page = Path(summary["path"]).read_text(encoding="utf-8")
    assert "run the evaluate stage" in page and "run the clusters stage" in page
    assert "no MLflow runs tagged with run date 2024-06-01" in page
    assert "<img" not in page and 'id="scale"' not in page

    # report.scale_results: a missing file says how to make it; a results JSON adds the section
    results = local_path(c.report.out_dir) / "scale.json"
    summary = pipeline.run_stage(
        spark, c.with_overrides(f"report.scale_results={results}"), run_date, "report"
    )
    page = Path(summary["path"]).read_text(encoding="utf-8")
    assert f"no scale results at {results}: run `make scale`" in page and "<img" not in page
    results.write_text(json.dumps(_scale_results()))
    summary = pipeline.run_stage(
        spark, c.with_overrides(f"report.scale_results={results}"), run_date, "report"
    )
    page = Path(summary["path"]).read_text(encoding="utf-8")
    assert page.count("<img") == 1 and 'id="plot-scale"' in page and f"<code>{results}</code>" in page


def _scale_results() -> dict[str, Any]:
    """A benchmarks/scale.py results JSON: 1M complete (NCF left out by --ncf-max), 5M cut short."""

    def ok(wall: float, jvm: float, total: float) -> dict[str, Any]:
        return {
            "status": "ok",
            "wall_s": wall,
            "cpu_s": 2 * wall,
            "peak_jvm_gib": jvm,
            "peak_total_gib": total,
        }

    sizes = {"interactions": 5_000_000, "users": 125_000, "items": 20_000}
    return {  # the larger size first: the frame orders sizes by interactions
        "5M": sizes
        | {"stages": {"ingest": ok(80.0, 4.9, 5.8), "als": {"status": "stopped at the deadline"}}},
        "1M": {"interactions": 1_000_000, "users": 25_000, "items": 10_000, "finished": "2026-12-05T10:00:00"}
        | {
            "stages": {
                "ingest": ok(42.0, 2.8, 3.6),
                "ncf": {"status": "skipped", "why": "skipped (--ncf-max 500k)"},
                "report": ok(36.0, 2.1, 2.4),
            }
        },
    }


def test_scale_section_plots_the_finished_stages_of_each_size(tmp_path: Path) -> None:
    frame = report_data.scale_frame(_scale_results())
    one, five = ["1M", 1_000_000, 25_000, 10_000, True], ["5M", 5_000_000, 125_000, 20_000, False]
    expected = pd.DataFrame(
        [
            [*one, "ingest", 42.0, 84.0, 2.8, 3.6],
            [*one, "report", 36.0, 72.0, 2.1, 2.4],
            [*five, "ingest", 80.0, 160.0, 4.9, 5.8],
        ],
        columns=report_data.SCALE_COLUMNS,
    )
    pd.testing.assert_frame_equal(frame, expected)
    pd.testing.assert_frame_equal(
        report_data.scale_totals(frame),
        pd.DataFrame(
            [[*one, 2, 78.0, 3.6], [*five, 1, 80.0, 5.8]],
            columns=[
                "size",
                "interactions",
                "users",
                "items",
                "complete",
                "stages",
                "wall_s",
                "peak_total_gib",
            ],
        ),
    )

    from PIL import Image

    from watchnext.report import html

    page = html.render(
        html.ReportData(run_date=RUN_DATE, k=N, protocol="p", scale=frame, scale_source="s.json")
    )
    res = _Resources()
    res.feed(page)
    assert len(res.loaded) == 1 and 'id="plot-scale"' in page and '<a href="#scale">' in page
    png = base64.b64decode(res.loaded[0].removeprefix("data:image/png;base64,"))
    img = Image.open(io.BytesIO(png))
    assert img.width > 800 and img.height > 300
    assert '<tr data-size="1M"><td class="text">1M</td><td>1,000,000</td>' in page
    assert "<td>1 (cut short)</td><td>80.0</td><td>5.80</td>" in page
    # without scale results (the default) there is no such section
    assert 'id="scale"' not in html.render(html.ReportData(run_date=RUN_DATE, k=N, protocol="p"))


def test_report_speaks_the_configured_words(
    spark: SparkSession, cfg: Config, run_date: dt.date, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``domain:`` for a music catalogue: the counts of the stage, the headings, column names, history,
    reason mix and plot labels of the page in its words, and none of the movie wording left."""
    from matplotlib.figure import Figure

    from watchnext.report import html, plots

    music = cfg.with_overrides(
        "domain.verb=listened to", "domain.users=Listeners", "domain.service=jazzstream",
        "domain.item=artist", "domain.items=artists",
        f"report.out_dir={local_path(cfg.storage.lakehouse).parent / 'reports'}",
    )  # fmt: skip
    words = music.domain
    date = F.lit(run_date).alias("run_date")
    inter = spark.createDataFrame(
        [("u1", "a1"), ("u1", "a2"), ("u2", "a1")], "user_id string, item_id string"
    )
    items = spark.createDataFrame(
        [("a1", "Nina Simone"), ("a2", "Miles Davis"), ("a3", "Bill Evans")], "item_id string, title string"
    )
    tables.overwrite_run_date(inter.select("*", date), music.table_path("interactions"), run_date)
    tables.overwrite_run_date(items.select("*", date), music.table_path("items"), run_date)
    page = Path(pipeline.run_stage(spark, music, run_date, "report")["path"]).read_text(encoding="utf-8")
    assert "<dt>artists listened to</dt><dd>2</dd>" in page and "<dt>catalogue artists</dt><dd>3</dd>" in page
    assert "watched" not in page

    # the page of hand-made aggregates: every section that names the catalogue
    reasons = [
        "Because you listened to Nina Simone", "Because you listened to Miles Davis",
        "Listeners with similar taste listened to this", "Popular on jazzstream", "Popular in Cool jazz",
    ]  # fmt: skip
    published = spark.createDataFrame([(r,) for r in reasons], "reason string")
    mix = report_data.reason_mix(published, words)
    assert mix.to_dict("records") == [
        {"reason": "Because you listened to …", "slots": 2, "share": 0.4},
        {"reason": "Listeners with similar taste listened to this", "slots": 1, "share": 0.2},
        {"reason": "Popular in …", "slots": 1, "share": 0.2},
        {"reason": "Popular on jazzstream", "slots": 1, "share": 0.2},
    ]
    lists = pd.DataFrame(
        [("u1", r + 1, f"a{r}", f"Artist {r}", 0.5, why, ["als"]) for r, why in enumerate(reasons)],
        columns=["user_id", "rank", "item_id", "title", "score", "reason", "sources"],
    )
    history = pd.DataFrame(
        {"user_id": ["u1", "u1"], "title": ["Nina Simone", "Miles Davis"], "timestamp": [2, 1]}
    )
    clusters = pd.DataFrame(
        {"cluster_id": [0], "label": ["Cool jazz"], "size": [3], "top_genres": [["jazz"]], "top_tags": [[]]}
    )
    exposure = pd.DataFrame(
        {"catalogue": [0.5, 0.5], "interactions": [0.8, 0.2], "als": [0.6, 0.4]},
        index=pd.Index([1, 2], name="bucket"),
    )
    figures: list[Figure] = []
    monkeypatch.setattr(plots, "to_data_uri", lambda fig: figures.append(fig) or "data:image/png;base64,")
    data = dict(run_date=run_date, k=N, protocol="p", lists=lists, history=history, clusters=clusters)
    page = html.render(html.ReportData(**data, exposure=exposure, reasons=mix, domain=words))
    assert '<p class="note">latest listened to: Nina Simone; Miles Davis</p>' in page
    assert '<th class="text">artist</th><th>score</th>' in page
    assert '<th class="text">label</th><th>artists</th>' in page and "Catalogue artists ranked" in page
    assert '<td class="text">Because you listened to …</td><td>2</td>' in page
    assert "watched" not in page and "Viewers" not in page
    exposure_ax, clusters_ax = (fig.axes[0] for fig in figures)  # in the order the page shows them
    assert exposure_ax.get_xlabel() == "item-popularity bucket (1 = most-listened-to artists)"
    assert "catalogue artists" in [t.get_text() for t in exposure_ax.get_legend().get_texts()]
    assert clusters_ax.get_xlabel() == "artists"

    # the defaults: the movie wording, as the page had it before the words were configurable
    figures.clear()
    page = html.render(html.ReportData(**data, exposure=exposure))
    assert '<p class="note">latest watched: Nina Simone; Miles Davis</p>' in page
    assert '<th class="text">title</th><th>score</th>' in page and "Catalogue items ranked" in page
    assert '<th class="text">label</th><th>items</th>' in page
    exposure_ax, clusters_ax = (fig.axes[0] for fig in figures)
    assert exposure_ax.get_xlabel() == "item-popularity bucket (1 = most-watched items)"
    assert "catalogue items" in [t.get_text() for t in exposure_ax.get_legend().get_texts()]
    assert clusters_ax.get_xlabel() == "items"
