"""Metrics: hand-computed examples, and parity with plain-Python/NumPy references on random data."""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from itertools import combinations

import numpy as np
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from watchnext.constants import COL_GENRES, COL_ITEM_IDX, COL_RANK, COL_RATING, COL_SCORE, COL_USER_IDX
from watchnext.evaluation.beyond_accuracy import feature_table
from watchnext.evaluation.local_metrics import LocalTrainStats, evaluate_all_arrays, ranking_metrics_arrays
from watchnext.evaluation.metrics import (
    TrainStats,
    catalog_coverage,
    evaluate_all,
    intra_list_diversity,
    novelty,
    popularity_bias,
    ranking_metrics,
    rmse_mae,
    top_k,
)

pytestmark = pytest.mark.spark

TOL = 1e-9
USER, ITEM = COL_USER_IDX, COL_ITEM_IDX


def _schema(*fields: tuple[str, T.DataType]) -> T.StructType:
    return T.StructType([T.StructField(name, dtype) for name, dtype in fields])


RANK_RECS = _schema((USER, T.IntegerType()), (ITEM, T.IntegerType()), (COL_RANK, T.IntegerType()))
SCORE_RECS = _schema((USER, T.IntegerType()), (ITEM, T.IntegerType()), (COL_SCORE, T.DoubleType()))
TRUTH = _schema((USER, T.IntegerType()), (ITEM, T.IntegerType()), (COL_RATING, T.DoubleType()))
PAIRS = _schema((USER, T.IntegerType()), (ITEM, T.IntegerType()))
GENRES = _schema((ITEM, T.IntegerType()), (COL_GENRES, T.ArrayType(T.StringType())))
CLUSTERS = _schema((ITEM, T.IntegerType()), ("cluster", T.IntegerType()))


def _approx(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, abs=TOL, rel=0), key


# --- ranking metrics: a hand-made example -----------------------------------------------------------

# K = 3.
# user 1: list 10, 20, 30 (40 at rank 4 is cut); relevant {20, 40}: one hit, at rank 2.
# user 2: list 10, 40, 50; relevant {10, 50}: hits at ranks 1 and 3.
# user 3: no list; relevant {10}: zero on everything.
# user 4: a list but no truth: ignored.
HAND_RECS = [(1, 10, 1), (1, 20, 2), (1, 30, 3), (1, 40, 4), (2, 10, 1), (2, 40, 2), (2, 50, 3), (4, 10, 1)]
HAND_TRUTH = [(1, 20, 5.0), (1, 40, 3.0), (2, 10, 4.0), (2, 50, 2.0), (3, 10, 4.0)]
HAND_EXPECTED = {
    # (1/3 + 2/3 + 0) / 3
    "precision_at_3": 1 / 3,
    # (1/2 + 2/2 + 0) / 3
    "recall_at_3": 0.5,
    # u1: DCG = 1/log2(3) = 0.6309297535714575, IDCG(min(3, 2) = 2) = 1 + 0.6309... = 1.6309297535714575
    #     -> 0.38685280723454163
    # u2: DCG = 1/log2(2) + 1/log2(4) = 1.5, IDCG = 1.6309297535714575 -> 0.9197207891481876
    # (0.38685280723454163 + 0.9197207891481876 + 0) / 3
    "ndcg_at_3": 0.4355245321275764,
    # u1: AP = (P@2 = 1/2) / |R| = 0.5 / 2 = 0.25; u2: AP = (P@1 = 1 + P@3 = 2/3) / 2 = 0.8333...
    # (0.25 + 0.8333333333333334 + 0) / 3
    "map_at_3": 0.36111111111111116,
    # (1/2 + 1/1 + 0) / 3
    "mrr_at_3": 0.5,
    # (1 + 1 + 0) / 3
    "hit_rate_at_3": 2 / 3,
}


def test_ranking_metrics_hand_example(spark: SparkSession) -> None:
    recs = spark.createDataFrame(HAND_RECS, RANK_RECS)
    truth = spark.createDataFrame(HAND_TRUTH, TRUTH)
    _approx(ranking_metrics(recs, truth, k=3), HAND_EXPECTED)


def test_score_input_duplicates_and_rank_gaps_give_the_same_lists(spark: SparkSession) -> None:
    # Same lists as HAND_RECS, given by score, with a duplicated (user, item) whose best score counts.
    by_score = [(u, i, 10.0 - r) for u, i, r in HAND_RECS] + [(1, 30, -5.0)]
    # Same lists given by ranks with gaps (1, 5, 7, 9): ranks are renumbered 1..n.
    gappy = [(u, i, {1: 1, 2: 5, 3: 7, 4: 9}[r]) for u, i, r in HAND_RECS]
    truth = spark.createDataFrame(HAND_TRUTH, TRUTH)
    expected = spark.createDataFrame([r for r in HAND_RECS if r[2] <= 3], RANK_RECS)
    for recs in (spark.createDataFrame(by_score, SCORE_RECS), spark.createDataFrame(gappy, RANK_RECS)):
        assert sorted(top_k(recs, 3).collect()) == sorted(expected.collect())
        _approx(ranking_metrics(recs, truth, k=3), HAND_EXPECTED)


def test_relevance_threshold(spark: SparkSession) -> None:
    # Relevant = rating >= 4: u1 {20}, u2 {10}, u3 {10}.
    # u1: hit at rank 2 -> P 1/3, R 1, NDCG (1/log2(3)) / 1 = 0.6309297535714575, AP 0.5, RR 0.5
    # u2: hit at rank 1 -> P 1/3, R 1, NDCG 1, AP 1, RR 1;  u3: 0.
    recs = spark.createDataFrame(HAND_RECS, RANK_RECS)
    truth = spark.createDataFrame(HAND_TRUTH, TRUTH)
    expected = {
        "precision_at_3": (1 / 3 + 1 / 3) / 3,  # 0.2222...
        "recall_at_3": 2 / 3,
        "ndcg_at_3": (0.6309297535714575 + 1.0) / 3,  # 0.5436432511904858
        "map_at_3": 0.5,  # (0.5 + 1) / 3
        "mrr_at_3": 0.5,  # (0.5 + 1) / 3
        "hit_rate_at_3": 2 / 3,
    }
    _approx(ranking_metrics(recs, truth, k=3, relevance_threshold=4.0), expected)


def test_ranking_metrics_reject_empty_truth_and_bad_input(spark: SparkSession) -> None:
    recs = spark.createDataFrame(HAND_RECS, RANK_RECS)
    truth = spark.createDataFrame(HAND_TRUTH, TRUTH)
    with pytest.raises(ValueError, match="no user with a relevant item"):
        ranking_metrics(recs, truth, k=3, relevance_threshold=6.0)
    with pytest.raises(ValueError, match="k must be"):
        ranking_metrics(recs, truth, k=0)
    with pytest.raises(ValueError, match="'rank' or a 'score'"):
        ranking_metrics(recs.drop(COL_RANK), truth, k=3)
    with pytest.raises(ValueError, match="truth is missing column 'user_idx'"):
        ranking_metrics(recs, truth.drop(USER), k=3)


# --- ranking metrics: parity with a plain-Python reference on random data ----------------------------


def _reference_ranking(
    lists: dict[int, list[int]], relevant: dict[int, set[int]], k: int
) -> dict[str, float]:
    cols: dict[str, list[float]] = defaultdict(list)
    for u, rel in relevant.items():
        top = lists.get(u, [])[:k]
        hit_ranks = [r for r, item in enumerate(top, start=1) if item in rel]
        dcg = sum(1.0 / np.log2(r + 1) for r in hit_ranks)
        idcg = sum(1.0 / np.log2(r + 1) for r in range(1, min(k, len(rel)) + 1))
        cols["precision"].append(len(hit_ranks) / k)
        cols["recall"].append(len(hit_ranks) / len(rel))
        cols["ndcg"].append(dcg / idcg)
        cols["map"].append(sum(n / r for n, r in enumerate(hit_ranks, start=1)) / len(rel))
        cols["mrr"].append(1.0 / hit_ranks[0] if hit_ranks else 0.0)
        cols["hit_rate"].append(1.0 if hit_ranks else 0.0)
    return {f"{name}_at_{k}": float(np.mean(values)) for name, values in cols.items()}


RandomLists = tuple[dict[int, list[int]], dict[int, set[int]], list[tuple[int, int, float]]]


@pytest.fixture(scope="module")
def random_lists() -> RandomLists:
    """50 users with truth, 200 items; lists of 0-15 items scored at random (cut to K=10)."""
    rng = random.Random(7)
    lists: dict[int, list[int]] = {}
    relevant: dict[int, set[int]] = {}
    score_rows: list[tuple[int, int, float]] = []
    for u in range(55):  # users 50-54 have recommendations but no truth
        items = rng.sample(range(200), rng.choice([0, 3, 10, 10, 12, 15]))
        scores = rng.sample(range(10_000), len(items))
        ordered = [i for _, i in sorted(zip(scores, items, strict=True), reverse=True)]
        if ordered:
            lists[u] = ordered
        score_rows += [(u, i, float(s)) for i, s in zip(items, scores, strict=True)]
        if u < 50:  # truth: some of the list (hits) plus random items
            from_list = rng.sample(items, min(len(items), rng.randint(0, 4)))
            relevant[u] = set(from_list) | set(rng.sample(range(200), rng.randint(1, 12)))
    return lists, relevant, score_rows


def _random_frames(spark: SparkSession, random_lists: RandomLists) -> tuple[DataFrame, DataFrame]:
    """The scored lists and the truth of ``random_lists`` as Spark frames."""
    _, relevant, score_rows = random_lists
    recs = spark.createDataFrame(score_rows, SCORE_RECS)
    truth = spark.createDataFrame([(u, i) for u, rel in relevant.items() for i in sorted(rel)], PAIRS)
    return recs, truth


def test_ranking_metrics_match_reference_on_random_data(
    spark: SparkSession, random_lists: RandomLists
) -> None:
    lists, relevant, _ = random_lists
    recs, truth = _random_frames(spark, random_lists)
    for k in (1, 10):
        expected = _reference_ranking(lists, relevant, k)
        assert 0.1 < expected[f"hit_rate_at_{k}"] < 0.9  # the data has hits and misses
        _approx(ranking_metrics(recs, truth, k=k), expected)


def test_several_cut_offs_in_one_pass_match_the_reference_at_each(
    spark: SparkSession, random_lists: RandomLists
) -> None:
    lists, relevant, _ = random_lists
    recs, truth = _random_frames(spark, random_lists)
    ks = [12, 1, 5, 3]  # any order; one over some lists' length
    expected: dict[str, float] = {}
    for k in sorted(ks):
        expected |= _reference_ranking(lists, relevant, k)
    got = ranking_metrics(recs, truth, ks)
    _approx(got, expected)
    with pytest.raises(ValueError, match="no cut-off"):
        ranking_metrics(recs, truth, [])
    with pytest.raises(ValueError, match="positive int"):
        ranking_metrics(recs, truth, [5, 0])


# --- beyond accuracy: hand-made examples ---------------------------------------------------------


def test_coverage_and_novelty_hand_example(spark: SparkSession) -> None:
    # Train users 1-4. Item 10: all 4 users (share 1 -> 0 bits); item 20: 2 users (0.5 -> 1 bit);
    # item 30: user 1 only, twice (distinct users: 1 -> 0.25 -> 2 bits).
    train = spark.createDataFrame(
        [(1, 10), (2, 10), (3, 10), (4, 10), (1, 20), (2, 20), (1, 30), (1, 30)], PAIRS
    )
    # Item 99 is not in train: left out of novelty.
    recs = spark.createDataFrame([(1, 10), (1, 20), (2, 30), (3, 30), (3, 99)], PAIRS)
    # (0 + 1 + 2 + 2) / 4
    assert novelty(recs, train) == pytest.approx(1.25, abs=TOL)
    # distinct recommended {10, 20, 30, 99} = 4 of 8
    assert catalog_coverage(recs, n_items=8) == pytest.approx(0.5, abs=TOL)


def test_intra_list_diversity_hand_example(spark: SparkSession) -> None:
    genres = spark.createDataFrame([(1, ["a", "b"]), (2, ["b", "c"]), (3, ["d"]), (4, None)], GENRES)
    clusters = spark.createDataFrame([(1, 0), (2, 0), (3, 1), (4, 1)], CLUSTERS)
    # user 1: {1, 2, 3}; user 2: {1, 2, 5} (5 has no features -> pair (1, 2) only);
    # user 3: {3} (one item: does not count); user 4: {3, 4}.
    recs = spark.createDataFrame(
        [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 5), (3, 3), (4, 3), (4, 4)], PAIRS
    )
    # Jaccard: d(1,2) = 1 - |{b}| / |{a,b,c}| = 2/3, d(1,3) = d(2,3) = 1, d(3,4) = 1 - 0/1 = 1 (null = {})
    # user 1: (2/3 + 1 + 1) / 3 = 8/9; user 2: 2/3; user 4: 1 -> (8/9 + 6/9 + 9/9) / 3 = 23/27
    assert intra_list_diversity(recs, genres) == pytest.approx(23 / 27, abs=TOL)
    # Clusters: user 1: pairs (1,2) same, (1,3) and (2,3) differ -> 2/3; user 2: 0; user 4: same -> 0
    # (2/3 + 0 + 0) / 3 = 2/9
    assert intra_list_diversity(recs, clusters, col_features="cluster") == pytest.approx(2 / 9, abs=TOL)
    # One-item lists only: no pair anywhere.
    assert math.isnan(intra_list_diversity(recs.filter(f"{USER} = 3"), genres))


def _ild_reference(lists: dict[int, list[int]], feats: dict[int, object], is_set: bool) -> float:
    """Intra-list diversity by its definition, in plain Python."""
    per_user = []
    for items in lists.values():
        d = []
        for a, b in combinations(sorted({i for i in items if i in feats}), 2):
            if is_set:
                A, B = set(feats[a] or ()), set(feats[b] or ())  # type: ignore[call-overload]
                d.append(1.0 - (len(A & B) / len(A | B) if A | B else 0.0))
            elif feats[a] is not None and feats[b] is not None:
                d.append(float(feats[a] != feats[b]))
        if d:
            per_user.append(sum(d) / len(d))
    return float(np.mean(per_user)) if per_user else math.nan


def test_intra_list_diversity_matches_the_definition_on_random_data(spark: SparkSession) -> None:
    rng = random.Random(11)
    # 150 distinct genres (three 64-bit words per set), null and empty sets, items 280-299 without a
    # features row, lists of 0-14 rows with repeated items, 4 partitions
    vocab = [f"g{j}" for j in range(150)]
    genres: dict[int, object] = {
        i: None if i % 17 == 0 else rng.sample(vocab, rng.choice([0, 1, 2, 3, 5])) for i in range(280)
    }
    clusters: dict[int, object] = {i: None if i % 13 == 0 else rng.randrange(6) for i in range(280)}
    lists = {u: [rng.randrange(300) for _ in range(rng.randrange(15))] for u in range(150)}
    recs = spark.createDataFrame([(u, i) for u, items in lists.items() for i in items], PAIRS).repartition(4)
    g = spark.createDataFrame(list(genres.items()), GENRES)
    c = spark.createDataFrame(list(clusters.items()), CLUSTERS)
    assert intra_list_diversity(recs, g) == pytest.approx(_ild_reference(lists, genres, True), abs=TOL)
    assert intra_list_diversity(recs, c, col_features="cluster") == pytest.approx(
        _ild_reference(lists, clusters, False), abs=TOL
    )
    with pytest.raises(ValueError, match="item_features has 1 duplicated items in 'item_idx'"):
        intra_list_diversity(recs, g.unionByName(g.limit(1)))


def test_popularity_bias_hand_example(spark: SparkSession) -> None:
    # Train counts: item 1: 6, item 2: 2, item 3: 1, item 4: 1 (total 10, head share 0.8 -> 8).
    # Sorted by count: item 1 (before 0 < 8: head), item 2 (before 6 < 8: head), item 3 (before 8: tail), 4.
    train = spark.createDataFrame([(u, 1) for u in range(6)] + [(0, 2), (1, 2), (0, 3), (0, 4)], PAIRS)
    # Exposure: item 1: 2, item 2: 1, item 3: 1, item 4: 0.
    recs = spark.createDataFrame([(10, 1), (11, 1), (10, 2), (11, 3)], PAIRS)
    # Catalog = train ∪ recs = 4 items, sorted exposure 0, 1, 1, 2:
    # G = ((2*1-5)*0 + (2*2-5)*1 + (2*3-5)*1 + (2*4-5)*2) / (4 * 4) = (-1 + 1 + 6) / 16 = 0.375
    # long tail: 1 of 4 rows (item 3) = 0.25
    _approx(popularity_bias(recs, train), {"exposure_gini": 0.375, "long_tail_share": 0.25})
    # Catalog of 8: sorted 0,0,0,0,0,1,1,2: G = ((12-9)*1 + (14-9)*1 + (16-9)*2) / (8 * 4) = 22/32
    _approx(popularity_bias(recs, train, n_items=8), {"exposure_gini": 0.6875, "long_tail_share": 0.25})
    with pytest.raises(ValueError, match="smaller than"):
        popularity_bias(recs, train, n_items=2)


def test_rmse_mae_hand_example(spark: SparkSession) -> None:
    truth = spark.createDataFrame(
        [(1, 10, 4.0), (1, 20, 3.0), (2, 10, 5.0), (2, 30, 2.0), (3, 10, 1.0)], TRUTH
    )
    pred_schema = _schema((USER, T.IntegerType()), (ITEM, T.IntegerType()), ("prediction", T.FloatType()))
    # (2, 30) predicts NaN and user 3 has no prediction: left out; (9, 9) is not in truth.
    preds = spark.createDataFrame(
        [(1, 10, 3.5), (1, 20, 3.0), (2, 10, 4.0), (2, 30, float("nan")), (9, 9, 1.0)], pred_schema
    )
    # errors 0.5, 0, 1: MAE = 1.5 / 3 = 0.5, RMSE = sqrt((0.25 + 0 + 1) / 3) = 0.6454972243679028
    _approx(rmse_mae(preds, truth), {"rmse": 0.6454972243679028, "mae": 0.5})


# --- beyond accuracy: parity with NumPy references on random data ------------------------------------


def _gini_mad(x: np.ndarray) -> float:
    """Gini by the mean absolute difference (a different formula from the implementation's)."""
    return float(np.abs(x[:, None] - x[None, :]).sum() / (2 * len(x) ** 2 * x.mean()))


def test_beyond_accuracy_match_reference_on_random_data(
    spark: SparkSession, random_lists: RandomLists
) -> None:
    lists, _, _ = random_lists
    k, n_items = 10, 200
    rng = np.random.default_rng(3)
    # Train with Zipf-like popularity over items 0-179 (180-199 never seen in train).
    weights = 1.0 / np.arange(1, 181)
    train_pairs = [
        (u, int(i))
        for u in range(80)
        for i in rng.choice(180, size=rng.integers(1, 30), p=weights / weights.sum())
    ]
    top = {u: items[:k] for u, items in lists.items()}
    rec_rows = [(u, i) for u, items in top.items() for i in items]
    item_genres = {
        i: sorted(set(rng.choice(list("abcdef"), size=rng.integers(0, 4)))) for i in range(n_items)
    }

    recs = spark.createDataFrame(rec_rows, PAIRS)
    train = spark.createDataFrame(train_pairs, PAIRS)
    features = spark.createDataFrame(list(item_genres.items()), GENRES)

    # coverage
    assert catalog_coverage(recs, n_items) == pytest.approx(len({i for _, i in rec_rows}) / n_items, abs=TOL)

    # novelty: -log2(distinct train users of i / distinct train users), mean over rows with a known item
    users_of: dict[int, set[int]] = defaultdict(set)
    for u, i in train_pairs:
        users_of[i].add(u)
    n_users = len({u for u, _ in train_pairs})
    info = [-np.log2(len(users_of[i]) / n_users) for _, i in rec_rows if i in users_of]
    assert novelty(recs, train) == pytest.approx(float(np.mean(info)), abs=TOL)
    stats = TrainStats.of(train)  # the same from the aggregates computed once
    assert stats.n_users == n_users and stats.n_items == len(users_of)
    assert novelty(recs, stats) == pytest.approx(float(np.mean(info)), abs=TOL)

    # intra-list diversity (Jaccard on genre sets)
    per_user = []
    for items in top.values():
        d = [
            1.0 - (len(A & B) / len(A | B) if A | B else 0.0)
            for A, B in ((set(item_genres[a]), set(item_genres[b])) for a, b in combinations(items, 2))
        ]
        if d:
            per_user.append(np.mean(d))
    assert intra_list_diversity(recs, features) == pytest.approx(float(np.mean(per_user)), abs=TOL)

    # Gini over the whole 200-item catalog, and long-tail share with the 80% head
    exposure = Counter(i for _, i in rec_rows)
    x = np.array([exposure.get(i, 0) for i in range(n_items)], dtype=float)
    counts = Counter(i for _, i in train_pairs)
    total, before, head = sum(counts.values()), 0, set()
    for i, c in sorted(counts.items(), key=lambda ic: (-ic[1], ic[0])):
        if before < 0.8 * total:
            head.add(i)
        before += c
    tail_share = sum(1 for _, i in rec_rows if i not in head) / len(rec_rows)
    for source in (train, stats):
        _approx(
            popularity_bias(recs, source, n_items=n_items),
            {"exposure_gini": _gini_mad(x), "long_tail_share": tail_share},
        )
    stats.release()


def test_evaluate_all_combines_the_metrics(spark: SparkSession, random_lists: RandomLists) -> None:
    recs, truth = _random_frames(spark, random_lists)
    train = spark.createDataFrame([(u, i) for u in range(60) for i in range(0, 200, 1 + u % 5)], PAIRS)
    features = spark.createDataFrame([(i, [str(i % 3)]) for i in range(200)], GENRES)
    cached = spark.sparkContext._jsc.getPersistentRDDs().size()
    out = evaluate_all(recs, truth, 10, train=train, n_items=200, item_features=features, ranking_ks=[5, 20])
    assert spark.sparkContext._jsc.getPersistentRDDs().size() == cached  # its top-K cut is released
    top = top_k(recs, 10)
    expected = (
        ranking_metrics(recs, truth, 5)
        | ranking_metrics(recs, truth, 20)
        | ranking_metrics(recs, truth, 10)
        | {
            "catalog_coverage_at_10": catalog_coverage(top, 200),
            "novelty_at_10": novelty(top, train),
            "exposure_gini_at_10": popularity_bias(top, train, n_items=200)["exposure_gini"],
            "long_tail_share_at_10": popularity_bias(top, train)["long_tail_share"],
            "ild_at_10": intra_list_diversity(top, features),
        }
    )
    _approx(out, expected)
    stats = TrainStats.of(train)
    for n_items in (200, None):  # None: the catalogue is train's items (and the recommended ones)
        by_stats = evaluate_all(recs, truth, 10, train=stats, n_items=n_items, item_features=features)
        _approx(by_stats, evaluate_all(recs, truth, 10, train=train, n_items=n_items, item_features=features))
    stats.release()


def test_local_ranking_metrics_equal_the_spark_ones(spark: SparkSession, random_lists: RandomLists) -> None:
    """The numpy twin ALS tuning scores its trials with: the same values as ``ranking_metrics`` (and
    the reference) at several cut-offs, with short lists, users without lists and recs-only users."""
    lists, relevant, _ = random_lists
    recs, truth = _random_frames(spark, random_lists)
    rows = [(u, i, r) for u, items in lists.items() for r, i in enumerate(items, start=1)]
    rec_u, rec_i, rec_r = (np.array(c, dtype=np.int64) for c in zip(*rows, strict=True))
    pairs = [(u, i) for u, rel in relevant.items() for i in sorted(rel)]
    pairs += pairs[:5]  # duplicated truth rows count once
    truth_u, truth_i = (np.array(c, dtype=np.int64) for c in zip(*pairs, strict=True))
    ks = [1, 5, 10, 12]
    got = ranking_metrics_arrays(rec_u, rec_i, rec_r, truth_u, truth_i, ks)
    _approx(got, ranking_metrics(recs, truth, ks))
    expected: dict[str, float] = {}
    for k in ks:
        expected |= _reference_ranking(lists, relevant, k)
    _approx(got, expected)
    with pytest.raises(ValueError, match="no user with a relevant item"):
        ranking_metrics_arrays(rec_u, rec_i, rec_r, truth_u[:0], truth_i[:0], [10])


@pytest.mark.parametrize("key", ["score", "rank"])
def test_evaluate_all_on_arrays_equals_evaluate_all(
    spark: SparkSession, random_lists: RandomLists, key: str
) -> None:
    """The evaluate stage's driver path (lists collected, every metric in numpy) gives evaluate_all's
    values: duplicated (user, item) rows, lists ranked by score or by rank, items never in train,
    items without genres."""
    _, _, score_rows = random_lists
    rows = score_rows + score_rows[:7]  # duplicates keep their best position
    if key == "rank":  # ranks by score, with gaps (rank * 2): ranks order the list, not their values
        by_user: dict[int, list[tuple[float, int]]] = defaultdict(list)
        for u, i, s in score_rows:
            by_user[u].append((-s, i))
        rows = [(u, i, float(2 * r)) for u, xs in by_user.items() for r, (_, i) in enumerate(sorted(xs), 1)]
    recs = spark.createDataFrame(rows, f"{USER} int, {ITEM} int, {key} double")
    _, truth = _random_frames(spark, random_lists)
    rng = np.random.default_rng(11)
    weights = 1.0 / np.arange(1, 181)
    train_pairs = [(u, int(i)) for u in range(80) for i in rng.choice(180, 20, p=weights / weights.sum())]
    train = spark.createDataFrame(train_pairs, PAIRS)
    genres = [(i, sorted(set(rng.choice(list("abcdef"), size=rng.integers(0, 4))))) for i in range(200)]
    features = spark.createDataFrame(genres, GENRES)
    stats = TrainStats.of(train)
    try:
        expected = evaluate_all(
            recs, truth, 10, train=stats, n_items=200, item_features=features, ranking_ks=[5, 20]
        )
        local = recs.toPandas()
        t = truth.toPandas()
        got = evaluate_all_arrays(
            local[USER].to_numpy(np.int64),
            local[ITEM].to_numpy(np.int64),
            local[key].to_numpy(np.float64),
            key_is_rank=key == "rank",
            truth_user=t[USER].to_numpy(np.int64),
            truth_item=t[ITEM].to_numpy(np.int64),
            k=10,
            ranking_ks=[5, 20],
            stats=LocalTrainStats.of(stats),
            n_items=200,
            features=feature_table(features, ITEM, COL_GENRES),
        )
    finally:
        stats.release()
    assert len(expected) == 18 + 5
    _approx(got, expected)
