"""The learned ranker on a pool with planted structure, its features, and the recipe guard.

Planted structure: the ``item`` source finds the held-out items of heavy users only, the ``cluster``
source those of light users only. No weighting of the two can serve both kinds of user; a ranker that
sees the user's activity can. It must beat the tuned linear blend and the best single source by a
clear margin on users it was not trained on.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from watchnext.config import LearnedRankerConfig
from watchnext.models import blend_tuning
from watchnext.models.ranker import (
    COL_LABEL,
    COL_PREDICTION,
    COL_VALIDATION,
    best_iteration,
    feature_names,
    fit_ranker,
    fit_ranker_local,
    importances,
    local_features,
    predict,
    predict_local,
    ranker_context,
    ranker_features,
)
from watchnext.recommend.tune import pick_recipe

pytestmark = [pytest.mark.spark]

SOURCES = ("item", "cluster")
POOL = (
    "user_idx int, item_idx int, f_item double, f_cluster double, sources array<string>, prior double, "
    "cluster_id int, relevant boolean"
)
MARGIN = 0.15  # NDCG@10 points the learned ranker must win by


def _planted(n_users: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """40 candidates per user with both sources' scores; 5 relevant: the item source's top 5 for a
    heavy user (200 interactions), the cluster source's top 5 for a light one (8 interactions)."""
    rng = np.random.default_rng(seed)
    rows, counts = [], []
    for u in range(n_users):
        heavy = u % 2 == 0
        items = rng.choice(500, 40, replace=False)
        f_item, f_cluster = rng.random(40), rng.random(40)
        informative = f_item if heavy else f_cluster
        relevant = np.zeros(40, bool)
        relevant[np.argsort(-informative)[:5]] = True
        for j in range(40):
            rows.append(
                (
                    u,
                    int(items[j]),
                    float(f_item[j]),
                    float(f_cluster[j]),
                    ["cluster", "item"],
                    float(rng.random() * 1e-3),
                    int(items[j] % 7),
                    bool(relevant[j]),
                )
            )
        counts.append((u, 200 if heavy else 8))
    return (
        pd.DataFrame(rows, columns=[f.split()[0] for f in POOL.split(", ")]),
        pd.DataFrame(counts, columns=["user_idx", "count"]),
    )


def _features(spark: SparkSession, pool: pd.DataFrame, counts: pd.DataFrame, weights: dict[str, float]):
    trending = spark.createDataFrame(pd.DataFrame({"item_idx": range(500), "score": np.linspace(0, 1, 500)}))
    return ranker_features(
        spark.createDataFrame(pool, POOL),
        SOURCES,
        weights,
        trending=trending,
        affinity=None,
        counts=spark.createDataFrame(counts, "user_idx int, count long"),
    )


def test_learned_ranker_beats_the_linear_blend_and_every_source_on_planted_data(spark: SparkSession) -> None:
    pool, counts = _planted(240, seed=3)
    train_users = pool.user_idx < 160
    n_rel = pool[pool.relevant].groupby("user_idx").size()
    train = blend_tuning.TuningData.from_pandas(pool[train_users], n_rel, SOURCES)
    search = blend_tuning.tune_weights(train, 10, None, n_trials=40, seed=0)

    feats = _features(spark, pool, counts, search.weights)
    rows = feats.where("user_idx < 160").selectExpr(
        "*", f"cast(relevant as double) as {COL_LABEL}", f"user_idx % 5 = 0 as {COL_VALIDATION}"
    )
    params = LearnedRankerConfig(n_estimators=200, min_child_weight=1.0)
    model = fit_ranker(rows, SOURCES, params, seed=0)
    pred = predict(model, feats.where("user_idx >= 160"), SOURCES).select(
        "user_idx", "item_idx", COL_PREDICTION
    )
    test = pool[~train_users].merge(pred.toPandas(), on=["user_idx", "item_idx"])
    held = blend_tuning.TuningData.from_pandas(test, n_rel, SOURCES, extra=[COL_PREDICTION])

    learned = blend_tuning.ndcg_of_scores(held, held.extra[COL_PREDICTION], 10, None)
    linear = blend_tuning.ndcg_at_k(held, search.weights, 10, None)
    single = {s: blend_tuning.ndcg_at_k(held, {s: 1.0}, 10, None) for s in SOURCES}
    assert learned >= linear + MARGIN, (learned, linear)
    assert learned >= max(single.values()) + MARGIN, (learned, single)
    assert pick_recipe({**single, "linear": linear, "learned": learned}, SOURCES) == "learned"
    # A rerun on the same rows, arriving in other partitions and order, trains the same trees.
    again = fit_ranker(
        rows.repartition(3, "item_idx"),
        SOURCES,
        LearnedRankerConfig(n_estimators=200, min_child_weight=1.0),
        seed=0,
    )
    pred_again = predict(again, feats.where("user_idx >= 160"), SOURCES)
    assertDataFrameEqual(pred_again.select("user_idx", "item_idx", COL_PREDICTION), pred)
    gains = importances(model, SOURCES)
    assert set(gains) == set(feature_names(SOURCES))
    assert gains["activity"] > 0.05  # the feature that tells the two kinds of user apart
    assert abs(sum(gains.values()) - 1.0) < 1e-9


def test_features_mark_absent_sources_missing_and_blend_linearly(spark: SparkSession) -> None:
    pool = pd.DataFrame(
        [
            (1, 10, 0.5, 0.0, ["item"], 0.5, 0, True),
            (1, 11, 0.0, 1.0, ["cluster", "item"], 1.0, 1, False),
            (2, 10, 0.0, 0.0, ["backfill"], 0.5, 0, False),
        ],
        columns=[f.split()[0] for f in POOL.split(", ")],
    )
    counts = pd.DataFrame({"user_idx": [1], "count": [np.e - 1]})
    got = _features(spark, pool, counts.astype({"count": int}), {"item": 1.0, "cluster": 0.5})
    cols = ["user_idx", "item_idx", *feature_names(SOURCES)]
    trend = 10 / 499  # item 10's trending score over the top item's
    expected = [
        (1, 10, 0.5, None, 0.5 + 1e-6 * 0.5, 1.0, 0.5, trend, 0.0, float(np.log1p(1))),
        (1, 11, 0.0, 1.0, 0.5 + 1e-6 * 1.0, 2.0, 1.0, 11 / 499, 0.0, float(np.log1p(1))),
        (2, 10, None, None, 1e-6 * 0.5, 0.0, 0.5, trend, 0.0, 0.0),
    ]
    schema = ", ".join(f"{c} {'int' if c in ('user_idx', 'item_idx') else 'double'}" for c in cols)
    assertDataFrameEqual(got.select(*cols), spark.createDataFrame(expected, schema), rtol=1e-9)


def test_the_ranker_trained_on_the_driver_is_the_spark_ranker(spark: SparkSession) -> None:
    """The driver path (rows already collected for the weight search) gives the same features, the
    same trees and the same scores as the Spark estimator; the rows arrive shuffled and span several
    of the Spark task's batches."""
    pool, counts = _planted(400, seed=5)
    weights = {"item": 0.6, "cluster": 0.4}
    trending = spark.createDataFrame(pd.DataFrame({"item_idx": range(500), "score": np.linspace(0, 1, 500)}))
    kw = {
        "trending": trending,
        "affinity": None,
        "counts": spark.createDataFrame(counts, "user_idx int, count long"),
    }
    df = spark.createDataFrame(pool, POOL)
    flags = ["cast(relevant as double) as label", f"user_idx % 5 = 0 as {COL_VALIDATION}"]
    on_spark = ranker_features(df, SOURCES, weights, **kw).selectExpr("*", *flags)
    rows = (
        ranker_context(df, SOURCES, **kw).selectExpr("*", *flags).toPandas().sample(frac=1.0, random_state=1)
    )
    rows = rows.reset_index(drop=True)
    x = local_features(rows, SOURCES, weights)
    cols = feature_names(SOURCES)
    expected = rows[["user_idx", "item_idx"]].merge(
        on_spark.select("user_idx", "item_idx", *cols).toPandas(), on=["user_idx", "item_idx"], how="left"
    )
    np.testing.assert_array_equal(x[cols].to_numpy(), expected[cols].to_numpy(np.float32))

    params = LearnedRankerConfig(n_estimators=60, early_stopping_rounds=10, min_child_weight=1.0)
    train = (rows.user_idx < 320).to_numpy()
    batch = int(spark.conf.get("spark.sql.execution.arrow.maxRecordsPerBatch", "10000"))
    assert train.sum() > batch  # the Spark task gets its rows in more than one batch
    spark_model = fit_ranker(on_spark.where("user_idx < 320"), SOURCES, params, seed=0)
    local_model = fit_ranker_local(
        rows[train], x[train], params, SOURCES, seed=0, batch_rows=batch, threads=2
    )
    assert local_model.get_booster().save_raw("json") == spark_model.get_booster().save_raw("json")
    assert best_iteration(local_model) == best_iteration(spark_model) < 59  # early-stopped, identically

    held = on_spark.where("user_idx >= 320")
    pred = predict(spark_model, held, SOURCES).select("user_idx", "item_idx", COL_PREDICTION).toPandas()
    got = rows.loc[~train, ["user_idx", "item_idx"]].assign(
        **{COL_PREDICTION: predict_local(local_model, x[~train], SOURCES)}
    )
    assertDataFrameEqual(spark.createDataFrame(got), spark.createDataFrame(pred))


@pytest.mark.parametrize(
    ("scores", "recipe"),
    [
        ({"item": 0.30, "cluster": 0.20, "linear": 0.32, "learned": 0.35}, "learned"),
        ({"item": 0.30, "cluster": 0.20, "linear": 0.32, "learned": 0.31}, "linear"),
        ({"item": 0.30, "cluster": 0.20, "linear": 0.29, "learned": 0.28}, "single:item"),
        ({"item": 0.30, "cluster": 0.20, "linear": 0.31}, "linear"),
        ({"item": 0.30, "cluster": 0.33, "linear": 0.31}, "single:cluster"),
    ],
)
def test_the_published_recipe_is_never_below_its_fallbacks(scores: dict[str, float], recipe: str) -> None:
    assert pick_recipe(scores, SOURCES) == recipe
