"""The recommend stage end to end on planted-cluster synthetic data: real Spark, Delta, MLflow.

One module fixture runs ingest (plus a user with a single interaction and a known user with none),
als, clusters and similarities; the tests run the recommend stage on top and check the published
tables: exactly N distinct unseen items per known user, the cold fallbacks, the cluster cap, reasons,
genre rows, because-you-watched, the serving read, idempotent re-runs, other dates untouched, and a
failure in the middle of the stage leaving the previous table versions as they were.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from support.common import RUN_DATE, local_overrides
from watchnext import pipeline, tables
from watchnext.config import Config, load_config, validate_config
from watchnext.constants import (
    TABLE_BECAUSE_YOU_WATCHED,
    TABLE_CLUSTERS,
    TABLE_EVAL_RECS,
    TABLE_EXPERIMENT_ASSIGNMENTS,
    TABLE_GENRE_ROWS,
    TABLE_INTERACTIONS,
    TABLE_ITEM_CLUSTERS,
    TABLE_ITEM_FACTORS,
    TABLE_ITEM_SIMILARITIES,
    TABLE_ITEMS,
    TABLE_RECOMMENDATIONS,
    TABLE_RECOMMENDATIONS_LATEST,
    TABLE_USER_CLUSTER_AFFINITY,
    TABLE_USER_FACTORS,
    TABLE_USER_INDEX,
    TABLE_USER_NEIGHBORS,
)
from watchnext.evaluation import protocol
from watchnext.experiments.assignment import assign
from watchnext.ingest.raw import RawSource
from watchnext.ingest.synthetic import generate
from watchnext.models.ranker import feature_names
from watchnext.recommend import publish, registry
from watchnext.recommend.tune import tune_blend
from watchnext.serving import RecommendationStore
from watchnext.stages import ingest

pytestmark = [pytest.mark.spark, pytest.mark.delta, pytest.mark.mlflow, pytest.mark.slow]

N, CAP = 10, 3
ONE_ITEM_USER = "900001"  # one interaction: below the cold threshold
GHOST_USER = "900002"  # known (in user_index) but no interactions in this run date
OTHER_DATE = RUN_DATE - dt.timedelta(days=1)
UPSTREAM = [
    TABLE_INTERACTIONS,
    TABLE_ITEMS,
    TABLE_USER_FACTORS,
    TABLE_ITEM_FACTORS,
    TABLE_ITEM_CLUSTERS,
    TABLE_CLUSTERS,
    TABLE_USER_CLUSTER_AFFINITY,
    TABLE_ITEM_SIMILARITIES,
    TABLE_USER_NEIGHBORS,
]


@pytest.fixture(scope="module")
def built(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Config]:
    """Every upstream stage run once for RUN_DATE, plus the two cold users."""
    tmp: Path = tmp_path_factory.mktemp("recommend")
    cfg = load_config(env="local", overrides=local_overrides(tmp)).with_overrides(
        "als.tuning.enabled=false",
        "als.rank=16",
        "als.max_iter=8",
        "clusters.k=4",
        "similarity.k=10",
        "similarity.user_k=20",
        f"recommend.n={N}",
        f"recommend.max_per_cluster={CAP}",
        "recommend.candidates=30",
        "recommend.genre_rows=2",
        "recommend.genre_row_length=5",
        "recommend.because_k=5",
        "recommend.tuning.n_trials=25",
    )
    data = generate(spark, cfg.ingest.synthetic)
    first = data.source.interactions.limit(1)
    one = first.withColumn("user_id", F.lit(ONE_ITEM_USER))
    source = RawSource(
        name=data.source.name,
        interactions=data.source.interactions.unionByName(one),
        items=data.source.items,
        timestamp_format=data.source.timestamp_format,
    )
    ingest.run(spark, cfg, RUN_DATE, source=source)
    index = tables.read(spark, cfg.table_path(TABLE_USER_INDEX))
    next_idx = index.agg(F.max("user_idx")).first()[0] + 1
    ghost = index.limit(1).withColumn("user_id", F.lit(GHOST_USER)).withColumn("user_idx", F.lit(next_idx))
    tables.append(ghost.select(*index.columns), cfg.table_path(TABLE_USER_INDEX))
    pipeline.run_pipeline(spark, cfg, RUN_DATE, ["als", "clusters", "similarities"])
    yield cfg


def _read(spark: SparkSession, cfg: Config, table: str, run_date: dt.date = RUN_DATE) -> DataFrame:
    return tables.read_run_date(spark, cfg.table_path(table), run_date)


def test_recommend_publishes_exactly_n_unseen_diverse_items(spark: SparkSession, built: Config) -> None:
    cfg = built
    result = pipeline.run_pipeline(spark, cfg, RUN_DATE, ["recommend", "evaluate"])
    summary = result["recommend"]
    recs = _read(spark, cfg, TABLE_RECOMMENDATIONS).persist()
    users = tables.read(spark, cfg.table_path(TABLE_USER_INDEX)).select("user_id")
    inter = _read(spark, cfg, TABLE_INTERACTIONS)

    # exactly N distinct items, ranks 1..N, for every known user (the ghost and the one-item user too)
    per_user = recs.groupBy("user_id").agg(
        F.count("*").alias("rows"),
        F.countDistinct("item_id").alias("items"),
        F.min("rank").alias("lo"),
        F.max("rank").alias("hi"),
        F.countDistinct("rank").alias("ranks"),
    )
    expected = users.select(
        "user_id",
        F.lit(N).cast("long").alias("rows"),
        F.lit(N).cast("long").alias("items"),
        F.lit(1).alias("lo"),
        F.lit(N).alias("hi"),
        F.lit(N).cast("long").alias("ranks"),
    )
    assertDataFrameEqual(per_user, expected)
    # none seen
    assert recs.join(inter, ["user_id", "item_id"]).isEmpty()
    # scores non-increasing with rank
    w = F.lag("score").over(Window.partitionBy("user_id").orderBy("rank"))
    assert recs.withColumn("_prev", w).where(F.col("_prev") < F.col("score")).isEmpty()

    # the cluster cap holds wherever the catalogue allows: a user's items over the cap are exactly
    # the shortfall N - sum_c min(CAP, unseen items of c), and none when that is <= 0
    ic = _read(spark, cfg, TABLE_ITEM_CLUSTERS).select("item_id", "cluster_id")
    unseen = users.crossJoin(ic).join(inter.select("user_id", "item_id"), ["user_id", "item_id"], "left_anti")
    capacity = (
        unseen.groupBy("user_id", "cluster_id")
        .agg(F.least(F.count("*"), F.lit(CAP)).alias("c"))
        .groupBy("user_id")
        .agg(F.sum("c").alias("capacity"))
    )
    excess = (
        recs.join(ic, "item_id")
        .groupBy("user_id", "cluster_id")
        .agg(F.greatest(F.count("*") - CAP, F.lit(0)).alias("e"))
        .groupBy("user_id")
        .agg(F.sum("e").cast("long").alias("excess"))
    )
    assertDataFrameEqual(
        excess,
        capacity.select(
            "user_id", F.greatest(F.lit(N) - F.col("capacity"), F.lit(0)).cast("long").alias("excess")
        ),
    )
    assert excess.where("excess = 0").count() >= 0.9 * excess.count()

    # cold users: the cold weights (cluster / trending / popular reasons), never a collaborative one
    cold = recs.where(F.col("user_id").isin(ONE_ITEM_USER, GHOST_USER)).toPandas()
    assert set(cold.user_id) == {ONE_ITEM_USER, GHOST_USER}
    ok = cold.reason.str.startswith("Popular in ") | cold.reason.isin(
        ["Trending now", "Popular on watchnext"]
    )
    assert ok.all(), cold[["user_id", "reason"]]
    ghost = cold[cold.user_id == GHOST_USER]
    assert not ghost.reason.str.startswith("Popular in ").any()  # no history, no cluster affinity

    # reasons are human-readable and the anchors are items the user watched
    warm = recs.where(~F.col("user_id").isin(ONE_ITEM_USER, GHOST_USER))
    kinds = F.regexp_replace("reason", r"^(Because you watched|Popular in) .+$", "$1")
    allowed = ["Because you watched", "Popular in", "Picked for your taste", "Trending now"]
    allowed += ["Viewers with similar taste watched this", "Popular on watchnext"]
    assert warm.where(~kinds.isin(allowed)).isEmpty()
    because = warm.where(F.col("reason").startswith("Because you watched "))
    titles = _read(spark, cfg, TABLE_ITEMS).select("item_id", "title")
    watched_titles = inter.join(titles, "item_id").select(
        "user_id", F.concat(F.lit("Because you watched "), "title").alias("reason")
    )
    assert because.join(watched_titles, ["user_id", "reason"], "left_anti").isEmpty()
    # lineage and model versions
    row = recs.select("run_id", "model_versions", "sources").first()
    assert row.run_id == summary["mlflow_run_id"] and row.model_versions == {"als": "1", "clusters": "1"}
    assert set(row.sources) <= {"als", "ease", "item", "user", "cluster", "popular", "trending", "backfill"}
    # ... in the same commit as the data: each table's newest commit is the write, naming the run
    lineage = {"watchnext.run_id": summary["mlflow_run_id"], "watchnext.run_date": RUN_DATE.isoformat()}
    for table in (TABLE_RECOMMENDATIONS, TABLE_GENRE_ROWS, TABLE_BECAUSE_YOU_WATCHED):
        commit = tables.last_commit(spark, cfg.table_path(table))
        assert commit["operation"] == "WRITE" and int(commit["operationMetrics"]["numOutputRows"]) > 0
        assert json.loads(commit["userMetadata"]) == lineage
    latest_commit = tables.last_commit(spark, cfg.table_path(TABLE_RECOMMENDATIONS_LATEST))
    assert latest_commit["operation"] in ("CREATE OR REPLACE TABLE AS SELECT", "CREATE TABLE AS SELECT")
    latest_path = cfg.table_path(TABLE_RECOMMENDATIONS_LATEST)
    props = DeltaTable.forPath(spark, latest_path).detail().first().properties
    assert {k: props[k] for k in lineage} == lineage

    # recommendations_latest holds the same rows, and the serving read returns what Spark wrote
    latest = tables.read(spark, cfg.table_path(TABLE_RECOMMENDATIONS_LATEST))
    assertDataFrameEqual(latest, recs)
    store = RecommendationStore(cfg.table_path(TABLE_RECOMMENDATIONS_LATEST))
    for r in recs.select("user_id").distinct().limit(25).collect():
        served = store.for_user(r.user_id)
        spark_rows = recs.where(F.col("user_id") == r.user_id).orderBy("rank").collect()
        assert [(x.rank, x.item_id, x.title, x.score, x.reason, list(x.sources)) for x in served.items] == [
            (s["rank"], s["item_id"], s["title"], s["score"], s["reason"], list(s["sources"]))
            for s in spark_rows
        ]

    # genre rows: the user's two favourite clusters, 5 unseen items of that cluster each
    rows = _read(spark, cfg, TABLE_GENRE_ROWS)
    aff = _read(spark, cfg, TABLE_USER_CLUSTER_AFFINITY)
    fav = aff.withColumn(
        "row",
        F.row_number().over(Window.partitionBy("user_id").orderBy(F.desc("share"), "cluster_id")),
    ).where("row <= 2")
    unseen_in = unseen.groupBy("user_id", "cluster_id").agg(F.least(F.count("*"), F.lit(5)).alias("n"))
    assertDataFrameEqual(
        rows.groupBy("user_id", "row", "cluster_id").agg(F.count("*").alias("n")),
        fav.join(unseen_in, ["user_id", "cluster_id"]).select(
            "user_id", F.col("row").cast("int"), "cluster_id", F.col("n").cast("long")
        ),
    )
    item_cluster = ic.withColumnRenamed("cluster_id", "item_cluster")
    assert rows.join(item_cluster, "item_id").where(F.col("cluster_id") != F.col("item_cluster")).isEmpty()
    assert rows.join(inter, ["user_id", "item_id"]).isEmpty()
    labels = _read(spark, cfg, TABLE_CLUSTERS).select("cluster_id", "label")
    assertDataFrameEqual(
        rows.select("cluster_id", "label").distinct(),
        labels.join(rows.select("cluster_id").distinct(), "cluster_id"),
    )

    # because you watched: 5 co-occurrence neighbours per item, reason names the watched item
    byw = _read(spark, cfg, TABLE_BECAUSE_YOU_WATCHED)
    sims = _read(spark, cfg, TABLE_ITEM_SIMILARITIES).where("source = 'cooccurrence' AND rank <= 5")
    assertDataFrameEqual(
        byw.select("item_id", "rank", "neighbor_id", "score"),
        sims.select("item_id", "rank", "neighbor_id", "score"),
    )
    named = byw.join(titles.withColumnRenamed("title", "t"), "item_id")
    assert named.where(F.col("reason") != F.concat(F.lit("Because you watched "), F.col("t"))).isEmpty()

    # offline: the blend list was scored by evaluate next to the single sources
    assert "blend" in result["evaluate"]["ndcg_at_10"]
    assert not _read(spark, cfg, TABLE_EVAL_RECS).where("model = 'blend'").isEmpty()
    tuning = summary["tuning"]
    assert tuning["validation_ndcg_at_10"] >= max(tuning["single_source"].values())
    # the recipe: a learned ranker was trained and scored on the held-back users beside the linear
    # blend and every source; the published one is the best of learned/linear, never below a source
    held = tuning["holdout_ndcg_at_10"]
    assert {"learned", "linear", *cfg.recommend.sources} == set(held)
    recipe = summary["recipe"]
    assert recipe == tuning["recipe"]
    published = held[recipe] if recipe in held else held[recipe.split(":")[1]]
    assert published >= max(held[s] for s in cfg.recommend.sources)
    if recipe == "learned":
        assert held["learned"] >= held["linear"]
    elif recipe == "linear":
        assert held["linear"] > held["learned"]
    # EASE (no stage of its own) and, when the recipe is not the linear blend, the linear blend are
    # scored offline beside it
    assert "ease" in result["evaluate"]["ndcg_at_10"]
    assert ("linear_blend" in result["evaluate"]["ndcg_at_10"]) == (recipe != "linear")
    run = mlflow.get_run(summary["mlflow_run_id"])
    assert {f"ranker.importance.{f}" for f in feature_names(cfg.recommend.sources)} <= set(run.data.metrics)
    assert run.data.params["blend.recipe"] == recipe
    if recipe == "learned":
        version = mlflow.MlflowClient().get_model_version(
            cfg.recommend.learned.registered_model, summary["ranker_version"]
        )
        assert version.run_id == summary["mlflow_run_id"]
    else:
        assert summary["ranker_version"] is None
    assert {f"blend.weight.{s}" for s in summary["weights"]} <= set(run.data.params)
    assert "best_validation_ndcg_at_10" in run.data.metrics

    # The stage trained the ranker on the driver (the pool is small); on Spark, the path of pools
    # over recommend.learned.local_max_rows, the same search gives the same ranker and the same recipe.
    on_spark = cfg.with_overrides("recommend.learned.local_max_rows=0")
    train, _ = protocol.split(inter.select(*_INTERACTION_COLUMNS), on_spark.evaluation)
    item_clusters = _read(spark, cfg, TABLE_ITEM_CLUSTERS).select("item_id", "item_idx", "cluster_id")
    als_params, _ = registry.model_versions(on_spark)
    tuned = tune_blend(on_spark, train, item_clusters, als_params)
    assert tuned.recipe == recipe
    assert {r: round(v, 4) for r, v in tuned.holdout.items()} == held
    assert {f"ranker.importance.{f}": v for f, v in tuned.importances.items()} == {
        k: v for k, v in run.data.metrics.items() if k.startswith("ranker.importance.")
    }
    recs.unpersist()


_INTERACTION_COLUMNS = ["user_id", "item_id", "user_idx", "item_idx", "rating", "timestamp"]


def _copy_upstream(spark: SparkSession, cfg: Config, to: dt.date) -> None:
    """Yesterday's inputs: every upstream table's RUN_DATE rows written again for ``to``."""
    for table in UPSTREAM:
        rows = _read(spark, cfg, table).withColumn("run_date", F.lit(to))
        tables.overwrite_run_date(rows, cfg.table_path(table), to)


def test_rerun_is_identical_other_dates_untouched_and_failure_leaves_tables(
    spark: SparkSession, built: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = built.with_overrides("recommend.tuning.enabled=false")
    _copy_upstream(spark, cfg, OTHER_DATE)
    fitted = pipeline.run_stage(spark, cfg, OTHER_DATE, "recommend")
    # Lists an earlier run left for a model this one does not produce (the linear blend beside a
    # learned recipe; this recipe is the configured linear blend): removed for the run date only.
    for d in (RUN_DATE, OTHER_DATE):
        blend_rows = _read(spark, cfg, TABLE_EVAL_RECS, d).where("model = 'blend'")
        protocol.write_recommendations(blend_rows, cfg, "linear_blend", d, "an-earlier-run")
    stale_other = (
        _read(spark, cfg, TABLE_EVAL_RECS, OTHER_DATE).where("model = 'linear_blend'").localCheckpoint()
    )
    assert stale_other.count() > 0
    stored = pipeline.run_stage(spark, cfg, RUN_DATE, "recommend")
    assert stored["offline_cleared"] == ["linear_blend"]
    assert _read(spark, cfg, TABLE_EVAL_RECS).where("model = 'linear_blend'").isEmpty()
    assertDataFrameEqual(
        _read(spark, cfg, TABLE_EVAL_RECS, OTHER_DATE).where("model = 'linear_blend'"), stale_other
    )
    # The offline blend read the train-split models the als and similarities stages stored for RUN_DATE,
    # and fitted them for OTHER_DATE (nothing stored for it): the same lists either way.
    # EASE has no stage of its own: it is fitted where it is used, both times.
    models = ["als", "item_cooccurrence", "user_cooccurrence"]
    assert stored["offline_models"] == {**dict.fromkeys(models, "stored"), "ease": "fitted"}
    assert fitted["offline_models"] == {**dict.fromkeys(models, "fitted"), "ease": "fitted"}

    def blend(d: dt.date) -> DataFrame:
        return (
            _read(spark, cfg, TABLE_EVAL_RECS, d)
            .where("model = 'blend'")
            .select("user_idx", "item_idx", "score", "rank")
        )

    assertDataFrameEqual(blend(RUN_DATE), blend(OTHER_DATE))
    path = cfg.table_path(TABLE_RECOMMENDATIONS)
    other = _read(spark, cfg, TABLE_RECOMMENDATIONS, OTHER_DATE).drop("run_id").localCheckpoint()
    first = _read(spark, cfg, TABLE_RECOMMENDATIONS).drop("run_id").localCheckpoint()
    rows_first = _read(spark, cfg, TABLE_GENRE_ROWS).drop("run_id").localCheckpoint()
    assert first.count() > 0 and other.count() > 0

    # the configured weights lead with ALS and item-item: latent picks explained by a watched item
    assert not first.where(F.col("reason").startswith("Because you watched ")).isEmpty()

    again = pipeline.run_stage(spark, cfg, RUN_DATE, "recommend")
    assert again["offline_cleared"] == []  # nothing left to remove: no commit
    assertDataFrameEqual(_read(spark, cfg, TABLE_RECOMMENDATIONS).drop("run_id"), first)
    assertDataFrameEqual(_read(spark, cfg, TABLE_GENRE_ROWS).drop("run_id"), rows_first)
    assertDataFrameEqual(_read(spark, cfg, TABLE_RECOMMENDATIONS, OTHER_DATE).drop("run_id"), other)
    # the older date did not replace the latest table
    latest = tables.read(spark, cfg.table_path(TABLE_RECOMMENDATIONS_LATEST))
    assert {r.run_date for r in latest.select("run_date").distinct().collect()} == {RUN_DATE}

    # a task failing in the middle of the recommendations write: no commit, previous version intact
    version = DeltaTable.forPath(spark, path).history(1).first().version
    latest_version = (
        DeltaTable.forPath(spark, cfg.table_path(TABLE_RECOMMENDATIONS_LATEST)).history(1).first().version
    )
    real = publish.decorate
    victim = first.orderBy("user_id").select("user_id").first()[0]

    def explode(user: str) -> str:
        if user == victim:
            raise RuntimeError(f"injected failure at user {user}")
        return user

    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        return real(*args, **kwargs).withColumn("user_id", F.udf(explode)("user_id"))

    monkeypatch.setattr(publish, "decorate", failing)
    with pytest.raises(Exception, match="injected failure"):
        pipeline.run_stage(spark, cfg, RUN_DATE, "recommend")
    assert DeltaTable.forPath(spark, path).history(1).first().version == version
    assert (
        DeltaTable.forPath(spark, cfg.table_path(TABLE_RECOMMENDATIONS_LATEST)).history(1).first().version
        == latest_version
    )
    assertDataFrameEqual(_read(spark, cfg, TABLE_RECOMMENDATIONS).drop("run_id"), first)
    assertDataFrameEqual(_read(spark, cfg, TABLE_RECOMMENDATIONS, OTHER_DATE).drop("run_id"), other)


def test_missing_input_names_the_stage(spark: SparkSession, cfg: Config) -> None:
    ingest.run(spark, cfg, RUN_DATE)
    with pytest.raises(FileNotFoundError, match="run the clusters stage first"):
        pipeline.run_stage(spark, cfg, RUN_DATE, "recommend")


def test_experiment_variants_get_their_recipes_and_assignments_only_grow(
    spark: SparkSession, built: Config
) -> None:
    """An enabled experiment (cap 2 against the base cap of 3): the control and the users outside its
    traffic get the base recipe's lists, the treatment the lists of a run whose base recipe is the
    variant's, offline too; experiment_assignments records the users in the traffic and only grows
    when the traffic is widened, everyone keeping their variant."""
    base = built.with_overrides("recommend.tuning.enabled=false")

    def run(cfg: Config) -> tuple[DataFrame, DataFrame]:
        pipeline.run_stage(spark, cfg, RUN_DATE, "recommend")
        recs = _read(spark, cfg, TABLE_RECOMMENDATIONS).drop("run_id").localCheckpoint()
        offline = (
            _read(spark, cfg, TABLE_EVAL_RECS)
            .where("model = 'blend'")
            .select("user_idx", "item_idx", "score", "rank")
            .localCheckpoint()
        )
        return recs, offline

    plain, plain_offline = run(base)
    assert plain.where(F.col("experiment").isNotNull() | F.col("variant").isNotNull()).isEmpty()
    capped, capped_offline = run(base.with_overrides("recommend.max_per_cluster=2"))

    def experiment(traffic: float) -> Config:
        data = base.model_dump(mode="json")
        data["experiments"] = [
            {
                "name": "cap",
                "salt": "test-cap",
                "enabled": True,
                "traffic": traffic,
                "variants": [
                    {"name": "control", "share": 0.5},
                    {"name": "cap2", "share": 0.5, "recommend": {"max_per_cluster": 2}},
                ],
            }
        ]
        return validate_config(data)

    cfg = experiment(0.6)
    recs, offline = run(cfg)
    exp = cfg.experiment
    assert exp is not None
    users = tables.read(spark, cfg.table_path(TABLE_USER_INDEX)).select("user_id", "user_idx")
    hashed = assign(users, exp).localCheckpoint()
    treated = hashed.where("in_traffic AND variant = 'cap2'").select("user_id")
    in_traffic = hashed.where("in_traffic")
    n_users, n_treated = users.count(), treated.count()
    assert 0.2 * n_users < n_treated < 0.4 * n_users  # 0.6 x 0.5 of the users

    # The served columns: the hash variant inside the traffic, nulls outside it.
    expected_served = hashed.select(
        "user_id",
        F.when(F.col("in_traffic"), F.lit("cap")).alias("experiment"),
        F.when(F.col("in_traffic"), F.col("variant")).alias("variant"),
    )
    assertDataFrameEqual(recs.select("user_id", "experiment", "variant").distinct(), expected_served)
    # Each user's list is the list of the run whose base recipe is their variant's.
    lists = ["user_id", "rank", "item_id", "score", "reason"]
    assertDataFrameEqual(
        recs.join(treated, "user_id", "left_anti").select(*lists),
        plain.join(treated, "user_id", "left_anti").select(*lists),
    )
    assertDataFrameEqual(
        recs.join(treated, "user_id").select(*lists), capped.join(treated, "user_id").select(*lists)
    )
    assert (
        recs.join(treated, "user_id")
        .select(*lists)
        .exceptAll(plain.join(treated, "user_id").select(*lists))
        .count()
        > 0
    )  # the cap binds for some treated user: the recipes differ
    # Offline too: the test users' lists follow their variant.
    treated_idx = treated.join(users, "user_id").select("user_idx")
    assertDataFrameEqual(offline.join(treated_idx, "user_idx"), capped_offline.join(treated_idx, "user_idx"))
    assertDataFrameEqual(
        offline.join(treated_idx, "user_idx", "left_anti"),
        plain_offline.join(treated_idx, "user_idx", "left_anti"),
    )
    # experiment_assignments: exactly the users in the traffic, first assigned on this run date.
    path = cfg.table_path(TABLE_EXPERIMENT_ASSIGNMENTS)
    first = tables.read(spark, path).localCheckpoint()
    assertDataFrameEqual(
        first,
        in_traffic.select("experiment", "user_id", "variant", F.lit(RUN_DATE).alias("first_assigned")),
    )

    # A ramp-up (traffic 0.6 -> 1.0), run for a later date: the table only grows, the recorded rows
    # stay as they were, and everyone keeps their variant.
    later = RUN_DATE + dt.timedelta(days=1)
    wider = experiment(1.0)
    _copy_upstream(spark, wider, later)
    pipeline.run_stage(spark, wider, later, "recommend")
    grown = tables.read(spark, path)
    assertDataFrameEqual(
        grown.join(first.select("user_id"), "user_id", "left_semi").select(*first.columns), first
    )
    added = grown.join(first.select("user_id"), "user_id", "left_anti")
    assert added.where(F.col("first_assigned") != F.lit(later)).isEmpty()
    assert added.count() == n_users - in_traffic.count()
    served_later = _read(spark, wider, TABLE_RECOMMENDATIONS, later).select("user_id", "variant").distinct()
    assertDataFrameEqual(served_later, hashed.select("user_id", "variant"))
    # A re-run of the date adds nothing.
    versions = DeltaTable.forPath(spark, path).history().count()
    pipeline.run_stage(spark, wider, later, "recommend")
    assert DeltaTable.forPath(spark, path).history().count() == versions
