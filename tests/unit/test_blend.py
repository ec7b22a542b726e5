"""The blend's pieces against pandas references: candidates, pool, blend, the capped top-N, and the
numpy NDCG the weight tuner optimises against the Spark evaluator."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from watchnext.evaluation.metrics import ranking_metrics
from watchnext.models import blend, blend_tuning
from watchnext.models.blend_windows import spark_reference_ranking

pytestmark = [pytest.mark.spark]

CAND = "user_idx int, item_idx int, source string, score double, rank int, anchor_idx int"


def _random_pool(
    n_users: int, n_items: int, n_clusters: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """A pool with three sources of random scores (ties included) and held-out truth per user."""
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for u in range(n_users):
        items = rng.choice(n_items, size=rng.integers(12, 30), replace=False)
        for i in items:
            f = rng.choice([0.0, 0.25, 0.5, 0.75, 1.0], size=3)
            rows.append((u, int(i), *f))
        truth += [(u, int(i)) for i in rng.choice(items, size=rng.integers(1, 6), replace=False)]
        truth += [(u, n_items + u)]  # a held-out item no source proposed: it only counts in IDCG
    pool = pd.DataFrame(rows, columns=["user_idx", "item_idx", "f_als", "f_item", "f_popular"])
    clusters = pd.DataFrame({"item_idx": range(n_items), "cluster_id": rng.integers(0, n_clusters, n_items)})
    clusters.loc[clusters.item_idx % 7 == 0, "cluster_id"] = None  # items without a cluster
    pool = pool.assign(sources=[["als"]] * len(pool), anchor_idx=None, prior=rng.random(len(pool)))
    return pool, pd.DataFrame(truth, columns=["user_idx", "item_idx"]), clusters


def _pool_frames(spark: SparkSession, seed: int = 0):
    pool, truth, clusters = _random_pool(40, 60, 4, seed)
    pool_df = spark.createDataFrame(
        pool,
        "user_idx int, item_idx int, f_als double, f_item double, f_popular double, "
        "sources array<string>, anchor_idx int, prior double",
    )
    clusters_df = spark.createDataFrame(
        clusters.astype({"cluster_id": "Int64"}), "item_idx int, cluster_id int"
    )
    truth_df = spark.createDataFrame(truth.assign(rating=1.0), "user_idx int, item_idx int, rating double")
    return pool, truth, clusters, pool_df, clusters_df, truth_df


def _reference_top_n(
    pool: pd.DataFrame, clusters: pd.DataFrame, w: dict[str, float], n: int, cap: int | None
):
    """Greedy pass down each user's ranking, then the relaxation: the rule of the module docstring."""
    df = pool.merge(clusters, on="item_idx", how="left")
    df["score"] = (
        sum(w.get(s, 0.0) * df[f"f_{s}"] for s in ("als", "item", "popular"))
        + blend.BACKFILL_EPS * df["prior"]
    )
    out = []
    for u, g in df.groupby("user_idx"):
        g = g.sort_values(["score", "item_idx"], ascending=[False, True])
        taken, count, rest = [], {}, []
        for r in g.itertuples():
            key = r.cluster_id if pd.notna(r.cluster_id) else ("own", r.item_idx)
            if cap is None or count.get(key, 0) < cap:
                count[key] = count.get(key, 0) + 1
                taken.append(r)
            else:
                rest.append(r)
        chosen = (taken + rest)[:n] if len(taken) < n else taken[:n]
        chosen = sorted(chosen, key=lambda r: (-r.score, r.item_idx))
        out += [(u, r.item_idx, r.score, k + 1) for k, r in enumerate(chosen)]
    return pd.DataFrame(out, columns=["user_idx", "item_idx", "score", "rank"])


@pytest.mark.parametrize("cap", [None, 1, 2])
def test_select_top_n_matches_greedy_reference(spark: SparkSession, cap: int | None) -> None:
    pool, _, clusters, pool_df, clusters_df, _ = _pool_frames(spark)
    w = {"als": 1.0, "item": 0.5, "popular": 0.1}
    scored = blend.blend(pool_df, ["als", "item", "popular"], w)
    got = blend.select_top_n(scored, clusters_df, 10, cap).select("user_idx", "item_idx", "score", "rank")
    expected = _reference_top_n(pool, clusters, w, 10, cap)
    assertDataFrameEqual(
        got, spark.createDataFrame(expected, "user_idx int, item_idx int, score double, rank int")
    )
    # every user has exactly 10 distinct items (each pool has >= 12)
    assert (expected.groupby("user_idx").item_idx.nunique() == 10).all()


def test_cap_holds_when_the_pool_allows(spark: SparkSession) -> None:
    rows = [(0, i, float(100 - i), 0.0, float(i)) for i in range(20)]
    clusters = pd.DataFrame({"item_idx": range(20), "cluster_id": [i % 5 for i in range(20)]})
    pool = spark.createDataFrame(
        [(*r, ["als"], None, 0.0) for r in rows],
        "user_idx int, item_idx int, f_als double, f_item double, f_popular double, "
        "sources array<string>, anchor_idx int, prior double",
    )
    scored = blend.blend(pool, ["als", "item", "popular"], {"als": 1.0})
    top = blend.select_top_n(scored, spark.createDataFrame(clusters), 10, 2).toPandas()
    # 5 clusters x 2 = 10: exactly two per cluster, the two best of each (items 0..9)
    assert sorted(top.item_idx) == list(range(10))
    assert top.groupby("cluster_id").size().tolist() == [2] * 5
    assert top.sort_values("rank").item_idx.tolist() == list(range(10))


@pytest.mark.parametrize("cap", [None, 2])
def test_numpy_ndcg_equals_the_spark_evaluator(spark: SparkSession, cap: int | None) -> None:
    pool, truth, clusters, pool_df, clusters_df, truth_df = _pool_frames(spark, seed=3)
    w = {"als": 0.7, "item": 0.4, "popular": 0.2}
    k = 10
    scored = blend.blend(pool_df, ["als", "item", "popular"], w)
    top = blend.select_top_n(scored, clusters_df, k, cap)
    spark_ndcg = ranking_metrics(top, truth_df, k)[f"ndcg_at_{k}"]

    rel = pool.merge(truth.assign(relevant=True), on=["user_idx", "item_idx"], how="left")
    rel["relevant"] = rel["relevant"].astype("boolean").fillna(False)
    data = blend_tuning.TuningData.from_pandas(
        rel.merge(clusters, on="item_idx", how="left"),
        truth.groupby("user_idx").size(),
        ["als", "item", "popular"],
    )
    assert blend_tuning.ndcg_at_k(data, w, k, cap) == pytest.approx(spark_ndcg, abs=1e-12)


def test_tune_weights_finds_the_informative_mix() -> None:
    """Relevance depends on als + item; popular is noise: the tuned blend beats every single source
    and the configured start, and the same seed gives the same weights."""
    rng = np.random.default_rng(5)
    n_users, per_user = 300, 40
    u = np.repeat(np.arange(n_users), per_user)
    a, i, p = rng.random(len(u)), rng.random(len(u)), rng.random(len(u))
    relevant = (a + i + 0.3 * rng.standard_normal(len(u))) > 1.5
    pdf = pd.DataFrame(
        {
            "user_idx": u,
            "item_idx": np.tile(np.arange(per_user), n_users),
            "cluster_id": 0,
            "relevant": relevant,
            "f_als": a,
            "f_item": i,
            "f_popular": p,
        }  # fmt: skip
    )
    n_rel = pdf.groupby("user_idx").relevant.sum()
    data = blend_tuning.TuningData.from_pandas(pdf, n_rel[n_rel > 0], ["als", "item", "popular"])
    search = blend_tuning.tune_weights(
        data, 10, None, n_trials=60, seed=1, start={"als": 1.0, "popular": 1.0}
    )
    assert search.value > max(search.single_source.values()) + 0.02
    assert search.value >= blend_tuning.ndcg_at_k(data, {"als": 1.0, "popular": 1.0}, 10, None)
    assert search.weights["popular"] < 0.3 < min(search.weights["als"], search.weights["item"])
    again = blend_tuning.tune_weights(data, 10, None, n_trials=60, seed=1, start={"als": 1.0, "popular": 1.0})
    assert again.weights == search.weights
    # an ablation given the single-source scores it shares with the search: the same search as without
    known = {s: v for s, v in search.single_source.items() if s != "popular"}
    given = blend_tuning.tune_weights(data.without("popular"), 10, None, n_trials=12, seed=2, single=known)
    computed = blend_tuning.tune_weights(data.without("popular"), 10, None, n_trials=12, seed=2)
    assert given.single_source == computed.single_source == known
    assert given.trials == computed.trials and given.weights == computed.weights


def test_pool_normalises_and_merges_sources(spark: SparkSession) -> None:
    cand = spark.createDataFrame(
        [
            (1, 10, "als", 5.0, 1, None),
            (1, 11, "als", 3.0, 2, None),
            (1, 11, "item", 0.9, 1, 7),
            (1, 12, "item", 0.2, 2, 8),
            (2, 10, "popular", 50.0, 1, None),
            (2, 13, "backfill", 7.0, 1, None),  # internal: in the pool, no feature
            (2, 14, "ncf", 7.0, 1, None),  # not a configured source: ignored
        ],
        CAND,
    )
    popularity = spark.createDataFrame([(10, 8.0), (11, 2.0), (13, 4.0)], "item_idx int, score double")
    got = blend.pool(cand, ["als", "item", "popular"], m=4, popularity=popularity)
    expected = [
        (1, 10, 1.0, 0.0, 0.0, ["als"], None, 1.0),
        (1, 11, 0.75, 1.0, 0.0, ["als", "item"], 7, 0.25),
        (1, 12, 0.0, 0.75, 0.0, ["item"], 8, 0.0),
        (2, 10, 0.0, 0.0, 1.0, ["popular"], None, 1.0),
        (2, 13, 0.0, 0.0, 0.0, ["backfill"], None, 0.5),
    ]
    schema = (
        "user_idx int, item_idx int, f_als double, f_item double, f_popular double, sources array<string>, "
        "anchor_idx int, prior double"
    )
    assertDataFrameEqual(got, spark.createDataFrame(expected, schema))
    mm = blend.pool(cand, ["als", "item", "popular"], m=4, normalization="minmax")
    assertDataFrameEqual(
        mm.select("user_idx", "item_idx", "f_als", "f_item"),
        spark.createDataFrame(
            [(1, 10, 1.0, 0.0), (1, 11, 0.0, 1.0), (1, 12, 0.0, 0.0), (2, 10, 0.0, 0.0), (2, 13, 0.0, 0.0)],
            "user_idx int, item_idx int, f_als double, f_item double",
        ),
    )
    with pytest.raises(ValueError, match="unknown candidate sources"):
        blend.pool(cand, ["als", "bogus"], m=4)


def test_blend_cold_users_switch_weights_and_dominant_source(spark: SparkSession) -> None:
    pool = spark.createDataFrame(
        [
            (1, 10, 1.0, 0.0, 0.5, False, 0.0),
            (1, 11, 0.0, 1.0, 0.0, False, 0.0),
            (2, 10, 1.0, 0.0, 0.5, True, 0.0),
        ],
        "user_idx int, item_idx int, f_als double, f_cluster double, f_trending double, cold boolean, "
        "prior double",
    )
    got = blend.blend(pool, ["als", "cluster", "trending"], {"als": 1.0, "cluster": 0.2}, {"trending": 1.0})
    expected = [(1, 10, 1.0, "als"), (1, 11, 0.2, "cluster"), (2, 10, 0.5, "trending")]
    assertDataFrameEqual(
        got.select("user_idx", "item_idx", "score", "dominant"),
        spark.createDataFrame(expected, "user_idx int, item_idx int, score double, dominant string"),
    )


def test_item_candidates_sum_similarities_and_name_the_anchor(spark: SparkSession) -> None:
    ts = dt.datetime(2024, 1, 1)
    history = spark.createDataFrame(
        [(1, 1, ts), (1, 2, ts + dt.timedelta(days=1)), (1, 3, ts + dt.timedelta(days=2))],
        "user_idx int, item_idx int, timestamp timestamp",
    )
    nb = spark.createDataFrame(
        [(1, 10, 0.5), (2, 10, 0.3), (3, 10, 0.5), (1, 11, 0.9), (2, 3, 0.8), (3, 12, 0.1)],
        "item_idx int, neighbor_idx int, score double",
    )
    got = blend.item_candidates(nb, history, 5)
    # 10: 0.5 + 0.3 + 0.5, anchor tie between 1 and 3 -> 1; item 3 is seen
    expected = [(1, 10, 1.3, 1, 1), (1, 11, 0.9, 2, 1), (1, 12, 0.1, 3, 3)]
    schema = "user_idx int, item_idx int, score double, rank int, anchor_idx int"
    assertDataFrameEqual(got, spark.createDataFrame(expected, schema), rtol=1e-12)
    recent = blend.item_candidates(nb, history, 5, recent=1)  # only item 3, the latest
    assertDataFrameEqual(recent, spark.createDataFrame([(1, 10, 0.5, 1, 3), (1, 12, 0.1, 2, 3)], schema))


def test_cluster_candidates_follow_affinity_and_popularity(spark: SparkSession) -> None:
    aff = spark.createDataFrame(
        [(1, 0, 0.7), (1, 1, 0.2), (1, 2, 0.1)], "user_idx int, cluster_id int, share double"
    )
    ic = spark.createDataFrame([(10, 0), (11, 0), (12, 1), (13, 2)], "item_idx int, cluster_id int")
    pop = spark.createDataFrame([(10, 10.0), (11, 5.0), (12, 8.0), (13, 100.0)], "item_idx int, score double")
    seen = spark.createDataFrame([(1, 10)], "user_idx int, item_idx int")
    got = blend.cluster_candidates(aff, ic, pop, seen, 5, top_clusters=2)
    # cluster 2 is not among the top 2; item 10 is seen; 11: 0.7 * 5/10, 12: 0.2 * 8/8
    expected = [(1, 11, 0.35, 1), (1, 12, 0.2, 2)]
    assertDataFrameEqual(
        got, spark.createDataFrame(expected, "user_idx int, item_idx int, score double, rank int"), rtol=1e-12
    )


def test_cluster_backfill_gives_every_cluster_its_popular_unseen_items(spark: SparkSession) -> None:
    ic = spark.createDataFrame([(i, i % 3) for i in range(12)], "item_idx int, cluster_id int")
    pop = spark.createDataFrame([(i, float(100 - i)) for i in range(12)], "item_idx int, score double")
    users = spark.createDataFrame([(1,), (2,)], "user_idx int")
    seen = spark.createDataFrame([(1, 0), (1, 3), (1, 1)], "user_idx int, item_idx int")
    got = blend.cluster_backfill(ic, pop, users, seen, per_cluster=2)
    # user 1 has seen 0 and 3 (cluster 0) and 1 (cluster 1); ranks follow popularity
    u1 = [6, 9, 4, 7, 2, 5]
    u2 = [0, 3, 1, 4, 2, 5]
    expected = [(1, i, float(100 - i), r + 1) for r, i in enumerate(sorted(u1))] + [
        (2, i, float(100 - i), r + 1) for r, i in enumerate(sorted(u2))
    ]
    assertDataFrameEqual(
        got, spark.createDataFrame(expected, "user_idx int, item_idx int, score double, rank int")
    )


def _reference_item_candidates(
    nb: pd.DataFrame, history: pd.DataFrame, m: int, recent: int | None
) -> pd.DataFrame:
    """item_candidates in plain pandas: every vote listed, summed and ranked."""
    latest = history.groupby(["user_idx", "item_idx"], as_index=False).timestamp.max()
    latest = latest.sort_values(["user_idx", "timestamp", "item_idx"], ascending=[True, False, False])
    anchors = latest if recent is None else latest.groupby("user_idx").head(recent)
    votes = anchors[["user_idx", "item_idx"]].merge(nb, on="item_idx")
    votes = votes.rename(columns={"item_idx": "anchor_idx"}).rename(columns={"neighbor_idx": "item_idx"})
    best = votes.sort_values(["score", "anchor_idx"], ascending=[False, True]).drop_duplicates(
        ["user_idx", "item_idx"]
    )
    sums = votes.groupby(["user_idx", "item_idx"], as_index=False).score.sum()
    cand = sums.merge(best[["user_idx", "item_idx", "anchor_idx"]], on=["user_idx", "item_idx"])
    cand = cand.merge(latest[["user_idx", "item_idx"]], how="left", indicator=True)
    cand = cand[cand._merge == "left_only"].drop(columns="_merge")
    cand = cand.sort_values(["user_idx", "score", "item_idx"], ascending=[True, False, True])
    cand["rank"] = cand.groupby("user_idx").cumcount() + 1
    cand = cand[cand["rank"] <= m]
    return cand[["user_idx", "item_idx", "score", "rank", "anchor_idx"]].astype(
        {"user_idx": "int32", "item_idx": "int32", "rank": "int32", "anchor_idx": "int32"}
    )


@pytest.mark.parametrize("recent", [None, 3])
def test_item_candidates_match_a_reference_on_random_data(spark: SparkSession, recent: int | None) -> None:
    """Several Arrow batches; ties in the sums, the anchors' votes and the timestamps; repeated views."""
    rng = np.random.default_rng(11)
    n_users, n_items, m = 200, 50, 6
    base = dt.datetime(2024, 1, 1)
    history = pd.DataFrame(
        {
            "user_idx": rng.integers(0, n_users, 3000),
            "item_idx": rng.integers(0, n_items, 3000),
            "timestamp": [base + dt.timedelta(days=int(d)) for d in rng.integers(0, 20, 3000)],
        }
    ).astype({"user_idx": "int32", "item_idx": "int32"})
    nb = pd.DataFrame(
        {"item_idx": rng.integers(0, n_items, 400), "neighbor_idx": rng.integers(0, n_items, 400)}
    ).drop_duplicates()
    nb = nb[nb.item_idx != nb.neighbor_idx].astype("int32")
    nb["score"] = rng.integers(1, 5, len(nb)) / 4.0  # exact sums, many ties
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "32")
    try:
        got = blend.item_candidates(
            spark.createDataFrame(nb),
            spark.createDataFrame(history.sample(frac=1.0, random_state=2)),
            m,
            recent=recent,
        )
        want = _reference_item_candidates(nb, history, m, recent)
        assert len(want) > 500 and want.anchor_idx.nunique() > 20
        assertDataFrameEqual(got, spark.createDataFrame(want, got.schema))
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")


def test_cluster_candidates_match_a_reference_on_random_data(spark: SparkSession) -> None:
    """Several Arrow batches, ties in shares and popularity, items without a cluster, seen items."""
    rng = np.random.default_rng(3)
    n_users, n_items, n_clusters, m = 150, 120, 6, 8
    aff = pd.DataFrame(
        [(u, c, rng.integers(1, 5) / 4.0) for u in range(n_users) for c in range(n_clusters)],
        columns=["user_idx", "cluster_id", "share"],
    ).astype({"user_idx": "int32", "cluster_id": "int32"})
    ic = pd.DataFrame(
        {"item_idx": np.arange(n_items, dtype="int32"), "cluster_id": rng.integers(0, n_clusters, n_items)}
    )
    ic["cluster_id"] = ic.cluster_id.where(ic.item_idx % 17 != 5).astype(
        "Int32"
    )  # some items without a cluster
    pop = pd.DataFrame(
        {"item_idx": np.arange(n_items, dtype="int32"), "score": rng.integers(1, 6, n_items) * 1.0}
    )
    seen = pd.DataFrame(
        {"user_idx": rng.integers(0, n_users, 2000), "item_idx": rng.integers(0, n_items, 2000)}
    ).astype("int32")
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "16")
    try:
        got = blend.cluster_candidates(
            spark.createDataFrame(aff),
            spark.createDataFrame(ic, "item_idx int, cluster_id int"),
            spark.createDataFrame(pop),
            spark.createDataFrame(seen),
            m,
            top_clusters=2,
        )
        # the reference: favourite clusters, each cluster's 3m most popular items, scored and ranked
        fav = aff.sort_values(["user_idx", "share", "cluster_id"], ascending=[True, False, True])
        fav = fav.groupby("user_idx").head(2)
        items = ic.dropna().astype({"cluster_id": "int32"}).merge(pop, on="item_idx")
        items["_pop"] = items.score / items.groupby("cluster_id").score.transform("max")
        items = items.sort_values(["cluster_id", "score", "item_idx"], ascending=[True, False, True])
        items = items.groupby("cluster_id").head(3 * m)
        want = fav.merge(items[["cluster_id", "item_idx", "_pop"]], on="cluster_id")
        want["score"] = want.share * want._pop
        want = want.merge(seen.drop_duplicates(), how="left", indicator=True)
        want = want[want._merge == "left_only"].sort_values(
            ["user_idx", "score", "item_idx"], ascending=[True, False, True]
        )
        want["rank"] = (want.groupby("user_idx").cumcount() + 1).astype("int32")
        want = want[want["rank"] <= m][["user_idx", "item_idx", "score", "rank"]]
        assert len(want) == n_users * m and want.score.duplicated().any()
        assertDataFrameEqual(got, spark.createDataFrame(want, got.schema))
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")


def test_cluster_backfill_matches_a_reference_on_random_data(spark: SparkSession) -> None:
    """Several Arrow batches, popularity ties, items without a cluster or without popularity, users
    without history, repeated views, users who have seen most of a cluster."""
    rng = np.random.default_rng(8)
    n_users, n_items, per_cluster = 90, 70, 3
    ic = pd.DataFrame(
        {"item_idx": np.arange(n_items, dtype="int32"), "cluster_id": rng.integers(0, 5, n_items)}
    )
    ic["cluster_id"] = ic.cluster_id.where(ic.item_idx % 13 != 4).astype("Int32")
    pop = pd.DataFrame({"item_idx": np.arange(0, n_items, 2, dtype="int32")})
    pop["score"] = rng.integers(1, 4, len(pop)) * 1.0
    seen = pd.DataFrame(
        {"user_idx": rng.integers(0, n_users - 10, 1500), "item_idx": rng.integers(0, n_items, 1500)}
    ).astype("int32")
    heavy = ic[ic.cluster_id == 0].item_idx.to_numpy()[1:]  # user 0 leaves one item of cluster 0 unseen
    seen = pd.concat([seen, pd.DataFrame({"user_idx": 0, "item_idx": heavy}).astype("int32")])
    users = pd.DataFrame({"user_idx": np.arange(n_users, dtype="int32")})
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "16")
    try:
        got = blend.cluster_backfill(
            spark.createDataFrame(ic, "item_idx int, cluster_id int"),
            spark.createDataFrame(pop),
            spark.createDataFrame(users),
            spark.createDataFrame(seen),
            per_cluster,
        )
        cat = ic.dropna().merge(pop, on="item_idx", how="left").fillna({"score": 0.0})
        cand = users.merge(cat, how="cross").merge(seen.drop_duplicates(), how="left", indicator=True)
        cand = cand[cand._merge == "left_only"].sort_values(["score", "item_idx"], ascending=[False, True])
        cand = cand.groupby(["user_idx", "cluster_id"]).head(per_cluster)
        cand = cand.sort_values(["user_idx", "score", "item_idx"], ascending=[True, False, True])
        cand["rank"] = (cand.groupby("user_idx").cumcount() + 1).astype("int32")
        want = cand[["user_idx", "item_idx", "score", "rank"]]
        # some user has a cluster with fewer than per_cluster unseen items left
        assert (cand.groupby(["user_idx", "cluster_id"]).size() < per_cluster).any()
        assertDataFrameEqual(got, spark.createDataFrame(want, got.schema))
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")


@pytest.mark.parametrize("normalization", ["rank", "minmax"])
def test_rank_candidates_matches_the_spark_windows_on_random_data(
    spark: SparkSession, normalization: str
) -> None:
    """Random candidates of four sources, backfill and an unconfigured one (ignored), tied scores,
    anchors with nulls, cold users by count (some users without one), items without a cluster; more
    rows than one Arrow batch and several partitions: every scored row, its rank and its reason as
    the Spark windows had them."""
    rng = np.random.default_rng(11)
    sources = ["als", "item", "cluster", "popular"]
    n_users, n_items, m = 150, 90, 12
    rows = []
    for u in range(n_users):
        for s in [*sources, "backfill", "ncf"]:
            items = rng.choice(n_items, size=rng.integers(0, m + 1), replace=False)
            scores = np.sort(rng.choice([0.1, 0.2, 0.4, 0.4, 0.8, 1.5], size=len(items)))[::-1]
            for r, (i, sc) in enumerate(zip(items, scores, strict=True)):
                anchor = int(rng.integers(0, n_items)) if s == "item" and rng.random() < 0.8 else None
                rows.append((u, int(i), s, float(sc), r + 1, anchor))
    cand = spark.createDataFrame(rows, CAND)
    popularity = spark.createDataFrame(
        [(i, float(rng.integers(1, 50))) for i in range(0, n_items, 2)], "item_idx int, score double"
    )
    counts = spark.createDataFrame(
        [(u, int(rng.integers(0, 8))) for u in range(0, n_users, 3)] + [(n_users + 5, 1)],
        "user_idx int, count long",
    )
    clusters = [(i, None if i % 9 == 0 else int(rng.integers(0, 5))) for i in range(n_items)]
    item_clusters = spark.createDataFrame(clusters, "item_idx int, cluster_id int")
    w = {"als": 1.0, "item": 0.6, "cluster": 0.3, "popular": 0.3}
    cold_w = {"cluster": 1.0, "popular": 0.5}
    args = (sources, m, normalization)
    got = blend.rank_candidates(
        cand, *args, w, item_clusters, 10, 2, popularity=popularity, counts=counts, cold_threshold=4,
        cold_weights=cold_w, partitions=3,
    )  # fmt: skip
    expected = spark_reference_ranking(
        cand,
        *args,
        popularity,
        counts.withColumnRenamed("count", "count"),
        4,
        w,
        cold_w,
        item_clusters,
        10,
        2,
    )
    assertDataFrameEqual(got, expected.select(*got.columns))
    per_user = got.where("rank is not null").groupBy("user_idx").count().toPandas()
    assert (per_user["count"] <= 10).all() and (per_user["count"] == 10).any()
