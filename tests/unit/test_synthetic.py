"""The synthetic generator: contract schemas, determinism, validity, and the planted structure.

Thresholds (300 users x 150 items x 4 clusters, mean 20 interactions, in-cluster share 0.8, Zipf 1):
* primary-cluster share, averaged over users whose whole history fits in their primary cluster (no
  capacity overflow): within 0.03 of 0.8 (measured 0.79-0.80 over seeds 7-9; per-user noise gives a
  standard error of ~0.01); over all users at least 0.7 (overflowing heavy users pull it to ~0.78);
* the largest non-primary cluster share per user (mostly the secondary cluster), averaged, in
  [0.08, 0.2] (planted: half the remaining 0.2, plus overflow from heavy users and the max over noisy
  shares; measured ~0.155) and at least twice the mean share of each remaining cluster;
* mean rating: primary > secondary > other clusters, primary - other >= 0.75 (planted affinity gap 1.25,
  shrunk by clipping at 5);
* top 10% of items take >= 20% of interactions with Zipf exponent 1 (measured ~0.25) and < 16% with
  exponent 0 (~0.12-0.13; uniform would be 0.10);
* mean interactions per user within 15% of the configured mean (clipping at the catalogue size and
  rounding pull it slightly below).
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual, assertSchemaEqual

from watchnext.config import SyntheticConfig
from watchnext.ingest.raw import EPOCH_SECONDS, RAW_INTERACTIONS_SCHEMA, RAW_ITEMS_SCHEMA
from watchnext.ingest.synthetic import (
    CLUSTERS_SCHEMA,
    GENRES,
    ITEM_CLUSTERS_SCHEMA,
    SHARED_TAGS,
    USER_CLUSTERS_SCHEMA,
    SyntheticData,
    generate,
    write_csv,
)

pytestmark = pytest.mark.spark

CFG = SyntheticConfig(
    n_users=300,
    n_items=150,
    n_clusters=4,
    mean_interactions_per_user=20,
    in_cluster_share=0.8,
    popularity_exponent=1.0,
    tags_per_item=3,
    start_date=dt.date(2024, 1, 1),
    days=30,
    partitions=3,
    seed=7,
)
BLOCK = 64  # 300 users -> 5 blocks, straddling the 3 partitions' boundaries (100, 200)
START = 1704067200  # 2024-01-01T00:00:00Z


@pytest.fixture(scope="module")
def data(spark: SparkSession) -> SyntheticData:
    return generate(spark, CFG, users_per_block=BLOCK)


@pytest.fixture(scope="module")
def events(data: SyntheticData) -> DataFrame:
    """Interactions typed, with the ground truth: item cluster, user primary/secondary flags."""
    items = data.item_clusters.withColumnRenamed("cluster_id", "item_cluster")
    users = data.user_clusters.withColumnRenamed("cluster_id", "primary")
    df = (
        data.source.interactions.join(items, "item_id")
        .join(users, "user_id")
        .select(
            F.col("user_id").cast("long").alias("user"),
            F.col("item_id").cast("long").alias("item"),
            F.col("rating").cast("double").alias("rating"),
            "item_cluster",
            "primary",
        )
    )
    return df.cache()


def _primary_share(events: DataFrame) -> DataFrame:
    return events.groupBy("user", "primary").agg(
        F.count("*").alias("n"),
        F.avg((F.col("item_cluster") == F.col("primary")).cast("double")).alias("share"),
    )


def test_frames_follow_the_raw_contract(data: SyntheticData) -> None:
    assert data.source.name == "synthetic"
    assert data.source.timestamp_format == EPOCH_SECONDS
    assertSchemaEqual(data.source.interactions.schema, RAW_INTERACTIONS_SCHEMA)
    assert data.source.items is not None
    assertSchemaEqual(data.source.items.schema, RAW_ITEMS_SCHEMA)
    assertSchemaEqual(data.item_clusters.schema, ITEM_CLUSTERS_SCHEMA)
    assertSchemaEqual(data.user_clusters.schema, USER_CLUSTERS_SCHEMA)
    assertSchemaEqual(data.clusters.schema, CLUSTERS_SCHEMA)


def test_same_seed_same_frames_for_any_partitioning(spark: SparkSession, data: SyntheticData) -> None:
    again = generate(spark, CFG.model_copy(update={"partitions": 1}), users_per_block=BLOCK)
    assert again.n_interactions == data.n_interactions
    assertDataFrameEqual(again.source.interactions, data.source.interactions)
    assert again.source.items is not None and data.source.items is not None
    assertDataFrameEqual(again.source.items, data.source.items)
    assertDataFrameEqual(again.item_clusters, data.item_clusters)
    assertDataFrameEqual(again.user_clusters, data.user_clusters)
    assertDataFrameEqual(again.clusters, data.clusters)
    # The default block size (one block here) is independent of partitions as well.
    one, five = (generate(spark, CFG.model_copy(update={"partitions": p})) for p in (1, 5))
    assertDataFrameEqual(one.source.interactions, five.source.interactions)


def test_other_seed_other_interactions(spark: SparkSession, data: SyntheticData) -> None:
    other = generate(spark, CFG.model_copy(update={"seed": 8}), users_per_block=BLOCK)
    assert other.source.interactions.exceptAll(data.source.interactions).count() > 0.5 * other.n_interactions


def test_interactions_are_valid(spark: SparkSession, data: SyntheticData) -> None:
    raw = data.source.interactions.cache()
    r, ts = F.col("rating").cast("double"), F.col("timestamp").cast("long")
    bad = {
        "corrupt": F.col("_corrupt_record").isNotNull(),
        "id": ~F.col("user_id").rlike(r"^[1-9][0-9]*$") | ~F.col("item_id").rlike(r"^[1-9][0-9]*$"),
        # ratings on the 0.5 grid in [0.5, 5.0], written like MovieLens ("4.0", "3.5")
        "rating": ~F.col("rating").rlike(r"^[0-5]\.[05]$") | (r < 0.5) | (r > 5.0),
        # timestamps: epoch seconds inside [start_date, start_date + days)
        "timestamp": ts.isNull() | (ts < START) | (ts >= START + CFG.days * 86_400),
    }
    counts = raw.agg(F.count("*").alias("rows"), *(F.count_if(c).alias(k) for k, c in bad.items())).first()
    assert counts.asDict() == {"rows": data.n_interactions, **dict.fromkeys(bad, 0)}
    # every user, each with 5..n_items interactions, and no duplicate (user, item)
    per_user = raw.groupBy("user_id").agg(F.count("*").alias("n"), F.countDistinct("item_id").alias("items"))
    assertDataFrameEqual(
        per_user.filter((F.col("n") == F.col("items")) & F.col("n").between(5, CFG.n_items)).select(
            "user_id"
        ),
        spark.createDataFrame([(str(u),) for u in range(1, CFG.n_users + 1)], "user_id string"),
    )
    mean_n = data.n_interactions / CFG.n_users
    assert abs(mean_n - CFG.mean_interactions_per_user) <= 0.15 * CFG.mean_interactions_per_user, mean_n
    assert raw.join(data.item_clusters, "item_id", "left_anti").count() == 0
    raw.unpersist()


def test_planted_user_clusters(events: DataFrame, data: SyntheticData) -> None:
    shares = _primary_share(events).join(
        data.clusters.select(F.col("cluster_id").alias("primary"), F.col("n_items").alias("capacity")),
        "primary",
    )
    fits = shares.filter(F.col("n") <= F.col("capacity")).agg(F.avg("share"), F.count("*")).first()
    assert fits[1] >= 250
    assert abs(fits[0] - CFG.in_cluster_share) <= 0.03, fits[0]
    overall = shares.agg(F.avg("share")).first()[0]
    assert 0.7 <= overall <= CFG.in_cluster_share + 0.03, overall
    # every cluster has users, and users of a cluster mostly watch it
    per_cluster = shares.groupBy("primary").agg(F.avg("share").alias("share"), F.count("*").alias("users"))
    assert per_cluster.filter((F.col("share") < 0.65) | (F.col("users") < 40)).count() == 0
    assert per_cluster.count() == CFG.n_clusters


def test_planted_secondary_cluster_is_weaker(events: DataFrame) -> None:
    # Per user: share of each non-primary cluster; the largest should be the secondary (~0.1).
    per = (
        events.filter(F.col("item_cluster") != F.col("primary"))
        .groupBy("user", "item_cluster")
        .count()
        .join(events.groupBy("user").agg(F.count("*").alias("n")), "user")
        .select("user", (F.col("count") / F.col("n")).alias("share"))
    )
    top = per.groupBy("user").agg(F.max("share").alias("top"), F.sum("share").alias("outside"))
    row = top.agg(F.avg("top"), F.avg(F.col("outside") - F.col("top"))).first()
    assert 0.08 <= row[0] <= 0.2, row[0]
    assert row[0] >= 2 * row[1] / (CFG.n_clusters - 2), row  # the other clusters get much less each


def test_in_cluster_ratings_are_higher(events: DataFrame) -> None:
    means = dict(
        events.groupBy((F.col("item_cluster") == F.col("primary")).alias("inside"))
        .agg(F.avg("rating"))
        .collect()
    )
    assert means[True] - means[False] >= 0.75, means


def test_popularity_is_skewed(spark: SparkSession, data: SyntheticData) -> None:
    def top_share(raw: DataFrame) -> float:
        counts = [
            r[0] for r in raw.groupBy("item_id").count().orderBy(F.desc("count")).select("count").collect()
        ]
        return sum(counts[: len(counts) // 10]) / sum(counts)

    skewed = top_share(data.source.interactions)
    flat = top_share(generate(spark, CFG.model_copy(update={"popularity_exponent": 0.0})).source.interactions)
    assert skewed >= 0.20, skewed
    assert flat < 0.16, flat


def test_item_metadata(spark: SparkSession) -> None:
    cfg = CFG.model_copy(update={"n_items": 10, "n_clusters": 2, "n_users": 20, "tags_per_item": 2})
    data = generate(spark, cfg)
    assert data.source.items is not None
    items = data.source.items
    # ids 1..10 titled "Synthetic Movie <id> (<year>)", the year also in its own column
    assertDataFrameEqual(
        items.select("item_id", F.regexp_replace("title", r" \(\d{4}\)$", "").alias("t")),
        spark.createDataFrame(
            [(str(i), f"Synthetic Movie {i}") for i in range(1, 11)], "item_id string, t string"
        ),
    )
    title_year = F.regexp_extract("title", r"\((\d{4})\)$", 1).cast("int")
    assert items.filter((F.col("year") != title_year) | ~F.col("year").between(1950, 2024)).count() == 0
    assert items.filter(F.col("_corrupt_record").isNotNull()).count() == 0
    # balanced clusters: 10 items over 2 clusters
    assertDataFrameEqual(
        data.item_clusters.groupBy("cluster_id").count(),
        spark.createDataFrame([(0, 5), (1, 5)], "cluster_id int, count long"),
    )
    clusters = {r["cluster_id"]: r for r in data.clusters.collect()}
    assert [c["n_items"] for c in clusters.values()] == [5, 5]
    assert len({c["genres"][0] for c in clusters.values()}) == 2  # distinct lead genres
    for c in clusters.values():
        assert 2 <= len(c["genres"]) <= 3 and set(c["genres"]) <= set(GENRES)
        assert c["name"] == f"c{c['cluster_id']}-" + "-".join(g.lower() for g in c["genres"])
    # genres: sorted, distinct, the lead genre always, at most one genre outside the cluster's;
    # tags: tags_per_item distinct tags from the cluster's vocabulary or the shared one
    for row in items.join(data.item_clusters, "item_id").collect():
        cluster = clusters[row["cluster_id"]]
        genres, tags = row["genres"], row["tags"]
        assert genres == sorted(set(genres))
        assert cluster["genres"][0] in genres
        assert len(set(genres) - set(cluster["genres"])) <= 1
        assert len(tags) == len(set(tags)) == 2
        assert set(tags) <= set(cluster["tag_vocabulary"]) | set(SHARED_TAGS)


def test_item_tags_and_genres_carry_the_cluster(data: SyntheticData) -> None:
    assert data.source.items is not None
    rows = data.source.items.join(data.item_clusters, "item_id").join(
        data.clusters.select("cluster_id", F.col("genres").alias("dominant"), "tag_vocabulary"), "cluster_id"
    )
    stats = rows.select(
        F.size(F.array_intersect("tags", "tag_vocabulary")).alias("own"),
        F.size("tags").alias("tags"),
        F.size(F.array_except("genres", "dominant")).alias("extra"),
    ).agg(F.sum("own") / F.sum("tags"), F.avg((F.col("extra") > 0).cast("double")))
    own_tags, with_extra = stats.first()
    assert own_tags >= 0.8, own_tags  # planted 0.9 per draw
    assert 0.05 <= with_extra <= 0.3, with_extra  # planted 0.15 (minus draws of a dominant genre)


@pytest.mark.parametrize(
    "update",
    [
        {"n_clusters": 1},
        {"n_clusters": 2, "in_cluster_share": 1.0},
        {"in_cluster_share": 0.0},
        {"n_items": 3, "n_clusters": 3},  # fewer items than the 5-interaction minimum
        {"mean_interactions_per_user": 2.0},
        {"mean_interactions_per_user": 140.0},  # many users want more than a cluster holds
    ],
)
def test_edge_configs_stay_valid(spark: SparkSession, update: dict[str, object]) -> None:
    cfg = CFG.model_copy(update={"n_users": 50, **update})
    data = generate(spark, cfg)
    per_user = data.source.interactions.groupBy("user_id").agg(
        F.count("*").alias("n"), F.countDistinct("item_id").alias("items")
    )
    stats = per_user.agg(
        F.count("*"), F.sum("n"), F.min("n"), F.max("n"), F.sum(F.col("n") - F.col("items"))
    ).first()
    assert stats[0] == cfg.n_users and stats[1] == data.n_interactions
    assert min(5, cfg.n_items) <= stats[2] and stats[3] <= cfg.n_items
    assert stats[4] == 0  # no duplicate (user, item)


def test_too_many_clusters_is_refused(spark: SparkSession) -> None:
    with pytest.raises(ValueError, match="n_clusters"):
        generate(spark, CFG.model_copy(update={"n_items": 3, "n_clusters": 4}))


def test_write_csv_movielens_layout(spark: SparkSession, data: SyntheticData, tmp_path: Path) -> None:
    write_csv(data, str(tmp_path / "single"), single_file=True)
    write_csv(data, str(tmp_path / "parts"))
    assert (tmp_path / "single" / "ratings.csv").is_file() and (tmp_path / "single" / "movies.csv").is_file()
    assert (tmp_path / "parts" / "ratings.csv").is_dir()
    header = (tmp_path / "single" / "ratings.csv").read_text().splitlines()[0]
    assert header == "userId,movieId,rating,timestamp"
    assert (tmp_path / "single" / "movies.csv").read_text().splitlines()[0] == "movieId,title,genres"
    assert data.source.items is not None
    expected_ratings = data.source.interactions.select(
        F.col("user_id").alias("userId"), F.col("item_id").alias("movieId"), "rating", "timestamp"
    )
    expected_movies = data.source.items.select(
        F.col("item_id").alias("movieId"), "title", F.array_join("genres", "|").alias("genres")
    )
    for layout in ("single", "parts"):
        read = spark.read.option("header", True).csv
        assertDataFrameEqual(read(str(tmp_path / layout / "ratings.csv")), expected_ratings)
        assertDataFrameEqual(read(str(tmp_path / layout / "movies.csv")), expected_movies)
    with pytest.raises(ValueError, match="local folder"):
        write_csv(data, "s3a://bucket/synthetic", single_file=True)
    line = (tmp_path / "single" / "movies.csv").read_text().splitlines()[1]
    assert re.fullmatch(r"\d+,Synthetic Movie \d+ \(\d{4}\),[A-Za-z|-]+", line), line


def test_play_counts_replace_only_the_values(spark: SparkSession, data: SyntheticData) -> None:
    """Off (CFG, the default): half-star ratings (test_interactions_are_valid). On: the same users,
    items and timestamps, the value a positive integer count that is larger in the user's own cluster
    (planted: play_count_ratio ** 1.25 ~ 5.7x the other clusters' mean at ratio 4, shrunk by the
    secondary cluster and by the + 1; measured own 17.0 vs elsewhere 6.6 on this data)."""
    assert CFG.play_counts is False
    on = generate(spark, CFG.model_copy(update={"play_counts": True}), users_per_block=BLOCK)
    counts = on.source.interactions.cache()
    assertDataFrameEqual(counts.drop("rating"), data.source.interactions.drop("rating"))
    # written like MovieLens values ("12.0"): positive integers
    assert counts.filter(~F.col("rating").rlike(r"^[1-9][0-9]*\.0$")).count() == 0
    own = (
        counts.join(data.item_clusters, "item_id")
        .join(data.user_clusters.withColumnRenamed("cluster_id", "primary"), "user_id")
        .groupBy((F.col("cluster_id") == F.col("primary")).alias("own"))
        .agg(F.avg(F.col("rating").cast("double")).alias("mean"))
    )
    means = {r.own: r.mean for r in own.collect()}
    assert means[True] >= 2 * means[False], means
    counts.unpersist()
