"""A user's own catalogue with thin metadata, through the whole pipeline (issue: "a user's own
catalogue"): a generic tab-separated file of (user, artist, plays), artists with a name and nothing
else, no timestamps. Every stage but NCF runs in process on the test session, as ``watchnext run``
would with this config.

What a user must get: genre clusters from behaviour, labelled by their most popular members ("Fans of
…"); no trending anywhere (it would be popularity: no timestamps); no content neighbours (titles only);
reasons and the report in the configured words; the run summary saying what was left out and why.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from support.common import local_overrides
from watchnext import pipeline, tables
from watchnext.config import Config, load_config
from watchnext.constants import (
    TABLE_CLUSTERS,
    TABLE_EVAL_RECS,
    TABLE_EVALUATION,
    TABLE_INTERACTIONS,
    TABLE_ITEM_CLUSTERS,
    TABLE_ITEM_SIMILARITIES,
    TABLE_ITEMS,
    TABLE_RECOMMENDATIONS_LATEST,
)
from watchnext.summary import left_out_lines

pytestmark = [pytest.mark.spark, pytest.mark.delta, pytest.mark.mlflow, pytest.mark.slow]

RUN_DATE = dt.date(2024, 6, 1)
STAGES = ["ingest", "als", "clusters", "similarities", "recommend", "evaluate", "report"]
N_USERS, N_ITEMS, GROUPS = 240, 120, 4


def _write_plays(folder: Path, seed: int = 5) -> None:
    """``plays.tsv`` (user, artist, plays) and ``artists.tsv`` (id, name): each listener keeps to one of
    four planted groups of artists (80 % of their artists), plays heavier inside it."""
    rng = np.random.default_rng(seed)
    group = np.arange(N_ITEMS) % GROUPS
    pop = 1.0 / (1 + np.arange(N_ITEMS) // GROUPS) ** 0.8
    rows = []
    for u in range(N_USERS):
        g = rng.integers(GROUPS)
        own = np.where(group == g, pop, 0.0) / pop[group == g].sum()
        chosen = {
            int(rng.choice(N_ITEMS, p=own if rng.random() < 0.8 else pop / pop.sum()))
            for _ in range(int(rng.integers(8, 20)))
        }
        rows += [
            (f"u{u}", 1000 + i, int(rng.geometric(0.05 if group[i] == g else 0.3))) for i in sorted(chosen)
        ]
    pd.DataFrame(rows, columns=["user", "artist", "plays"]).to_csv(
        folder / "plays.tsv", sep="\t", index=False
    )
    names = [f'The "{w}" {i}' for i, w in enumerate(rng.choice(["Moons", "Echo", "Iron"], N_ITEMS))]
    pd.DataFrame({"id": 1000 + np.arange(N_ITEMS), "name": names}).to_csv(
        folder / "artists.tsv", sep="\t", index=False
    )


def _config(tmp_path: Path) -> Config:
    data = tmp_path / "data"
    data.mkdir()
    _write_plays(data)
    return load_config(
        env="local",
        overrides=[
            *local_overrides(tmp_path),
            "ingest.source=generic",
            "ingest.feedback=implicit",
            "ingest.validation.numeric_ids=false",  # user ids such as u17
            f"ingest.generic.path={data / 'plays.tsv'}",
            'ingest.generic.sep="\\t"',
            "ingest.generic.columns={user: user, item: artist, rating: plays, timestamp: null}",
            f"ingest.generic.items_path={data / 'artists.tsv'}",
            "ingest.generic.item_columns={item: id, title: name, genres: null, tags: null}",
            "domain={verb: listened to, users: Listeners, item: artist, items: artists}",
            f"report.out_dir={tmp_path / 'reports'}",
            "als.tuning.enabled=false",
            "als.rank=16",
            "clusters.k_min=3",
            "clusters.k_max=6",
            "clusters.k_step=1",
            "recommend.tuning.enabled=false",
            "recommend.candidates=30",
            "evaluation.ks=[5, 10]",
            "report.sample_users=2",
        ],
    )


def test_thin_catalogue_gets_behaviour_clusters_no_trending_and_its_own_words(
    spark: SparkSession, tmp_path: Path
) -> None:
    cfg = _config(tmp_path)
    results = pipeline.run_pipeline(spark, cfg, RUN_DATE, STAGES)

    def read(table: str):
        return tables.read_run_date(spark, cfg.table_path(table), RUN_DATE)

    # Clusters on behaviour, each labelled by its three artists with the most listeners (ties: lower
    # index): the expected labels computed here from the tables, independently of the stage's code.
    assert results["clusters"]["features"] == "behaviour"
    assert results["clusters"]["content_coverage"] == 0.0
    listeners = read(TABLE_INTERACTIONS).groupBy("item_idx").agg(F.countDistinct("user_idx").alias("n"))
    members = (
        read(TABLE_ITEM_CLUSTERS)
        .join(listeners, "item_idx")
        .join(read(TABLE_ITEMS).select("item_idx", "title"), "item_idx")
        .toPandas()
        .sort_values(["cluster_id", "n", "item_idx"], ascending=[True, False, True])
    )
    expected = [
        (int(c), "Fans of " + ", ".join(g.title.head(cfg.clusters.label_members)))
        for c, g in members.groupby("cluster_id")
    ]
    assertDataFrameEqual(
        read(TABLE_CLUSTERS).select("cluster_id", "label"),
        spark.createDataFrame(expected, "cluster_id int, label string"),
    )

    # Nothing degenerate: no trending lists or baseline, no content neighbours; the summary says why.
    assert set(results["recommend"]["left_out"]) == {"trending"}
    assert "trending" not in results["recommend"]["sources"]
    assert set(results["similarities"]["left_out"]) == {"content"}
    models = {r.model for r in read(TABLE_EVALUATION).select("model").distinct().collect()}
    assert "trending" not in models and {"als", "blend", "popularity"} <= models
    assert read(TABLE_EVAL_RECS).where(F.col("model").isin("trending", "content_knn")).isEmpty()
    # list diversity over the behaviour clusters, not over genres nobody has (1.0 for every list)
    ild = {r.model: r.value for r in read(TABLE_EVALUATION).where("metric = 'ild' AND k = 10").collect()}
    assert set(ild) == models and 0.0 < min(ild.values()) and max(ild.values()) < 0.95, ild
    assert read(TABLE_ITEM_SIMILARITIES).where(F.col("source") == "content").isEmpty()
    lines = left_out_lines(results)
    assert lines[0].startswith("content left out (similarities): 0% of the items have a genre or tag")
    assert lines[1].startswith("trending left out (recommend, evaluate): no interaction has a timestamp")
    assert "recommend: EASE session term off: no interaction has a timestamp" in lines

    # The published reasons speak of listening; the report's genre rows show the behavioural labels.
    latest = tables.read(spark, cfg.table_path(TABLE_RECOMMENDATIONS_LATEST))
    reasons = [r.reason for r in latest.select("reason").distinct().collect()]
    assert any(r.startswith("Because you listened to ") for r in reasons), reasons
    assert not [r for r in reasons if "watched" in r or r == "Trending now"], reasons
    counts = latest.groupBy("user_id").count()
    assert counts.where(F.col("count") != cfg.recommend.n).isEmpty()
    assert counts.count() == read(TABLE_INTERACTIONS).select("user_id").distinct().count()
    html = Path(results["report"]["path"]).read_text()
    assert "Fans of " in html and "watched" not in html
    assert ">trending<" not in html
