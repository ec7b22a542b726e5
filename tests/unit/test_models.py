"""Models: batch top-K against brute force, baselines and biases on hand-made data, ALS on planted
clusters against popularity, and the three tuning methods with nested MLflow runs."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T
from pyspark.testing import assertDataFrameEqual

from watchnext.config import AlsConfig, AlsSearchSpace, FloatRange, IntRange, load_config
from watchnext.constants import (
    COL_ITEM_IDX,
    COL_PREDICTION,
    COL_RANK,
    COL_RATING,
    COL_SCORE,
    COL_TIMESTAMP,
    COL_USER_IDX,
)
from watchnext.evaluation.metrics import ranking_metrics, rmse_mae
from watchnext.evaluation.splits import stratified_split
from watchnext.models import (
    AlsParams,
    als_num_blocks,
    fit_als,
    fit_biased_als,
    fit_biases,
    popularity_scores,
    predict,
    predict_biases,
    top_k_items,
    top_positions,
    topk_from_factors,
    topk_from_item_scores,
    trending_scores,
    tune_als,
    tune_and_refit,
    validation_split,
)
from watchnext.models.baselines import COL_BIAS
from watchnext.models.tuning import LocalValidation

pytestmark = pytest.mark.spark

USER, ITEM = COL_USER_IDX, COL_ITEM_IDX


def _schema(*fields: tuple[str, T.DataType]) -> T.StructType:
    return T.StructType([T.StructField(name, dtype, False) for name, dtype in fields])


FACTORS_U = _schema((USER, T.IntegerType()), ("features", T.ArrayType(T.FloatType(), False)))
FACTORS_I = _schema((ITEM, T.IntegerType()), ("features", T.ArrayType(T.FloatType(), False)))
PAIRS = _schema((USER, T.IntegerType()), (ITEM, T.IntegerType()))
RATINGS = _schema((USER, T.IntegerType()), (ITEM, T.IntegerType()), (COL_RATING, T.DoubleType()))
EVENTS = _schema(
    (USER, T.IntegerType()),
    (ITEM, T.IntegerType()),
    (COL_RATING, T.DoubleType()),
    (COL_TIMESTAMP, T.TimestampType()),
)
RECS = _schema(
    (USER, T.IntegerType()), (ITEM, T.IntegerType()), (COL_SCORE, T.DoubleType()), (COL_RANK, T.IntegerType())
)
ITEM_SCORES = _schema((ITEM, T.IntegerType()), (COL_SCORE, T.DoubleType()))
USER_BIAS = _schema((USER, T.IntegerType()), (COL_BIAS, T.DoubleType()))
ITEM_BIAS = _schema((ITEM, T.IntegerType()), (COL_BIAS, T.DoubleType()))


# --- top-K ------------------------------------------------------------------------------------------


def test_top_positions_breaks_ties_by_smaller_position() -> None:
    s = np.array(
        [
            [1.0, 3.0, 3.0, 2.0, 3.0],  # three-way tie at the top: positions 1, 2 (4 loses at k=2)
            [0.0, 0.0, 0.0, 0.0, 0.0],  # all tied
            [5.0, -np.inf, 4.0, -np.inf, -np.inf],  # fewer than k finite
        ]
    )
    pos, vals = top_positions(s, 2)
    np.testing.assert_array_equal(pos, [[1, 2], [0, 1], [0, 2]])
    np.testing.assert_array_equal(vals, [[3.0, 3.0], [0.0, 0.0], [5.0, 4.0]])
    pos, _ = top_positions(s, 9)  # k > n: a full sort
    np.testing.assert_array_equal(pos[0], [1, 2, 4, 3, 0])


def _brute_force(
    users: np.ndarray, u: np.ndarray, items: np.ndarray, v: np.ndarray, seen: dict, k: int
) -> list:
    rows = []
    for uid, pu in zip(users, u, strict=True):
        scores = v @ pu  # integer-valued factors: exact in float32 and float64 alike
        ranked = sorted(
            (-s, int(i))
            for i, s in zip(items, scores, strict=True)
            if int(i) not in seen.get(int(uid), set())
        )
        rows += [(int(uid), i, float(-s), r) for r, (s, i) in enumerate(ranked[:k], start=1)]
    return rows


@pytest.mark.parametrize("block_size", [1, 4, 5, 23, 100, None])
def test_topk_from_factors_equals_brute_force(spark: SparkSession, block_size: int | None) -> None:
    rng = np.random.default_rng(7)
    n_users, n_items, d, k = 23, 17, 3, 5
    users = np.arange(100, 100 + n_users)
    items = rng.permutation(np.arange(n_items) * 3 + 1)  # sparse ids, in no particular order
    # Small integers: many exact ties, which must go to the smaller item id.
    u = rng.integers(-2, 3, size=(n_users, d)).astype(np.float32)
    v = rng.integers(-2, 3, size=(n_items, d)).astype(np.float32)
    seen = {
        int(uid): {int(i) for i in rng.choice(items, size=rng.integers(0, 6), replace=False)} for uid in users
    }
    seen[int(users[0])] = {int(i) for i in items[:-2]}  # two unseen items left: a list shorter than k
    seen[int(users[1])] = {999, 1000}  # items without factors are ignored
    seen_rows = [(uid, i) for uid, items_ in seen.items() for i in items_]
    uf = spark.createDataFrame([(int(a), b.tolist()) for a, b in zip(users, u, strict=True)], FACTORS_U)
    itf = spark.createDataFrame([(int(a), b.tolist()) for a, b in zip(items, v, strict=True)], FACTORS_I)
    got = topk_from_factors(uf, itf, k, spark.createDataFrame(seen_rows, PAIRS), block_size=block_size)
    expected = spark.createDataFrame(_brute_force(users, u, items, v, seen, k), RECS)
    assertDataFrameEqual(got, expected)
    assert got.filter(f"{USER} = {users[0]}").count() == 2


def test_topk_from_factors_without_seen_and_bad_input(spark: SparkSession) -> None:
    uf = spark.createDataFrame([(1, [1.0, 0.0]), (2, [0.0, 1.0])], FACTORS_U)
    itf = spark.createDataFrame([(10, [1.0, 2.0]), (20, [3.0, 1.0]), (30, [2.0, 2.0])], FACTORS_I)
    expected = [(1, 20, 3.0, 1), (1, 30, 2.0, 2), (2, 10, 2.0, 1), (2, 30, 2.0, 2)]
    assertDataFrameEqual(topk_from_factors(uf, itf, 2), spark.createDataFrame(expected, RECS))
    with pytest.raises(ValueError, match="k must be a positive int"):
        topk_from_factors(uf, itf, 0)
    with pytest.raises(ValueError, match="item_factors is missing column 'features'"):
        topk_from_factors(uf, itf.drop("features"), 2)


def test_topk_from_item_scores(spark: SparkSession) -> None:
    scores = spark.createDataFrame([(10, 5.0), (20, 7.0), (30, 5.0), (40, 1.0), (50, 5.0)], ITEM_SCORES)
    users = spark.createDataFrame([(1, 10), (1, 99), (2, 20), (3, 40)], PAIRS)  # users 1, 2, 3
    seen = spark.createDataFrame([(1, 20), (1, 10), (2, 30)], PAIRS)
    # Order 20 (7), then the 5.0 tie by item: 10, 30, 50, then 40 (1).
    expected = [
        (1, 30, 5.0, 1), (1, 50, 5.0, 2), (1, 40, 1.0, 3),
        (2, 20, 7.0, 1), (2, 10, 5.0, 2), (2, 50, 5.0, 3),
        (3, 20, 7.0, 1), (3, 10, 5.0, 2), (3, 30, 5.0, 3),
    ]  # fmt: skip
    assertDataFrameEqual(topk_from_item_scores(scores, users, 3, seen), spark.createDataFrame(expected, RECS))
    # without seen items every user gets the global top 3; user 3 has seen all but two items
    top3 = [(20, 7.0, 1), (10, 5.0, 2), (30, 5.0, 3)]
    expected = [(u, *r) for u in (1, 2, 3) for r in top3]
    assertDataFrameEqual(topk_from_item_scores(scores, users, 3), spark.createDataFrame(expected, RECS))
    most = spark.createDataFrame([(3, i) for i in (10, 20, 30)], PAIRS)
    short = [(3, 50, 5.0, 1), (3, 40, 1.0, 2)]
    assertDataFrameEqual(
        topk_from_item_scores(scores, users.where("user_idx = 3"), 3, most),
        spark.createDataFrame(short, RECS),
    )


# --- baselines --------------------------------------------------------------------------------------


def _ts(day: int) -> dt.datetime:
    return dt.datetime(2024, 1, day, 12, 0, tzinfo=dt.UTC)


# user 1: items 10 (day 1), 20 (day 9), 20 again (day 10); user 2: 10 (day 2), 30 (day 10);
# user 3: 10 (day 3), 20 (day 8), 40 (day 1).
EVENT_ROWS = [
    (1, 10, 4.0, _ts(1)), (1, 20, 3.0, _ts(9)), (1, 20, 5.0, _ts(10)),
    (2, 10, 5.0, _ts(2)), (2, 30, 2.0, _ts(10)),
    (3, 10, 3.0, _ts(3)), (3, 20, 4.0, _ts(8)), (3, 40, 1.0, _ts(1)),
]  # fmt: skip


def test_popularity_counts_distinct_users(spark: SparkSession) -> None:
    events = spark.createDataFrame(EVENT_ROWS, EVENTS)
    expected = [(10, 3.0), (20, 2.0), (30, 1.0), (40, 1.0)]
    assertDataFrameEqual(popularity_scores(events), spark.createDataFrame(expected, ITEM_SCORES))


def test_trending_window_and_backfill(spark: SparkSession) -> None:
    events = spark.createDataFrame(EVENT_ROWS, EVENTS)
    # Latest event: day 10 12:00; a 3-day window holds day 7 12:00 .. day 10 12:00: 20 (users 1, 3), 30 (2).
    window_only = [(20, 2.0), (30, 1.0)]
    assertDataFrameEqual(
        trending_scores(events, 3, backfill=False), spark.createDataFrame(window_only, ITEM_SCORES)
    )
    # Backfill: score = window users + users / (max users + 1), max users = 3 (item 10).
    backfilled = [(10, 0 + 3 / 4), (20, 2 + 2 / 4), (30, 1 + 1 / 4), (40, 0 + 1 / 4)]
    assertDataFrameEqual(trending_scores(events, 3), spark.createDataFrame(backfilled, ITEM_SCORES))
    # An explicit as_of (a date: its midnight UTC) with a 2.5-day window: day 1 00:00 .. day 3 12:00
    # -> events of day 1 and 2 (day 3 12:00 is on the edge, included): 10 (users 1, 2, 3), 40 (3).
    early = [(10, 3.0), (40, 1.0)]
    assertDataFrameEqual(
        trending_scores(events, 2.5, dt.date(2024, 1, 4), backfill=False).filter("score > 0"),
        spark.createDataFrame(early, ITEM_SCORES),
    )
    with pytest.raises(ValueError, match="window_days must be > 0"):
        trending_scores(events, 0)


def test_bias_model_hand_example(spark: SparkSession) -> None:
    # mu = (5 + 3 + 4) / 3 = 4, reg 1, one sweep:
    # b_10 = ((5-4) + (4-4)) / (1 + 2) = 1/3, b_20 = (3-4) / (1 + 1) = -1/2;
    # b_u1 = ((5-4-1/3) + (3-4+1/2)) / (1 + 2) = 1/18, b_u2 = (4-4-1/3) / (1 + 1) = -1/6.
    train = spark.createDataFrame([(1, 10, 5.0), (1, 20, 3.0), (2, 10, 4.0)], RATINGS)
    model = fit_biases(train, reg_user=1.0, reg_item=1.0, iters=1)
    assert model.mu == pytest.approx(4.0)
    assertDataFrameEqual(model.item_bias, spark.createDataFrame([(10, 1 / 3), (20, -0.5)], ITEM_BIAS))
    assertDataFrameEqual(model.user_bias, spark.createDataFrame([(1, 1 / 18), (2, -1 / 6)], USER_BIAS))
    # Unknown user 3 and item 30 contribute 0.
    pairs = spark.createDataFrame([(2, 20), (3, 10), (3, 30)], PAIRS)
    expected = [(2, 20, 4 - 1 / 6 - 0.5), (3, 10, 4 + 1 / 3), (3, 30, 4.0)]
    pred_schema = _schema((USER, T.IntegerType()), (ITEM, T.IntegerType()), (COL_PREDICTION, T.DoubleType()))
    assertDataFrameEqual(
        predict_biases(model, pairs), spark.createDataFrame(expected, pred_schema), rtol=1e-9
    )
    clipped = predict_biases(model, pairs, clip=(0.5, 4.2)).filter(f"{USER} = 3 AND {ITEM} = 10")
    assert clipped.first()[COL_PREDICTION] == pytest.approx(4.2)


def test_bias_model_recovers_planted_biases(spark: SparkSession) -> None:
    rng = np.random.default_rng(3)
    n_users, n_items = 40, 25
    b_u = rng.normal(0, 0.8, n_users)
    b_i = rng.normal(0, 0.5, n_items)
    mask = rng.random((n_users, n_items)) < 0.6
    truth = 3.5 + b_u[:, None] + b_i[None, :]
    rows = [(int(u), int(i), float(truth[u, i])) for u, i in zip(*np.nonzero(mask), strict=True)]
    model = fit_biases(spark.createDataFrame(rows, RATINGS), reg_user=1e-6, reg_item=1e-6, iters=6)
    # Biases are identified up to a constant moved between mu, b_u and b_i, so compare predictions on
    # the pairs the model never saw, which are unique: they must equal the planted mu + b_u + b_i.
    unseen = [(int(u), int(i)) for u, i in zip(*np.nonzero(~mask), strict=True)]
    pred = predict_biases(model, spark.createDataFrame(unseen, PAIRS)).toPandas()
    err = pred[COL_PREDICTION].to_numpy() - truth[pred[USER].to_numpy(), pred[ITEM].to_numpy()]
    assert np.abs(err).max() < 1e-4  # 6 sweeps converge to ~1e-5 here (a NumPy replay of the updates)
    # Centered biases equal the planted centered ones.
    ub = model.user_bias.toPandas().sort_values(USER)[COL_BIAS].to_numpy()
    np.testing.assert_allclose(ub - ub.mean(), b_u - b_u.mean(), atol=1e-4)


# --- ALS --------------------------------------------------------------------------------------------


def _clusters(seed: int = 0, n_users: int = 120, n_items: int = 80, n_clusters: int = 4) -> pd.DataFrame:
    """Users rate 12 items of their own cluster (Zipf-ish within it) and 2 random others (noise)."""
    rng = np.random.default_rng(seed)
    size = n_items // n_clusters
    weights = 1.0 / np.arange(1, size + 1) ** 0.7
    rows = []
    for u in range(n_users):
        c = u % n_clusters
        own = c * size + np.arange(size)
        others = np.setdiff1d(np.arange(n_items), own)
        for i in rng.choice(own, size=12, replace=False, p=weights / weights.sum()):
            rows.append((u, int(i), float(rng.integers(3, 6))))
        for i in rng.choice(others, size=2, replace=False):
            rows.append((u, int(i), float(rng.integers(1, 3))))
    return pd.DataFrame(rows, columns=[USER, ITEM, COL_RATING])


@pytest.fixture(scope="module")
def clustered(spark: SparkSession) -> tuple[DataFrame, DataFrame]:
    df = spark.createDataFrame(_clusters(), RATINGS)
    train, test = stratified_split(df, 0.75, 42)
    return train.cache(), test.cache()


FAST = AlsParams(rank=8, reg_param=0.1, alpha=10.0, max_iter=5, implicit_prefs=True, seed=1)
# Implicit ALS must beat popularity by this much NDCG@10 on the planted clusters (measured: popularity
# 0.116, ALS 0.554 with FAST).
ALS_MARGIN = 0.3


def test_implicit_als_beats_popularity_on_planted_clusters(
    spark: SparkSession, clustered: tuple[DataFrame, DataFrame]
) -> None:
    train, test = clustered
    users = test.select(USER).distinct()
    pop = ranking_metrics(topk_from_item_scores(popularity_scores(train), users, 10, train), test, 10)
    model = fit_als(train, FAST, num_blocks=2)
    recs = top_k_items(model, users, 10, train)
    als = ranking_metrics(recs, test, 10)
    assert als["ndcg_at_10"] >= pop["ndcg_at_10"] + ALS_MARGIN, (als, pop)
    # Nothing seen in train is recommended, and every list is full.
    assert recs.join(train, [USER, ITEM], "left_semi").count() == 0
    assert recs.groupBy(USER).count().filter("count != 10").count() == 0


def test_biased_als_beats_bias_only_rmse(spark: SparkSession) -> None:
    # Every user rates half of all items; rating = 3 + b_u + b_i + 0.8 in the own cluster, -0.8 outside.
    rng = np.random.default_rng(5)
    n_users, n_items = 60, 40
    b_u, b_i = rng.normal(0, 0.5, n_users), rng.normal(0, 0.3, n_items)
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items, size=n_items // 2, replace=False):
            aff = 0.8 if u % 4 == i % 4 else -0.8
            rows.append((u, int(i), float(3 + b_u[u] + b_i[i] + aff + rng.normal(0, 0.1))))
    train, test = stratified_split(spark.createDataFrame(rows, RATINGS), 0.75, 42)
    explicit = AlsParams(rank=4, reg_param=0.05, max_iter=8, implicit_prefs=False, seed=1)
    biases = fit_biases(train, 2.0, 2.0, 3)
    biased = fit_biased_als(train, explicit, (2.0, 2.0), 3, num_blocks=2)
    pairs = test.select(USER, ITEM)
    base = rmse_mae(predict_biases(biases, pairs), test)
    full = rmse_mae(predict(biased, pairs), test)
    assert full["rmse"] < base["rmse"] - 0.3, (full, base)  # measured: bias-only 0.74, biased 0.31
    # top_k_items() scores are the model's full predictions.
    recs = top_k_items(biased, spark.createDataFrame([(0,), (1,)], [USER]), n_items).toPandas()
    cross = predict(biased, spark.createDataFrame(recs[[USER, ITEM]].astype("int32"))).toPandas()
    merged = recs.merge(cross, on=[USER, ITEM])
    assert len(merged) == 2 * n_items
    np.testing.assert_allclose(merged[COL_SCORE], merged[COL_PREDICTION], atol=1e-4)
    with pytest.raises(ValueError, match="explicit ratings"):
        fit_biased_als(train, FAST)


def test_explicit_als_predict_drops_cold_pairs(
    spark: SparkSession, clustered: tuple[DataFrame, DataFrame]
) -> None:
    train, _ = clustered
    model = fit_als(train, AlsParams(rank=4, max_iter=3, implicit_prefs=False), num_blocks=1)
    pairs = spark.createDataFrame([(0, 0), (0, 9999), (9999, 0)], PAIRS)
    assert [(r[USER], r[ITEM]) for r in predict(model, pairs).collect()] == [(0, 0)]
    assert predict(model, pairs, cold_start="nan").count() == 3


def test_fit_als_requires_a_checkpoint_dir(
    spark: SparkSession, clustered: tuple[DataFrame, DataFrame], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spark.sparkContext, "getCheckpointDir", lambda: None)
    with pytest.raises(RuntimeError, match="checkpoint directory"):
        fit_als(clustered[0], FAST)


def test_num_blocks() -> None:
    assert als_num_blocks(10, 8) == 1
    assert als_num_blocks(120_000, 8, min_per_block=50_000) == 3
    assert als_num_blocks(10**9, 8) == 8


# --- tuning -----------------------------------------------------------------------------------------

TINY_SPACE = AlsSearchSpace(
    rank=IntRange(low=4, high=8, log=True),
    reg_param=FloatRange(low=0.01, high=1.0, log=True),
    alpha=FloatRange(low=1.0, high=20.0, log=True, values=[5.0, 20.0]),
    max_iter=IntRange(low=2, high=3, values=[3]),
)


@pytest.mark.mlflow
@pytest.mark.parametrize("method", ["grid", "random", "tpe"])
def test_tuning_methods_log_one_nested_run_per_trial(
    spark: SparkSession, clustered: tuple[DataFrame, DataFrame], tmp_path: Path, method: str
) -> None:
    import mlflow

    fit_part, validation = validation_split(clustered[0], 0.25, 43)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/m.db")
    try:
        mlflow.set_experiment("tuning-test")
        with mlflow.start_run() as parent:
            result = tune_als(
                fit_part, validation, TINY_SPACE, base=FAST, method=method, n_trials=3, seed=0, num_blocks=1,
                concurrent_trials=2,
            )  # fmt: skip
        children = mlflow.search_runs(
            filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'", output_format="pandas"
        )
    finally:
        mlflow.set_tracking_uri(previous)
    assert [t.number for t in result.trials] == [0, 1, 2]  # a batch of 2, then 1
    best = max(result.trials, key=lambda t: t.value)
    assert result.best_value == best.value and result.best_params == best.params
    assert result.best_params.implicit_prefs and result.best_params.seed == FAST.seed  # base kept
    for t in result.trials:
        assert 4 <= t.params.rank <= 8 and 0.01 <= t.params.reg_param <= 1.0 and t.params.max_iter == 3
        assert 0.0 <= t.value <= 1.0 and t.value == t.metrics["ndcg_at_10"]
    if method == "grid":  # distinct grid points
        assert len({(t.params.rank, t.params.reg_param, t.params.alpha) for t in result.trials}) == 3
        assert all(t.params.rank in (4, 6, 8) and t.params.alpha in (5.0, 20.0) for t in result.trials)
    assert sorted(children["run_id"]) == sorted(t.run_id for t in result.trials)
    assert sorted(children["metrics.ndcg_at_10"]) == sorted(t.value for t in result.trials)
    assert set(children["params.rank"]) == {str(t.params.rank) for t in result.trials}


def test_trials_side_by_side_are_the_trials_one_by_one(
    spark: SparkSession, clustered: tuple[DataFrame, DataFrame]
) -> None:
    # Random draws do not depend on finished trials, so proposing 2 at a time and fitting them side by
    # side must give exactly the one-by-one search: same parameters, same scores, same order.
    fit_part, validation = validation_split(clustered[0], 0.25, 43)
    args = {
        "base": FAST,
        "method": "random",
        "n_trials": 3,
        "seed": 0,
        "num_blocks": 1,
        "log_to_mlflow": False,
    }
    one = tune_als(fit_part, validation, TINY_SPACE, concurrent_trials=1, **args)
    two = tune_als(fit_part, validation, TINY_SPACE, concurrent_trials=2, **args)
    assert [(t.number, t.params, t.metrics) for t in two.trials] == [
        (t.number, t.params, t.metrics) for t in one.trials
    ]
    assert len({t.params for t in one.trials}) == 3 and two.best_params == one.best_params


@pytest.mark.parametrize("implicit", [True, False])
def test_trials_scored_on_the_driver_equal_spark_scoring(
    spark: SparkSession, clustered: tuple[DataFrame, DataFrame], implicit: bool
) -> None:
    """LocalValidation (numpy top K of the factors, numpy metrics) gives the trial the Spark path
    gives: top_k_items with the fitting items excluded, then ranking_metrics; the biased explicit
    model too (its augmented factors)."""
    fit_part, validation = validation_split(clustered[0], 0.25, 43)
    if implicit:
        model = fit_als(fit_part, FAST, num_blocks=1)
    else:
        model = fit_biased_als(fit_part, FAST.model_copy(update={"implicit_prefs": False}), num_blocks=1)
    users = validation.select(USER).distinct()
    expected = ranking_metrics(top_k_items(model, users, 10, fit_part), validation, 10)
    local = LocalValidation.collect(fit_part, validation, 10**9, USER, ITEM)
    assert local is not None and LocalValidation.collect(fit_part, validation, 100, USER, ITEM) is None
    got = local.metrics(model, 10)
    assert got.keys() == expected.keys() and expected["ndcg_at_10"] > 0.05  # lists with hits
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    # the search itself: the same trials whichever way they are scored
    args = {
        "base": FAST,
        "method": "random",
        "n_trials": 2,
        "seed": 0,
        "num_blocks": 1,
        "log_to_mlflow": False,
    }
    on_spark = tune_als(fit_part, validation, TINY_SPACE, local_max_cells=0, **args)
    on_driver = tune_als(fit_part, validation, TINY_SPACE, local_max_cells=10**9, **args)
    assert [t.params for t in on_driver.trials] == [t.params for t in on_spark.trials]
    for a, b in zip(on_driver.trials, on_spark.trials, strict=True):
        assert a.value == pytest.approx(b.value, abs=1e-12)


def test_tune_and_refit_from_config(spark: SparkSession, clustered: tuple[DataFrame, DataFrame]) -> None:
    cfg = AlsConfig(
        rank=4, max_iter=2, num_blocks=1, tuning={"method": "random", "n_trials": 1, "space": TINY_SPACE}
    )
    model, result = tune_and_refit(clustered[0], cfg, log_to_mlflow=False)
    assert len(result.trials) == 1 and result.trials[0].run_id is None
    assert model.rank == result.best_params.rank


def test_config_section_defaults() -> None:
    cfg = load_config(env="local")
    assert cfg.als == AlsConfig.model_validate(cfg.als.model_dump())
    params = AlsParams.from_config(cfg.als)
    assert params.implicit_prefs and params.rank == cfg.als.rank
    with pytest.raises(ValueError, match="ranking metric"):
        load_config(env="local", overrides=["als.tuning.metric=rmse"])
