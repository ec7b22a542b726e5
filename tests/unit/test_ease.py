"""EASE against the closed form in numpy: the weights, the top-K lists with their anchors, the size
limit's fallback and the users it cannot score."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from watchnext.models.ease import fit_ease, top_k_ease

pytestmark = [pytest.mark.spark]

SCHEMA = "user_idx int, item_idx int, score double, rank int, anchor_idx int"


def _history(seed: int = 0, n_users: int = 60, n_items: int = 45) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pairs = pd.DataFrame(
        {
            "user_idx": rng.integers(0, n_users, 700),
            # a skewed catalogue: low ids are popular, some high ids are rare
            "item_idx": np.minimum(rng.zipf(1.3, 700), n_items) - 1,
        }
    )
    return pairs.drop_duplicates().reset_index(drop=True)


def _closed_form(pairs: pd.DataFrame, ids: np.ndarray, reg: float) -> np.ndarray:
    users = np.unique(pairs.user_idx)
    x = np.zeros((len(users), len(ids)))
    kept = pairs[pairs.item_idx.isin(ids)]
    x[np.searchsorted(users, kept.user_idx), np.searchsorted(ids, kept.item_idx)] = 1.0
    p = np.linalg.inv(x.T @ x + reg * np.eye(len(ids)))
    b = p / -np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b


def _reference_top_k(pairs: pd.DataFrame, ids: np.ndarray, b: np.ndarray, k: int) -> list[tuple]:
    rows = []
    for u, seen in pairs.groupby("user_idx").item_idx:
        mine = np.searchsorted(ids, np.intersect1d(seen.to_numpy(), ids))
        if not len(mine):
            continue
        scores = b[mine].sum(axis=0).astype(np.float32)
        scores[np.isin(ids, seen.to_numpy())] = -np.inf
        order = np.lexsort((ids, -scores))[:k]
        for r, j in enumerate(order, start=1):
            if scores[j] == -np.inf:
                break
            anchor = ids[mine[np.argmax(b[mine, j])]]
            rows.append((int(u), int(ids[j]), float(scores[j]), r, int(anchor)))
    return rows


def test_weights_are_the_closed_form(spark: SparkSession) -> None:
    pairs = _history()
    model = fit_ease(spark.createDataFrame(pairs), 7.0, min_item_interactions=1)
    ids = np.unique(pairs.item_idx)
    np.testing.assert_array_equal(model.ids, ids)
    np.testing.assert_allclose(model.weights, _closed_form(pairs, ids, 7.0), atol=1e-6)
    assert model.left_out == 0


def test_top_k_matches_the_reference_with_anchors(spark: SparkSession) -> None:
    pairs = _history(seed=1)
    df = spark.createDataFrame(pairs)
    model = fit_ease(df, 5.0, min_item_interactions=1)
    users = spark.createDataFrame(pd.DataFrame({"user_idx": np.arange(0, 60, 2)}))
    got = top_k_ease(model, df, users, 6)
    want = _reference_top_k(pairs[pairs.user_idx % 2 == 0], model.ids, model.weights.astype(np.float64), 6)
    assertDataFrameEqual(got, spark.createDataFrame(want, SCHEMA), rtol=1e-5)


def test_size_limit_keeps_the_most_interacted_items_and_says_how_many_left(spark: SparkSession) -> None:
    pairs = _history(seed=2)
    counts = pairs.groupby("item_idx").size()
    df = spark.createDataFrame(pairs)
    model = fit_ease(df, 3.0, max_items=10, min_item_interactions=2)
    eligible = counts[counts >= 2]
    expected = np.sort(sorted(eligible.index, key=lambda i: (-eligible[i], i))[:10])
    np.testing.assert_array_equal(model.ids, expected)
    assert model.left_out == pairs.item_idx.nunique() - 10
    np.testing.assert_allclose(model.weights, _closed_form(pairs, expected, 3.0), atol=1e-6)
    # Items beyond the limit are never proposed; users who saw none of the kept items get no list.
    only_rare = pd.DataFrame(
        {"user_idx": [999], "item_idx": [int(np.setdiff1d(pairs.item_idx, expected)[0])]}
    )
    hist = spark.createDataFrame(pd.concat([pairs, only_rare]))
    got = top_k_ease(model, hist, hist.select("user_idx").distinct(), 5).toPandas()
    assert set(got.item_idx) <= set(expected)
    assert 999 not in set(got.user_idx)
    assert got.groupby("user_idx").size().max() == 5


def test_bad_parameters_name_the_problem(spark: SparkSession) -> None:
    df = spark.createDataFrame(_history())
    with pytest.raises(ValueError, match="reg > 0"):
        fit_ease(df, 0.0)
    with pytest.raises(ValueError, match="max_items"):
        fit_ease(df, 1.0, max_items=0)
