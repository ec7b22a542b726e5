"""Batch top-K from factors (models/topk.py) against brute-force numpy, ties and seen items included.

The factors are small integers, so every score is exact in float32 (and float64) and ties are many:
the order contract (score desc, ties to the smaller item id, seen items never returned, short lists)
is checked on whole outputs, not samples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import types as T

import watchnext.models.topk as topk
from watchnext.models.topk import (
    top_by_partition,
    top_by_threshold,
    top_k_by_blocks,
    top_positions,
    topk_from_factors,
)

USER, ITEM, FEATURES, SCORE, RANK = "user_idx", "item_idx", "features", "score", "rank"


# --- selection helpers ------------------------------------------------------------------------------


def test_top_k_by_blocks_gives_the_same_lists_whatever_the_block() -> None:
    """The same users, items, scores (bit for bit) and ranks for any number of users per GEMM, the
    seen pairs excluded, on a catalogue wide enough for the threshold selection."""
    rng = np.random.default_rng(8)
    p = rng.standard_normal((50, 16)).astype(np.float32)
    qt = rng.standard_normal((16, 3000)).astype(np.float32)
    users, items = np.arange(100, 150), np.arange(3000) * 2
    seen_rows = np.repeat(np.arange(50), 30)
    seen_cols = rng.integers(0, 3000, len(seen_rows))
    runs = [top_k_by_blocks(p, qt, users, items, 20, b, seen_rows, seen_cols) for b in (1, 7, 50, 4096)]
    for run in runs[1:]:
        for got, want in zip(run, runs[0], strict=True):
            np.testing.assert_array_equal(got, want)
    u, i, s, r = runs[0]
    full = p @ qt
    full[seen_rows, seen_cols] = -np.inf
    want_pos = np.argsort(-full, axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(u, np.repeat(users, 20))
    np.testing.assert_array_equal(i, items[want_pos].ravel())
    np.testing.assert_array_equal(s, np.take_along_axis(full, want_pos, axis=1).ravel().astype(np.float64))
    np.testing.assert_array_equal(r, np.tile(np.arange(1, 21), 50))


def _ref_positions(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Full sort by (score desc, position asc); -inf last, NaN after it."""
    b, n = scores.shape
    key = np.where(np.isnan(scores), np.inf, -scores)  # NaN sorts after -inf (key +inf > -(-inf))
    nan_last = np.isnan(scores).astype(np.int8)
    order = np.lexsort((np.broadcast_to(np.arange(n), (b, n)), key, nan_last), axis=1)[:, : min(k, n)]
    return order, np.take_along_axis(scores, order, axis=1)


def _tie_heavy(rng: np.random.Generator, b: int, n: int, levels: int, dtype: str) -> np.ndarray:
    s = rng.integers(0, levels, size=(b, n)).astype(dtype)
    s[rng.random((b, n)) < 0.05] = -np.inf
    s[0] = -np.inf  # a row with nothing finite
    s[1, 3:] = -np.inf  # a row with 3 finite scores
    s[2] = 1.0  # a row tied everywhere
    return s


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("levels", [2, 7, 50, 100_000])
@pytest.mark.parametrize(
    ("n", "k"), [(5, 2), (40, 39), (40, 40), (40, 45), (300, 1), (1000, 10), (3001, 100)]
)
def test_top_positions_equals_a_full_sort(dtype: str, levels: int, n: int, k: int) -> None:
    rng = np.random.default_rng(n * 31 + k + levels)
    s = _tie_heavy(rng, 24, n, levels, dtype)
    pos, vals = top_positions(s, k)
    exp_pos, exp_vals = _ref_positions(s, k)
    np.testing.assert_array_equal(pos, exp_pos)
    np.testing.assert_array_equal(vals, exp_vals)
    assert pos.dtype == np.int64 and vals.dtype == s.dtype
    # A column slice (not C-contiguous), as a caller may pass.
    wide = np.concatenate([s, s[:, :7]], axis=1)[:, :n]
    np.testing.assert_array_equal(top_positions(wide, k)[0], exp_pos)


@pytest.mark.parametrize("levels", [3, 40, 1_000_000])
def test_threshold_selection_exact_for_any_chunk_count(levels: int) -> None:
    rng = np.random.default_rng(levels)
    b, n, k = 40, 997, 12  # 997 is prime: every chunk count leaves columns outside the chunks
    s = _tie_heavy(rng, b, n, levels, "float32")
    s[5, ::2] = np.nan  # NaN ranks below -inf, and never hides a finite score
    exp_pos, exp_vals = _ref_positions(s, k)
    for chunks in (k + 1, 50, 64, 333, n // 2):
        pos, vals = top_by_threshold(s, k, chunks)
        np.testing.assert_array_equal(pos, exp_pos)
        np.testing.assert_array_equal(vals, exp_vals)
    mask = np.ones((b, n), dtype=bool)  # a reused (dirty) buffer
    np.testing.assert_array_equal(top_by_threshold(s, k, mask=mask)[0], exp_pos)
    few = np.full((3, n), -np.inf, dtype=np.float32)  # no row has K finite scores: all redone
    few[:, [5, 900]] = 2.0
    np.testing.assert_array_equal(top_by_threshold(few, k)[0], _ref_positions(few, k)[0])


def test_threshold_selection_without_ties_needs_no_full_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """Distinct scores: the cells above the threshold alone give the answer (no full-row redo)."""
    rng = np.random.default_rng(3)
    s = rng.standard_normal((64, 5000)).astype(np.float32)
    s[7, :4990] = -np.inf  # 10 finite scores: this row is redone on its full row
    calls: list[int] = []
    real = topk.top_by_partition

    def spy(vals: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        calls.append(len(vals))
        return real(vals, k)

    monkeypatch.setattr(topk, "top_by_partition", spy)
    pos, vals = top_positions(s, 50)
    exp_pos, exp_vals = _ref_positions(s, 50)
    np.testing.assert_array_equal(pos, exp_pos)
    np.testing.assert_array_equal(vals, exp_vals)
    assert calls == [1]  # only the row without 50 finite scores


def test_top_positions_nan_never_beats_a_finite_score() -> None:
    s = np.array([[np.nan, 1.0, np.nan, 3.0, 2.0] * 1000], dtype=np.float32)
    for k in (100, 3100):  # the threshold path (the NaN row is redone), and one argpartition
        pos, vals = top_positions(s, k)
        assert np.isfinite(vals[0, : min(k, 3000)]).all() and np.isnan(vals[0, 3000:]).all()
        np.testing.assert_array_equal(pos[0, :3], [3, 8, 13])


@pytest.mark.parametrize("k", [1, 3, 20, 59])
def test_select_equals_a_full_sort(k: int) -> None:
    rng = np.random.default_rng(k)
    vals = rng.integers(0, 4, size=(30, 60)).astype(np.float64)
    vals[0] = 2.0
    idx, top = top_by_partition(vals, k)
    exp_idx, exp_top = _ref_positions(vals, k)
    np.testing.assert_array_equal(idx, exp_idx)
    np.testing.assert_array_equal(top, exp_top)


# --- topk_from_factors on Spark ---------------------------------------------------------------------


def _reference(
    users: np.ndarray, u: np.ndarray, items: np.ndarray, v: np.ndarray, seen: dict[int, set[int]], k: int
) -> pd.DataFrame:
    """Brute force: every score, seen ones dropped, a full lexsort by (score desc, item id asc)."""
    s = u.astype(np.float64) @ v.astype(np.float64).T
    pos = {int(i): j for j, i in enumerate(items)}
    for r, uid in enumerate(users):
        for i in seen.get(int(uid), ()):
            if i in pos:
                s[r, pos[i]] = -np.inf
    order = np.lexsort((np.broadcast_to(items, s.shape), -s), axis=1)[:, :k]
    top = np.take_along_axis(s, order, axis=1)
    keep = top > -np.inf
    return pd.DataFrame(
        {
            USER: np.broadcast_to(users[:, None], order.shape)[keep],
            ITEM: items[order][keep],
            SCORE: top[keep],
            RANK: np.broadcast_to(np.arange(1, order.shape[1] + 1), order.shape)[keep].astype(np.int32),
        }
    )


def _case(rng: np.random.Generator, n_users: int, n_items: int, d: int, scale: int, sparse_ids: bool):
    users = rng.permutation(np.arange(n_users) * 7 + 3)
    if sparse_ids:  # spread over 0..10^12: the binary-search path for the seen ids
        items = rng.choice(10**12, size=n_items, replace=False)
    else:  # a permutation of near-dense ids: the lookup-table path
        items = rng.permutation(np.arange(n_items) * 2 + 5)
    u = rng.integers(-scale, scale + 1, size=(n_users, d))
    v = rng.integers(-scale, scale + 1, size=(n_items, d))
    seen: dict[int, set[int]] = {}
    for uid in users[: n_users - 40]:  # the last 40 users have no seen rows at all
        seen[int(uid)] = {int(i) for i in rng.choice(items, size=int(rng.integers(0, 200)), replace=False)}
    seen[int(users[0])] = {int(i) for i in items[:-5]}  # 5 unseen items left: a short list
    seen[int(users[1])] = {int(i) for i in items}  # everything seen: no rows at all
    seen[int(users[2])] = {-1, -2, int(items.max()) + 10}  # only items without factors
    seen[int(users[3])] |= {-7, int(items.max()) + 99}
    seen[-5] = {int(items[0])}  # a seen user without factors is ignored
    return users, u, items, v, seen


def _frames(spark: SparkSession, users, u, items, v, seen, item_type: T.DataType, elem: T.DataType):
    uf = spark.createDataFrame(
        pd.DataFrame({USER: users.astype(np.int32), FEATURES: list(u.astype(np.float64))}),
        T.StructType([T.StructField(USER, T.IntegerType()), T.StructField(FEATURES, T.ArrayType(elem))]),
    )
    item_np = np.int64 if isinstance(item_type, T.LongType) else np.int32
    itf = spark.createDataFrame(
        pd.DataFrame({ITEM: items.astype(item_np), FEATURES: list(v.astype(np.float64))}),
        T.StructType([T.StructField(ITEM, item_type), T.StructField(FEATURES, T.ArrayType(elem))]),
    )
    pairs = [(uid, i) for uid, s in seen.items() for i in s]
    seen_df = spark.createDataFrame(
        pd.DataFrame({USER: [p[0] for p in pairs], ITEM: [p[1] for p in pairs]}).astype(
            {USER: np.int32, ITEM: item_np}
        ),
        T.StructType([T.StructField(USER, T.IntegerType()), T.StructField(ITEM, item_type)]),
    )
    return uf.repartition(3), itf, seen_df


def _collect(df) -> pd.DataFrame:
    out = df.toPandas().sort_values([USER, RANK], kind="stable").reset_index(drop=True)
    return out.astype({USER: np.int64, ITEM: np.int64, SCORE: np.float64, RANK: np.int32})


def _check(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    expected = expected.sort_values([USER, RANK], kind="stable").reset_index(drop=True)
    expected = expected.astype({USER: np.int64, ITEM: np.int64, SCORE: np.float64, RANK: np.int32})
    pd.testing.assert_frame_equal(got, expected)


def _boundary_ties(users, u, items, v, seen, k) -> int:
    """Users whose K-th unseen score is shared by an unseen item outside their top K."""
    full = _reference(users, u, items, v, seen, len(items))
    nth = full.groupby(USER)[SCORE].apply(lambda s: int(len(s) > k and s.iloc[k - 1] == s.iloc[k]))
    return int(nth.sum())


@pytest.mark.spark
@pytest.mark.parametrize(
    ("k", "block_size", "sparse_ids", "scale"),
    [(1, None, False, 3), (10, 37, True, 3), (100, 128, False, 3), (100, None, True, 40)],
)
def test_topk_from_factors_equals_brute_force(
    spark: SparkSession, k: int, block_size: int | None, sparse_ids: bool, scale: int
) -> None:
    rng = np.random.default_rng(k + scale)
    users, u, items, v, seen = _case(rng, 500, 3000, 8, scale, sparse_ids)
    assert _boundary_ties(users, u, items, v, seen, k) > 20  # ties at the K-th place are exercised
    item_type = T.LongType() if sparse_ids else T.IntegerType()
    uf, itf, seen_df = _frames(spark, users, u, items, v, seen, item_type, T.FloatType())
    got = _collect(topk_from_factors(uf, itf, k, seen_df, block_size=block_size))
    expected = _reference(users, u, items, v, seen, k)
    _check(got, expected)
    counts = got.groupby(USER).size()
    assert counts.get(int(users[0])) == min(5, k)  # short list
    assert int(users[1]) not in counts.index  # everything seen: no rows
    assert len(counts) == len(users) - 1


@pytest.mark.spark
def test_topk_from_factors_without_seen_and_in_float64(spark: SparkSession) -> None:
    rng = np.random.default_rng(11)
    users, u, items, v, seen = _case(rng, 300, 1500, 8, 3, False)
    uf, itf, seen_df = _frames(spark, users, u, items, v, seen, T.IntegerType(), T.FloatType())
    _check(_collect(topk_from_factors(uf, itf, 25, block_size=64)), _reference(users, u, items, v, {}, 25))

    # Scores up to ~8 * 4000^2 need more than float32's 24 bits: float64 keeps them (and their ties) exact.
    big_u = rng.integers(-4000, 4001, size=u.shape)
    big_v = rng.integers(-4000, 4001, size=v.shape)
    big_v[1::2] = big_v[::2]  # pairs of identical items: a tie for every user
    uf, itf, seen_df = _frames(spark, users, big_u, items, big_v, seen, T.IntegerType(), T.DoubleType())
    got = _collect(topk_from_factors(uf, itf, 30, seen_df, block_size=77, dtype="float64"))
    _check(got, _reference(users, big_u, items, big_v, seen, 30))


@pytest.mark.spark
def test_topk_from_factors_rejects_bad_factors(spark: SparkSession) -> None:
    schema = T.StructType(
        [T.StructField(ITEM, T.IntegerType()), T.StructField(FEATURES, T.ArrayType(T.FloatType()))]
    )
    uf = spark.createDataFrame(
        [(1, [1.0, 0.0])],
        T.StructType(
            [T.StructField(USER, T.IntegerType()), T.StructField(FEATURES, T.ArrayType(T.FloatType()))]
        ),
    )
    with pytest.raises(ValueError, match="duplicate"):
        topk_from_factors(uf, spark.createDataFrame([(1, [1.0, 2.0]), (1, [2.0, 1.0])], schema), 2)
    with pytest.raises(ValueError, match="differ in length"):
        topk_from_factors(uf, spark.createDataFrame([(1, [1.0, 2.0]), (2, [2.0])], schema), 2)
    no_items = spark.createDataFrame([], schema)
    assert topk_from_factors(uf, no_items, 2).count() == 0
