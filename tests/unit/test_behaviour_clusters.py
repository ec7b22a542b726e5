"""Clusters from behaviour when content metadata is thin: the ALS item factors recover the planted
clusters where stripped content cannot, the auto decision, the feature vectors, and "Fans of ..." labels.

Synthetic setting: 240 items in 6 planted clusters, 300 users with 20 interactions on average
(generator seed 7), genres and tags removed and titles reduced to "Synthetic Movie <id>" (the year
kept: the one content signal left, and unrelated to the clusters). ALS implicit, rank 16, 5
iterations, seed 1; k-means k = 6, seed 1, 2 starts. Threshold: purity >= 0.9, as for the content features
on full metadata (tests/unit/test_clusters.py). Measured: behaviour 1.0; content on the stripped
metadata 0.258 (its clusters follow the release decade), asserted below 0.5.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import Vectors
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from watchnext.config import ClustersConfig, ContentConfig, SyntheticConfig, ValidationConfig
from watchnext.constants import COL_CLUSTER, COL_ITEM, COL_ITEM_IDX, COL_RATING, COL_USER, COL_USER_IDX
from watchnext.features import fit_content_features
from watchnext.ingest.synthetic import SyntheticData, generate
from watchnext.ingest.validate import validate_items
from watchnext.models.als import AlsParams, factor_frames, fit_als
from watchnext.models.cluster_features import (
    behaviour_features,
    choose_features,
    content_coverage,
    hybrid_features,
)
from watchnext.models.clusters import fit_clusters, label_clusters

pytestmark = [pytest.mark.spark]

SYNTH = SyntheticConfig(
    n_users=300, n_items=240, n_clusters=6, mean_interactions_per_user=20, partitions=2, seed=7
)
PURITY = 0.9  # the content tests' threshold
K6 = ClustersConfig(k=6, seed=1)
N_INIT = 2  # k-means starts: 2 instead of the default 5 keep the test short; behaviour still scores 1.0
ALS = AlsParams(rank=16, max_iter=5, reg_param=0.1, alpha=10.0, checkpoint_interval=-1, seed=1)


@pytest.fixture(scope="module")
def thin(spark: SparkSession) -> Iterator[tuple[SyntheticData, DataFrame, DataFrame]]:
    """The generator's output, its items with the metadata stripped (item_idx added), and the
    interactions with user_idx / item_idx (both cached for the module)."""
    data = generate(spark, SYNTH)
    valid = validate_items(data.source.items, rules=ValidationConfig(), run_date=dt.date(2024, 6, 1)).valid
    empty = F.array().cast("array<string>")
    items = valid.select(
        COL_ITEM,
        (F.col(COL_ITEM).cast("int") - 1).cast("int").alias(COL_ITEM_IDX),
        F.concat(F.lit("Synthetic Movie "), F.col(COL_ITEM)).alias("title"),
        "year",
        empty.alias("genres"),
        empty.alias("tags"),
    ).cache()
    interactions = data.source.interactions.select(
        COL_USER,
        F.col(COL_USER).cast("int").alias(COL_USER_IDX),
        COL_ITEM,
        (F.col(COL_ITEM).cast("int") - 1).cast("int").alias(COL_ITEM_IDX),
        F.col(COL_RATING).cast("float").alias(COL_RATING),
    ).cache()
    yield data, items, interactions
    interactions.unpersist()
    items.unpersist()


def purity(assignments: DataFrame, truth: DataFrame) -> float:
    """Share of items whose cluster's majority planted cluster is their own planted cluster."""
    a = assignments.join(truth.withColumnRenamed(COL_CLUSTER, "planted"), COL_ITEM).toPandas()
    assert len(a) == SYNTH.n_items
    majority = a.groupby(COL_CLUSTER)["planted"].agg(lambda s: s.value_counts().idxmax())
    return float((a[COL_CLUSTER].map(majority) == a["planted"]).mean())


def test_behaviour_recovers_planted_clusters_where_thin_content_cannot(thin) -> None:
    data, items, interactions = thin
    assert content_coverage(items) == 0.0
    assert choose_features("auto", content_coverage(items), 0.5) == "behaviour"

    _, factors = factor_frames(fit_als(interactions, ALS, num_blocks=2))
    behaviour = behaviour_features(items, factors).cache()
    try:
        # every item has factors (all were interacted with), each a unit vector
        norms = behaviour.select(
            F.aggregate(vector_to_array("features"), F.lit(0.0), lambda a, x: a + x * x).alias("n2")
        )
        assert norms.where(F.abs(F.col("n2") - 1.0) > 1e-9).isEmpty() and norms.count() == SYNTH.n_items
        by_behaviour = fit_clusters(behaviour, K6, n_init=N_INIT)
        assert by_behaviour.k == 6 and by_behaviour.n_uncategorised == 0
        behaviour_purity = purity(by_behaviour.assignments, data.item_clusters)
    finally:
        behaviour.unpersist()
    # the same k-means on what content is left (title words shared by all, a random release decade)
    stripped = fit_content_features(items, ContentConfig()).features
    content_purity = purity(fit_clusters(stripped, K6, n_init=N_INIT).assignments, data.item_clusters)
    assert behaviour_purity >= PURITY, behaviour_purity
    assert content_purity < 0.5, content_purity


# --- the auto decision ------------------------------------------------------------------------------


def test_content_coverage_counts_items_with_a_genre_or_tag(spark: SparkSession) -> None:
    items = spark.createDataFrame(
        [
            ("1", ["Drama"], []),  # genre
            ("2", [], ["cosy"]),  # tag
            ("3", ["Comedy"], ["cosy"]),  # both
            ("4", [], []),
            ("5", None, None),
            ("6", ["(no genres listed)"], []),  # MovieLens' marker is no genre
            ("7", ["  ", ""], [" "]),  # blanks are nothing
            ("8", [" (No Genres Listed) "], None),
        ],
        "item_id string, genres array<string>, tags array<string>",
    )
    assert content_coverage(items) == 3 / 8
    assert content_coverage(items.where("item_id IN ('4', '5', '6', '7', '8')")) == 0.0
    assert content_coverage(items.where("item_id IN ('1', '2', '3')")) == 1.0
    assert content_coverage(items.limit(0)) == 0.0
    with pytest.raises(ValueError, match="items is missing column 'tags'"):
        content_coverage(items.drop("tags"))


@pytest.mark.parametrize(
    ("mode", "coverage", "threshold", "want"),
    [
        ("auto", 0.0, 0.5, "behaviour"),
        ("auto", 0.4999, 0.5, "behaviour"),
        ("auto", 0.5, 0.5, "content"),  # at the threshold: content
        ("auto", 1.0, 0.5, "content"),
        ("auto", 0.0, 0.0, "content"),  # threshold 0: always content
        ("auto", 0.999, 1.0, "behaviour"),  # threshold 1: content only when every item has some
        ("auto", 1.0, 1.0, "content"),
        ("content", 0.0, 0.5, "content"),  # an explicit mode is kept whatever the coverage
        ("behaviour", 1.0, 0.5, "behaviour"),
        ("hybrid", 0.3, 0.5, "hybrid"),
    ],
)
def test_choose_features(mode: str, coverage: float, threshold: float, want: str) -> None:
    assert choose_features(mode, coverage, threshold) == want


def test_choose_features_and_config_name_bad_values() -> None:
    with pytest.raises(ValueError, match="clusters.features must be auto or one of content, behaviour"):
        choose_features("genres", 1.0, 0.5)
    with pytest.raises(ValueError, match=r"content.min_coverage must be in \[0, 1\], got 1.5"):
        choose_features("auto", 1.0, 1.5)
    for bad in ({"min_coverage": -0.1}, {"min_coverage": 1.1}):
        with pytest.raises(ValueError, match="min_coverage"):
            ContentConfig(**bad)
    with pytest.raises(ValueError, match="behaviour_weight"):
        ClustersConfig(behaviour_weight=0)
    with pytest.raises(ValueError, match="features"):
        ClustersConfig(features="genres")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_members"):
        ClustersConfig(label_members=0)


# --- the feature vectors ----------------------------------------------------------------------------


def _arrays(df: DataFrame) -> DataFrame:
    return df.select(COL_ITEM, COL_ITEM_IDX, vector_to_array("features").alias("features"))


def test_behaviour_features_are_unit_factors_or_zero(spark: SparkSession) -> None:
    items = spark.createDataFrame([("a", 0), ("b", 1), ("c", 2), ("d", 3)], "item_id string, item_idx int")
    factors = spark.createDataFrame(
        [(0, [3.0, 4.0]), (1, [0.0, -2.0]), (2, [0.0, 0.0]), (9, [1.0, 1.0])],  # 9: not an item of the run
        "item_idx int, features array<float>",
    )
    got = behaviour_features(items, factors)
    want = spark.createDataFrame(
        [("a", 0, [0.6, 0.8]), ("b", 1, [0.0, -1.0]), ("c", 2, [0.0, 0.0]), ("d", 3, [0.0, 0.0])],
        "item_id string, item_idx int, features array<double>",
    )  # d has no factors: the zero vector, so fit_clusters' "no features" cluster
    assertDataFrameEqual(_arrays(got), want, rtol=1e-6)
    with pytest.raises(ValueError, match="item_factors is missing column 'features'"):
        behaviour_features(items, factors.drop("features"))


def test_hybrid_features_weight_the_factor_block(spark: SparkSession) -> None:
    content = spark.createDataFrame(
        [
            ("a", 0, Vectors.sparse(2, [0], [1.0])),
            ("b", 1, Vectors.dense([0.6, 0.8])),
            ("c", 2, Vectors.sparse(2, [], [])),
        ],
        ["item_id", "item_idx", "features"],
    )
    behaviour = spark.createDataFrame(
        [(0, Vectors.dense([0.0, 1.0])), (2, Vectors.dense([1.0, 0.0]))], ["item_idx", "features"]
    )  # b has no factors
    got = hybrid_features(content, behaviour, behaviour_weight=4.0)
    # a: [1, 0, 2 * 0, 2 * 1] / sqrt(5); b: content only; c: behaviour only
    r5 = 5**0.5
    want = spark.createDataFrame(
        [
            ("a", 0, [1 / r5, 0.0, 0.0, 2 / r5]),
            ("b", 1, [0.6, 0.8, 0.0, 0.0]),
            ("c", 2, [0.0, 0.0, 1.0, 0.0]),
        ],
        _arrays(got).schema,
    )
    assertDataFrameEqual(_arrays(got), want, rtol=1e-9)
    with pytest.raises(ValueError, match="behaviour_weight must be > 0"):
        hybrid_features(content, behaviour, behaviour_weight=0.0)


# --- "Fans of ..." labels ---------------------------------------------------------------------------

_ITEMS = [
    # item_id, item_idx, cluster, title, genres
    ("a1", 0, 0, "Abba", ["Pop"]),
    ("a2", 1, 0, "Blondie", ["Pop"]),
    ("b1", 2, 1, "Nirvana", []),
    ("b2", 3, 1, "Blur", []),
    ("b3", 4, 1, "Oasis", []),
    ("b4", 5, 1, "Pulp", []),
    ("c1", 6, 2, "Nirvana", []),  # another artist of the same name
    ("c2", 7, 2, "Blur", []),
    ("c3", 8, 2, "Suede", []),
    ("d1", 9, 3, "Unheard", []),  # nobody listened to cluster 3
    ("d2", 10, 3, "Silent", []),
    ("e1", 11, 4, "  ", []),  # a blank title: the item id stands in
    ("e2", 12, 4, None, []),
    ("f1", 13, 5, "Suede", []),
    ("g1", 14, 6, "Suede", []),
]
# item -> its users; u1 plays b4 three times, which counts once (distinct users)
_PLAYS = {
    "a1": ["u1"], "a2": ["u2"],
    "b1": ["u1", "u2", "u3"], "b2": ["u1", "u2"], "b3": ["u3", "u4"], "b4": ["u1", "u1", "u1"],
    "c1": ["u5", "u6", "u7"], "c2": ["u5", "u6"], "c3": ["u7"],
    "e1": ["u8"], "e2": ["u9"], "f1": ["u1"], "g1": ["u2"],
}  # fmt: skip
LABELS_SCHEMA = "cluster_id int, label string, size long, top_genres array<string>, top_tags array<string>"


def _label_inputs(spark: SparkSession) -> tuple[DataFrame, DataFrame, DataFrame]:
    items = spark.createDataFrame(
        [(i, idx, t, g, []) for i, idx, _, t, g in _ITEMS],
        "item_id string, item_idx int, title string, genres array<string>, tags array<string>",
    )
    assignments = spark.createDataFrame(
        [(i, idx, c) for i, idx, c, _, _ in _ITEMS], "item_id string, item_idx int, cluster_id int"
    )
    interactions = spark.createDataFrame(
        [(u, i) for i, users in _PLAYS.items() for u in users], "user_id string, item_id string"
    )
    return assignments, items, interactions


def test_fans_labels(spark: SparkSession) -> None:
    assignments, items, interactions = _label_inputs(spark)
    got = label_clusters(assignments, items, n_genres=2, n_tags=1, interactions=interactions, n_members=2)
    # 0: Pop is characteristic (2 of 2 items, 2 of 15 overall): labelled as before.
    # 1: users b1 3, b2 2, b3 2 (tie with b2: lower item_idx first), b4 1 -> "Nirvana, Blur"; 2: c1 3,
    #    c2 2 -> "Nirvana, Blur" too: both take their next member (Oasis, Suede) and differ.
    # 3: no member has a user: "Uncategorised". 4: e1 and e2 tie at 1 user; blank / null titles -> ids.
    # 5 and 6: "Suede" alone, no member left to add: equal size, the lower id keeps the label.
    want = [
        (0, "Pop", 2, ["Pop"], []),
        (1, "Fans of Nirvana, Blur, Oasis", 4, [], []),
        (2, "Fans of Nirvana, Blur, Suede", 3, [], []),
        (3, "Uncategorised", 2, [], []),
        (4, "Fans of e1, e2", 2, [], []),
        (5, "Fans of Suede", 1, [], []),
        (6, "Fans of Suede #2", 1, [], []),
    ]
    assertDataFrameEqual(got, spark.createDataFrame(want, LABELS_SCHEMA))

    # the same data in another order and partitioning: the same table
    again = label_clusters(
        assignments.repartition(3).orderBy(F.rand(3)),
        items.repartition(2),
        n_genres=2,
        n_tags=1,
        interactions=interactions.repartition(4).orderBy(F.rand(5)),
        n_members=2,
    )
    assertDataFrameEqual(again, got)

    # three members from the start: no collision to resolve, the same labels
    three = label_clusters(assignments, items, n_genres=2, n_tags=1, interactions=interactions, n_members=3)
    assertDataFrameEqual(three, got)

    # without interactions: the genre/tag rule alone, as before
    plain = label_clusters(assignments, items, n_genres=2, n_tags=1).orderBy("cluster_id")
    uncategorised = ["Uncategorised", *(f"Uncategorised #{i}" for i in range(2, 7))]
    assert [r.label for r in plain.collect()] == ["Pop", *uncategorised]

    with pytest.raises(ValueError, match="n_members >= 1"):
        label_clusters(assignments, items, n_genres=2, n_tags=1, interactions=interactions, n_members=0)
    with pytest.raises(ValueError, match="items is missing column 'title'"):
        label_clusters(assignments, items.drop("title"), n_genres=2, n_tags=1, interactions=interactions)
