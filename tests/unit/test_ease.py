"""EASE against the closed form in numpy: the weights, the top-K lists with their anchors, the size
limit's fallback and the users it cannot score; the session Gram against a brute-force kernel."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from watchnext.models.ease import SESSION_SPAN, EaseModel, fit_ease, session_gram, top_k_ease

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


def test_top_k_does_not_depend_on_the_order_the_history_arrives_in(spark: SparkSession) -> None:
    """A re-run must give the same bits: each user's scores are summed over the seen items in item
    order, not in the order Spark's shuffle happened to deliver them."""
    rng = np.random.default_rng(3)
    pairs = pd.DataFrame({"user_idx": rng.integers(0, 40, 4000), "item_idx": rng.integers(0, 300, 4000)})
    pairs = pairs.drop_duplicates().reset_index(drop=True)
    ids = np.arange(300)
    model = EaseModel(ids, rng.standard_normal((300, 300)).astype(np.float32), 0)
    users = spark.createDataFrame(pd.DataFrame({"user_idx": np.arange(40)}))
    runs = [
        top_k_ease(model, spark.createDataFrame(pairs.iloc[order]).repartition(parts), users, 20)
        for order, parts in ((np.arange(len(pairs)), 1), (rng.permutation(len(pairs)), 7))
    ]
    assertDataFrameEqual(runs[0], runs[1], rtol=0.0, atol=0.0)


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
    with pytest.raises(ValueError, match="session_weight >= 0"):
        fit_ease(df, 1.0, session_weight=-1.0)
    with pytest.raises(ValueError, match="timestamp"):  # sessions need the times
        fit_ease(df, 1.0, session_weight=1.0)


def _timed_history(seed: int, n_users: int = 40, n_items: int = 30) -> pd.DataFrame:
    """Each user's items in a few sessions: bursts of items seconds to minutes apart, days between."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        items = rng.choice(n_items, size=int(rng.integers(3, 15)), replace=False)
        session_starts = rng.integers(0, 30, size=3) * 86_400
        for i in items:
            rows.append((u, int(i), int(rng.choice(session_starts) + rng.integers(0, 1_800))))
    return pd.DataFrame(rows, columns=["user_idx", "item_idx", "seconds"])


def _brute_session_gram(h: pd.DataFrame, n: int, window: float) -> np.ndarray:
    t = np.zeros((n, n))
    for _, g in h.groupby("user_idx"):
        secs = g.seconds.to_numpy(np.float64)
        dt = np.abs(secs[:, None] - secs[None, :])
        k = np.where(dt <= SESSION_SPAN * window, np.exp(-dt / window), 0.0)
        np.fill_diagonal(k, 0.0)
        t[np.ix_(g.item_idx, g.item_idx)] += k
    return t


def test_session_gram_is_the_kernel_over_each_users_close_pairs() -> None:
    h = _timed_history(3)
    got = session_gram(h.user_idx.to_numpy(), h.item_idx.to_numpy(), h.seconds.to_numpy(), 30, 120.0)
    want = _brute_session_gram(h, 30, 120.0)
    assert want.sum() > 0 and (want == 0).sum() > 0  # the data has close and distant pairs
    np.testing.assert_allclose(got.toarray(), want, atol=1e-12)
    # the input's row order does not matter
    perm = np.random.default_rng(0).permutation(len(h))
    again = session_gram(*(h[c].to_numpy()[perm] for c in ("user_idx", "item_idx", "seconds")), 30, 120.0)
    np.testing.assert_array_equal(again.toarray(), got.toarray())


def test_session_weights_are_the_closed_form_of_the_augmented_gram(spark: SparkSession) -> None:
    h = _timed_history(4)
    # a repeat of a pair, later: the pair's time is its first one
    repeat = h.iloc[[0]].assign(seconds=h.seconds.iloc[0] + 50 * 86_400)
    df = spark.createDataFrame(pd.concat([h, repeat])).selectExpr(
        "user_idx", "item_idx", "timestamp_seconds(seconds) AS timestamp"
    )
    model = fit_ease(df, 4.0, min_item_interactions=1, session_weight=3.0, session_seconds=200.0)
    ids = np.unique(h.item_idx)
    users = np.unique(h.user_idx)
    x = np.zeros((len(users), len(ids)))
    x[np.searchsorted(users, h.user_idx), np.searchsorted(ids, h.item_idx)] = 1.0
    local = h.assign(item_idx=np.searchsorted(ids, h.item_idx))
    g = x.T @ x + 3.0 * _brute_session_gram(local, len(ids), 200.0) + 4.0 * np.eye(len(ids))
    p = np.linalg.inv(g)
    b = p / -np.diag(p)
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(model.weights, b, atol=1e-6)


def test_the_session_term_uses_only_the_pairs_with_a_timestamp(spark: SparkSession) -> None:
    """Data without timestamps (a generic source with no time column) fits plain EASE; with some
    rows untimed, the session Gram is the kernel over the timed pairs, the co-occurrence over all."""
    h = _timed_history(5)
    untimed = h.sample(frac=0.3, random_state=1).index
    secs = h.seconds.astype("Int64").mask(h.index.isin(untimed))
    df = spark.createDataFrame(h.assign(seconds=secs.astype(object).where(secs.notna(), None))).selectExpr(
        "user_idx", "item_idx", "timestamp_seconds(seconds) AS timestamp"
    )
    ids = np.unique(h.item_idx)
    local = h.assign(item_idx=np.searchsorted(ids, h.item_idx))
    g = _closed_form(h[["user_idx", "item_idx"]], ids, 4.0)  # plain EASE's B, for the no-time case
    none = fit_ease(df.selectExpr("user_idx", "item_idx", "CAST(NULL AS timestamp) AS timestamp"), 4.0,
                    min_item_interactions=1, session_weight=3.0)  # fmt: skip
    np.testing.assert_allclose(none.weights, g, atol=1e-6)
    some = fit_ease(df, 4.0, min_item_interactions=1, session_weight=3.0, session_seconds=200.0)
    users = np.unique(h.user_idx)
    x = np.zeros((len(users), len(ids)))
    x[np.searchsorted(users, h.user_idx), np.searchsorted(ids, h.item_idx)] = 1.0
    timed = local[~local.index.isin(untimed)]
    gram = x.T @ x + 3.0 * _brute_session_gram(timed, len(ids), 200.0) + 4.0 * np.eye(len(ids))
    p = np.linalg.inv(gram)
    b = p / -np.diag(p)
    np.fill_diagonal(b, 0.0)
    np.testing.assert_allclose(some.weights, b, atol=1e-6)
    assert np.abs(some.weights - g).max() > 1e-3  # the timed pairs do change the model


def test_sessions_put_the_item_taken_together_first(spark: SparkSession) -> None:
    """Items 1 and 2 are each taken with item 0 by ten users: 1 weeks later, 2 minutes later. Plain
    EASE cannot tell them apart (the tie goes to the smaller id, 1); with sessions 2 comes first."""
    rows = []
    for u in range(10):
        base = u * 1_000_000
        rows += [(u, 0, base), (u, 1, base + 14 * 86_400), (20 + u, 0, base), (20 + u, 2, base + 120)]
    rows += [(99, 0, 0)]
    df = spark.createDataFrame(rows, "user_idx int, item_idx int, seconds long").selectExpr(
        "user_idx", "item_idx", "timestamp_seconds(seconds) AS timestamp"
    )
    newcomer = spark.createDataFrame([(99,)], "user_idx int")

    def first(session_weight: float) -> list[int]:
        model = fit_ease(df, 1.0, min_item_interactions=1, session_weight=session_weight)
        got = top_k_ease(model, df, newcomer, 2).orderBy("rank").toPandas()
        return got.item_idx.tolist()

    assert first(0.0) == [1, 2]
    assert first(2.0) == [2, 1]
