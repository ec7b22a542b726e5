"""The blocked exact top-K engine against brute-force numpy, and the kNN scorers against pandas."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pandas as pd
import pytest
from pyspark.ml.linalg import Vectors
from pyspark.sql import DataFrame, SparkSession
from pyspark.testing import assertDataFrameEqual

from watchnext.models.knn import item_based_scores, user_based_scores
from watchnext.models.neighbors import (
    item_neighbors_from_content,
    item_neighbors_from_cooccurrence,
    item_neighbors_from_factors,
    user_neighbors_from_cooccurrence,
)
from watchnext.models.similarity import RunningTopK, blocked_topk, dense_rows, set_rows

pytestmark = [pytest.mark.spark]

N_ITEMS, DIM, K = 43, 16, 6


def _exact_vectors(n: int, d: int, seed: int) -> np.ndarray:
    """Rows with 0, 1, 4 or 16 entries of +-1: norms 0, 1, 2, 4, so the normalised vectors and every
    cosine are exact in float32 and many cosines tie exactly (the tie rule gets tested)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, d))
    for i in range(n):
        nnz = rng.choice([0, 1, 4, 16], p=[0.05, 0.2, 0.5, 0.25])
        cols = rng.choice(d, nnz, replace=False)
        x[i, cols] = rng.choice([-1.0, 1.0], nnz)
    return x


def _brute_topk(
    sims: np.ndarray, keep: np.ndarray, k: int, ids_left: np.ndarray, ids_right: np.ndarray
) -> pd.DataFrame:
    """Reference: per row, admissible columns by (score desc, id asc), first k."""
    rows = []
    for i in range(sims.shape[0]):
        cand = sorted((-sims[i, j], ids_right[j]) for j in range(sims.shape[1]) if keep[i, j])
        rows += [(int(ids_left[i]), int(j), float(-s), r + 1) for r, (s, j) in enumerate(cand[:k])]
    return pd.DataFrame(rows, columns=["item_idx", "neighbor_idx", "score", "rank"])


def _factors(spark: SparkSession, x: np.ndarray, ids: np.ndarray | None = None) -> DataFrame:
    ids = np.arange(len(x)) if ids is None else ids
    return spark.createDataFrame(
        [(int(i), [float(v) for v in row]) for i, row in zip(ids, x, strict=True)],
        "item_idx int, features array<float>",
    )


def _expected(spark: SparkSession, pdf: pd.DataFrame) -> DataFrame:
    return spark.createDataFrame(pdf, "item_idx int, neighbor_idx int, score double, rank int")


@pytest.mark.parametrize("block_size", [5, 8, 16, 43, 100])  # 43 items: most do not divide it
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_blocked_cosine_equals_brute_force(spark: SparkSession, block_size: int, dtype: str) -> None:
    x = _exact_vectors(N_ITEMS, DIM, seed=1)
    norms = np.linalg.norm(x, axis=1)
    unit = x / np.where(norms > 0, norms, 1.0)[:, None]
    keep = (norms[:, None] > 0) & (norms[None, :] > 0) & ~np.eye(N_ITEMS, dtype=bool)
    ids = np.arange(N_ITEMS)
    expected = _brute_topk(unit @ unit.T, keep, K, ids, ids)
    expected = expected[norms[expected.item_idx] > 0]
    assert expected.duplicated(["item_idx", "score"]).any(), "the data must contain ties"

    rows = dense_rows(_factors(spark, x), col_id="item_idx")
    got = blocked_topk(rows, K, block_size=block_size, dtype=dtype)
    assertDataFrameEqual(
        got.selectExpr(
            "CAST(item_idx AS INT) item_idx", "CAST(neighbor_idx AS INT) neighbor_idx", "score", "rank"
        ),
        _expected(spark, expected),
        rtol=0,
        atol=1e-7,
    )


def test_item_neighbors_from_random_factors_match_numpy(spark: SparkSession) -> None:
    """Continuous factors (no ties), sparse ids, float64: the public wrapper equals numpy."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(60, 8))
    ids = np.sort(rng.choice(10_000, 60, replace=False))
    unit = x / np.linalg.norm(x, axis=1)[:, None]
    expected = _brute_topk(unit @ unit.T, ~np.eye(60, dtype=bool), 4, ids, ids)
    got = item_neighbors_from_factors(_factors(spark, x.astype(np.float32), ids), 4, block_size=13)
    assertDataFrameEqual(got, _expected(spark, expected), rtol=1e-5)


def test_candidates_side_and_exclude_self(spark: SparkSession) -> None:
    """Rows against a different candidate set; an id present on both sides is not its own neighbour."""
    x = _exact_vectors(30, DIM, seed=3)
    left_ids, right_ids = np.arange(0, 12), np.arange(8, 30)  # 8..11 on both sides
    lx, rx = x[left_ids], x[right_ids]
    ln, rn = np.linalg.norm(lx, axis=1), np.linalg.norm(rx, axis=1)
    sims = (lx / np.where(ln > 0, ln, 1)[:, None]) @ (rx / np.where(rn > 0, rn, 1)[:, None]).T
    keep = (ln[:, None] > 0) & (rn[None, :] > 0) & (left_ids[:, None] != right_ids[None, :])
    expected = _brute_topk(sims, keep, 3, left_ids, right_ids)
    expected = expected[ln[expected.item_idx] > 0]
    got = blocked_topk(
        dense_rows(_factors(spark, lx, left_ids), col_id="item_idx"),
        3,
        candidates=dense_rows(_factors(spark, rx, right_ids), col_id="item_idx"),
        block_size=7,
    )
    assertDataFrameEqual(
        got.selectExpr(
            "CAST(item_idx AS INT) item_idx", "CAST(neighbor_idx AS INT) neighbor_idx", "score", "rank"
        ),
        _expected(spark, expected),
        atol=1e-7,
    )


def _incidence(seed: int, n_users: int = 40, n_items: int = 35, p: float = 0.18) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.random((n_users, n_items)) < p


@pytest.mark.parametrize(("measure", "block_size"), [("jaccard", 6), ("jaccard", 64), ("cosine", 9)])
def test_cooccurrence_matches_exact_fractions(spark: SparkSession, measure: str, block_size: int) -> None:
    m = _incidence(seed=5)
    inter = spark.createDataFrame(
        [(int(u), int(i)) for u, i in zip(*np.nonzero(m), strict=True)], "user_idx int, item_idx int"
    )
    c = (m.T.astype(int) @ m.astype(int)).astype(int)
    n = m.sum(axis=0).astype(int)
    rows = []
    for i in range(m.shape[1]):
        cand = []
        for j in range(m.shape[1]):
            if j == i or c[i, j] < 2:
                continue
            exact = (
                Fraction(int(c[i, j]), int(n[i] + n[j] - c[i, j]))
                if measure == "jaccard"
                else Fraction(int(c[i, j]) ** 2, int(n[i] * n[j]))  # cosine^2: exact ordering
            )
            cand.append((-exact, j))
        cand.sort()
        for r, (e, j) in enumerate(cand[:5]):
            score = float(-e) if measure == "jaccard" else float(np.sqrt(float(-e)))
            rows.append((i, j, score, r + 1))
    expected = spark.createDataFrame(rows, "item_idx int, neighbor_idx int, score double, rank int")
    got = item_neighbors_from_cooccurrence(inter, 5, measure=measure, min_overlap=2, block_size=block_size)
    assertDataFrameEqual(got, expected, rtol=1e-12)


@pytest.mark.parametrize("limit", [1, 40, 10_000])
def test_running_topk_floors_keep_the_exact_top_k(limit: int) -> None:
    """The set-measure kernel's running top K, fed block pair by block pair: with reduces forced after
    every pair (limit 1), every few pairs, or only at the end, its floors (each row's K-th score so
    far) never drop a candidate of the exact top K, ties at the floor included."""
    rng = np.random.default_rng(7)
    n_rows, k = 30, 4
    ids = np.sort(rng.choice(1000, n_rows, replace=False)).astype(np.int64)
    top = RunningTopK(ids, k, limit=limit)
    seen = []
    # each neighbour id belongs to one block pair, as in blocked_topk; later pairs bring smaller ids too
    blocks = rng.permutation(600).reshape(12, 50).astype(np.int64)
    for nbr_ids in blocks:
        rows = rng.integers(0, n_rows, 120)
        cols = rng.integers(0, 50, 120)
        pairs = np.unique(np.stack([rows, cols], axis=1), axis=0)  # a (row, neighbour) pair once
        scores = rng.integers(1, 6, len(pairs)) / 5.0  # five values: many ties at every K-th place
        top.add(pairs[:, 0].astype(np.int64), nbr_ids[pairs[:, 1]], scores)
        seen.append(pd.DataFrame({"a": ids[pairs[:, 0]], "b": nbr_ids[pairs[:, 1]], "s": scores}))
    ref = pd.concat(seen).sort_values(["a", "s", "b"], ascending=[True, False, True], kind="stable")
    ref = ref[ref.groupby("a").cumcount() < k].reset_index(drop=True)
    got = top.frame("a", "b", "s").sort_values(["a", "s", "b"], ascending=[True, False, True])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), ref, check_dtype=False)


def test_content_neighbors_sparse_vectors_and_empty_items(spark: SparkSession) -> None:
    rng = np.random.default_rng(11)
    x = np.where(rng.random((25, 40)) < 0.12, rng.integers(1, 4, (25, 40)), 0).astype(float)
    x[3] = 0.0  # an item without content: no neighbours, nobody's neighbour
    vecs = spark.createDataFrame(
        [(i, Vectors.sparse(40, {int(j): float(x[i, j]) for j in np.flatnonzero(x[i])})) for i in range(25)],
        ["item_idx", "features"],
    )
    norms = np.linalg.norm(x, axis=1)
    unit = x / np.where(norms > 0, norms, 1)[:, None]
    sims = unit @ unit.T
    keep = (sims > 1e-12) & ~np.eye(25, dtype=bool)
    expected = _brute_topk(sims, keep, 4, np.arange(25), np.arange(25))
    got = item_neighbors_from_content(vecs, 4, block_size=6)
    assert 3 not in {r.item_idx for r in got.select("item_idx").collect()}
    assert 3 not in {r.neighbor_idx for r in got.select("neighbor_idx").collect()}
    # cosines of small integer vectors can tie only up to rounding: compare (item, rank) -> score, and
    # the neighbour where the reference score is not tied
    g = got.toPandas().merge(expected, on=["item_idx", "rank"], suffixes=("", "_ref"), how="outer")
    assert np.allclose(g.score, g.score_ref, atol=1e-6)
    ties = expected.groupby(["item_idx", expected.score.round(9)]).neighbor_idx.transform("size") > 1
    untied = expected[~ties.to_numpy()].merge(got.toPandas(), on=["item_idx", "rank"], suffixes=("_ref", ""))
    assert (untied.neighbor_idx == untied.neighbor_idx_ref).all()


def test_item_based_scores_match_pandas(spark: SparkSession) -> None:
    neighbors = spark.createDataFrame(
        [(1, 2, 0.5), (1, 3, 0.25), (2, 1, 0.5), (2, 3, 0.75), (3, 4, 0.1), (4, 5, 0.9)],
        "item_idx int, neighbor_idx int, score double",
    )
    seen = spark.createDataFrame([(10, 1), (10, 2), (11, 3), (12, 9)], "user_idx int, item_idx int")
    # user 10: item 3 <- 0.25 (from 1) + 0.75 (from 2) = 1.0; items 1 and 2 are seen
    # user 11: item 4 <- 0.1; user 12 has no neighbours at all: no rows
    expected = spark.createDataFrame(
        [(10, 3, 1.0, 1), (11, 4, 0.1, 1)], "user_idx int, item_idx int, score double, rank int"
    )
    assertDataFrameEqual(item_based_scores(neighbors, seen, 5), expected)


def test_user_based_scores_match_pandas(spark: SparkSession) -> None:
    un = spark.createDataFrame(
        [(1, 2, 0.8), (1, 3, 0.2), (2, 1, 0.8)], "user_idx int, neighbor_idx int, score double"
    )
    inter = spark.createDataFrame(
        [(1, 100), (2, 100), (2, 101), (3, 101), (3, 102), (1, 103)], "user_idx int, item_idx int"
    )
    # user 1: 101 <- (0.8 + 0.2) / 1.0 = 1.0, 102 <- 0.2; tie rule not needed; 100 is seen
    # user 2: 103 <- 0.8 / 0.8 = 1.0 (100 seen)
    expected = spark.createDataFrame(
        [(1, 101, 1.0, 1), (1, 102, 0.2, 2), (2, 103, 1.0, 1)],
        "user_idx int, item_idx int, score double, rank int",
    )
    assertDataFrameEqual(user_based_scores(un, inter, 5), expected, rtol=1e-12)


def _reference_votes(
    weights: pd.DataFrame, matrix: pd.DataFrame, exclude: pd.DataFrame, k: int, normalize: bool
) -> pd.DataFrame:
    """The kNN vote in pandas: a join of (user, key, w) with (key, item, value), exact sums (Fractions
    of the float inputs), excluded pairs dropped, top k by (score desc, item asc)."""
    j = weights.merge(matrix, on="key")
    j["vote"] = [Fraction(w) * Fraction(v) for w, v in zip(j.w, j.value, strict=True)]
    votes = j.groupby(["user_idx", "item_idx"]).vote.sum().reset_index()
    if normalize:
        norm = weights.groupby("user_idx").w.apply(lambda x: sum(Fraction(abs(y)) for y in x))
        votes["vote"] = [v / norm[u] for u, v in zip(votes.user_idx, votes.vote, strict=True)]
    votes = votes.merge(exclude.assign(_x=1), on=["user_idx", "item_idx"], how="left")
    votes = votes[votes._x.isna() & (votes.vote != 0)].copy()
    votes["neg"] = [-v for v in votes.vote]
    votes = votes.sort_values(["user_idx", "neg", "item_idx"])
    votes["rank"] = votes.groupby("user_idx").cumcount() + 1
    votes = votes[votes["rank"] <= k]
    return pd.DataFrame(
        {
            "user_idx": votes.user_idx.astype("int32"),
            "item_idx": votes.item_idx.astype("int32"),
            "score": [float(v) for v in votes.vote],
            "rank": votes["rank"].astype("int32"),
        }
    )


def test_knn_scores_match_an_exact_reference_on_random_data(spark: SparkSession) -> None:
    """Many users in several Arrow batches, ties (weights in steps of 1/8), repeated interactions, users
    without interactions or neighbours without any, neighbour lists longer than k."""
    rng = np.random.default_rng(5)
    n_users, n_items, k = 300, 60, 7
    inter = pd.DataFrame(
        {"user_idx": rng.integers(0, n_users, 4000), "item_idx": rng.integers(0, n_items, 4000)}
    ).astype("int32")
    inter = inter[inter.user_idx % 17 != 3]  # users without interactions
    seen = inter.drop_duplicates()
    un = pd.DataFrame(
        {"user_idx": rng.integers(0, n_users, 3000), "neighbor_idx": rng.integers(0, n_users, 3000)}
    ).drop_duplicates()
    un = un[un.user_idx != un.neighbor_idx].astype("int32")
    un["score"] = rng.integers(1, 9, len(un)) / 8.0
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", "64")
    try:
        got_u = user_based_scores(
            spark.createDataFrame(un), spark.createDataFrame(inter.sample(frac=1.0, random_state=1)), k
        ).toPandas()
        nb = pd.DataFrame(
            {"item_idx": rng.integers(0, n_items, 500), "neighbor_idx": rng.integers(0, n_items, 500)}
        ).drop_duplicates()
        nb = nb[nb.item_idx != nb.neighbor_idx].astype("int32")
        nb["score"] = rng.integers(1, 5, len(nb)) / 4.0
        got_i = item_based_scores(spark.createDataFrame(nb), spark.createDataFrame(inter), k).toPandas()
    finally:
        spark.conf.unset("spark.sql.execution.arrow.maxRecordsPerBatch")
    want_u = _reference_votes(
        un.rename(columns={"neighbor_idx": "key", "score": "w"}),
        seen.rename(columns={"user_idx": "key"}).assign(value=1.0),
        seen,
        k,
        normalize=True,
    )
    want_i = _reference_votes(
        seen.rename(columns={"item_idx": "key"}).assign(w=1.0),
        nb.rename(columns={"item_idx": "key", "neighbor_idx": "item_idx", "score": "value"}),
        seen,
        k,
        normalize=False,
    )
    for got, want in ((got_u, want_u), (got_i, want_i)):
        assert len(want) > 1000 and (want.groupby("user_idx").size() == k).mean() > 0.5
        got = got.sort_values(["user_idx", "rank"]).reset_index(drop=True)
        want = want.sort_values(["user_idx", "rank"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12, atol=0)


def test_knn_scores_reject_a_duplicated_neighbour(spark: SparkSession) -> None:
    nb = spark.createDataFrame([(1, 2, 0.5), (1, 2, 0.25)], "item_idx int, neighbor_idx int, score double")
    seen = spark.createDataFrame([(10, 1)], "user_idx int, item_idx int")
    with pytest.raises(ValueError, match="duplicate"):
        item_based_scores(nb, seen, 5)


def test_user_neighbors_from_cooccurrence(spark: SparkSession) -> None:
    m = _incidence(seed=9, n_users=20, n_items=30, p=0.3)
    inter = spark.createDataFrame(
        [(int(u), int(i)) for u, i in zip(*np.nonzero(m), strict=True)], "user_idx int, item_idx int"
    )
    c = m.astype(int) @ m.T.astype(int)
    n = m.sum(axis=1)
    rows = []
    for u in range(20):
        cand = sorted(
            (-Fraction(int(c[u, v]) ** 2, int(n[u] * n[v])), v) for v in range(20) if v != u and c[u, v] >= 2
        )
        rows += [(u, v, float(np.sqrt(float(-e))), r + 1) for r, (e, v) in enumerate(cand[:3])]
    expected = spark.createDataFrame(rows, "user_idx int, neighbor_idx int, score double, rank int")
    assertDataFrameEqual(user_neighbors_from_cooccurrence(inter, 3, block_size=7), expected, rtol=1e-12)


def test_bad_input_is_named(spark: SparkSession) -> None:
    f = _factors(spark, np.eye(3))
    with pytest.raises(ValueError, match="k must be a positive int"):
        blocked_topk(dense_rows(f, col_id="item_idx"), 0)
    with pytest.raises(ValueError, match="jaccard needs set rows"):
        blocked_topk(dense_rows(f, col_id="item_idx"), 2, measure="jaccard")
    with pytest.raises(ValueError, match="missing column 'features'|'features'"):
        dense_rows(f.drop("features"), col_id="item_idx")
    sets = set_rows(
        spark.createDataFrame([(1, 2)], "user_idx int, item_idx int"),
        col_id="item_idx",
        col_member="user_idx",
    )
    with pytest.raises(ValueError, match="same kind"):
        blocked_topk(dense_rows(f, col_id="item_idx"), 2, candidates=sets)
