"""NCF pieces without Horovod: the model builders, the Spark training/evaluation data, the sharding,
the sampled metrics and the batch scoring inside Spark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from watchnext.models import ncf_data
from watchnext.models.ncf import (
    NcfSpec,
    build_model,
    candidate_logits,
    init_neumf_from_pretrained,
    predict_logits,
)
from watchnext.models.ncf_score import load_model, save_model, score_pairs, score_topk
from watchnext.models.ncf_train import hit_ndcg, sampled_ranks

pytestmark = [pytest.mark.spark]


# ------------------------------------------------------------------------------------------ models
def _n_params(model) -> int:  # noqa: ANN001
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        # embeddings 2 x (n x 8); prediction 8 + 1
        ("gmf", 10 * 8 + 20 * 8 + 8 + 1),
        # embeddings (10 + 20) x 8; dense 16->8 and 8->4; prediction 4 + 1
        ("mlp", 10 * 8 + 20 * 8 + (16 * 8 + 8) + (8 * 4 + 4) + 4 + 1),
        # both towers, prediction over 8 + 4
        ("neumf", 10 * 8 + 20 * 8 + 10 * 8 + 20 * 8 + (16 * 8 + 8) + (8 * 4 + 4) + 12 + 1),
    ],
)
def test_builders_have_the_papers_shapes(kind: str, expected: int) -> None:
    spec = NcfSpec(n_users=10, n_items=20, model=kind, mf_dim=8, mlp_layers=[16, 8, 4], l2=1e-3)
    model = build_model(spec)
    assert _n_params(model) == expected
    out = model([np.array([[0], [9]]), np.array([[0], [19]])], training=False)
    assert tuple(out.shape) == (2, 1)
    # per-sample L2 on the looked-up embeddings: one loss per embedding lookup
    assert len(model.losses) == (4 if kind == "neumf" else 2)


@pytest.mark.parametrize(
    ("kind", "layers"), [("neumf", [16, 8]), ("mlp", [16, 8, 4]), ("gmf", [16, 8]), ("mlp", [16])]
)
@pytest.mark.parametrize("project_items", [True, False])
def test_candidate_logits_are_the_models_function_loss_and_gradients(
    kind: str, layers: list[int], project_items: bool
) -> None:
    """The training step's path (each user against its candidates, first MLP layer split) gives the
    flat model call's logits, its L2 activity loss and the same gradients of a softmax loss."""
    import tensorflow as tf

    spec = NcfSpec(n_users=30, n_items=50, model=kind, mf_dim=8, mlp_layers=layers, l2=1e-2)
    tf.keras.utils.set_random_seed(1)
    model = build_model(spec)
    rng = np.random.default_rng(2)
    model.set_weights([w + rng.normal(0, 0.3, w.shape) for w in model.get_weights()])
    users = tf.constant(rng.integers(0, 30, 7).astype(np.int32))
    cand = tf.constant(rng.integers(0, 50, (7, 11)).astype(np.int32))
    with tf.GradientTape(persistent=True) as tape:
        flat = model([tf.reshape(tf.repeat(users, 11), [-1, 1]), tf.reshape(cand, [-1, 1])], training=True)
        flat = tf.reshape(flat, [-1, 11])
        flat_l2 = tf.add_n(model.losses)
        got, got_l2 = candidate_logits(model, spec, users, cand, training=True, project_items=project_items)
        loss_flat = tf.reduce_sum(tf.nn.log_softmax(flat)[:, 0]) + flat_l2
        loss_got = tf.reduce_sum(tf.nn.log_softmax(got)[:, 0]) + got_l2
    np.testing.assert_allclose(got.numpy(), flat.numpy(), rtol=1e-5, atol=1e-6)
    assert float(got_l2) == pytest.approx(float(flat_l2), rel=1e-5)
    for a, b in zip(
        tape.gradient(loss_flat, model.trainable_variables),
        tape.gradient(loss_got, model.trainable_variables),
        strict=True,
    ):
        got_grad, flat_grad = tf.convert_to_tensor(b).numpy(), tf.convert_to_tensor(a).numpy()
        np.testing.assert_allclose(got_grad, flat_grad, atol=1e-6)


def test_spec_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="mlp_layers"):
        NcfSpec(n_users=3, n_items=3, mlp_layers=[15, 8])
    with pytest.raises(ValueError, match="model"):
        NcfSpec(n_users=3, n_items=3, model="svd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_users"):
        NcfSpec(n_users=0, n_items=3)


def test_neumf_from_pretrained_is_the_alpha_mix_of_the_towers() -> None:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(1)
    base = {"n_users": 7, "n_items": 11, "mf_dim": 4, "mlp_layers": [8, 6, 3], "l2": 0.0}
    gmf, mlp, neumf = (build_model(NcfSpec(model=k, **base)) for k in ("gmf", "mlp", "neumf"))
    for m in (gmf, mlp):  # move the towers away from their near-zero start
        m.set_weights([w + np.random.default_rng(3).normal(0, 0.5, w.shape) for w in m.get_weights()])
    init_neumf_from_pretrained(neumf, gmf, mlp, alpha=0.3)
    u, i = np.repeat(np.arange(7), 11), np.tile(np.arange(11), 7)
    expected = 0.3 * predict_logits(gmf, u, i) + 0.7 * predict_logits(mlp, u, i)
    np.testing.assert_allclose(predict_logits(neumf, u, i), expected, rtol=1e-5, atol=1e-6)


# -------------------------------------------------------------------------------------------- data
def _interactions(spark: SparkSession) -> tuple[pd.DataFrame, object]:
    rows = [(u, i, 1.0 + (u + i) % 5) for u in range(6) for i in range(0, 30, u + 2)]
    pdf = pd.DataFrame(rows, columns=["user_idx", "item_idx", "rating"])
    return pdf, spark.createDataFrame(pdf, "user_idx int, item_idx int, rating double")


def test_positives_all_or_above_threshold(spark: SparkSession) -> None:
    pdf, df = _interactions(spark)
    dup = df.unionByName(df)  # repeated events are one positive
    assertDataFrameEqual(ncf_data.positives(dup), df.select("user_idx", "item_idx"))
    expected = pdf[pdf.rating >= 4.0][["user_idx", "item_idx"]]
    expected_df = spark.createDataFrame(expected, "user_idx int, item_idx int")
    assertDataFrameEqual(ncf_data.positives(dup, 4.0), expected_df)


def test_training_rows_sample_unseen_negatives_per_positive(spark: SparkSession) -> None:
    pdf, df = _interactions(spark)
    n_items, neg, rounds = 30, 3, 2
    rows = ncf_data.training_rows(ncf_data.positives(df), n_items, neg, rounds, seed=5).toPandas()
    seen = pdf.groupby("user_idx").item_idx.apply(set).to_dict()
    for (u, _r), g in rows.groupby(["user_idx", "round"]):
        assert set(g.item_idx) == seen[u] and len(g) == len(seen[u])  # every positive once per round
        negs = np.stack(g.negatives.to_numpy())
        assert negs.shape == (len(seen[u]), neg)  # the ratio, per positive
        assert not set(negs.ravel()) & seen[u] and ((negs >= 0) & (negs < n_items)).all()
    assert sorted(rows["round"].unique()) == [0, 1]
    by_round = [
        np.stack(rows[rows["round"] == r].sort_values(["user_idx", "item_idx"]).negatives.to_numpy())
        for r in (0, 1)
    ]
    assert not np.array_equal(*by_round)  # fresh negatives per round
    # seeded and independent of partitioning: the same frame from 1 or 5 input partitions
    again = ncf_data.training_rows(ncf_data.positives(df.repartition(5)), n_items, neg, rounds, seed=5)
    assertDataFrameEqual(again, spark.createDataFrame(rows, again.schema))
    other = ncf_data.training_rows(ncf_data.positives(df), n_items, neg, rounds, seed=6)
    with pytest.raises(AssertionError):
        assertDataFrameEqual(other, spark.createDataFrame(rows, other.schema))


def test_training_rows_leave_out_a_user_with_no_unseen_item(spark: SparkSession) -> None:
    df = spark.createDataFrame([(0, 0), (0, 1), (0, 2), (1, 2)], "user_idx int, item_idx int")
    rows = ncf_data.training_rows(df, 3, 2, 1, seed=1)
    assert rows.select("user_idx", "item_idx").collect() == [(1, 2)]
    assert sorted(rows.first().negatives) != [] and set(rows.first().negatives) <= {0, 1}


def test_training_rows_reject_items_outside_the_catalogue(spark: SparkSession) -> None:
    _, df = _interactions(spark)
    with pytest.raises(Exception, match="n_items is too small"):
        ncf_data.training_rows(ncf_data.positives(df), 10, 1, 1, seed=1).collect()


def test_sampled_eval_rows_one_positive_among_unseen_negatives(spark: SparkSession) -> None:
    pdf, df = _interactions(spark)
    holdout = spark.createDataFrame([(0, 3), (1, 4), (5, 8)], "user_idx int, item_idx int")
    known = df.select("user_idx", "item_idx").unionByName(holdout)
    rows = ncf_data.sampled_eval_rows(holdout, known, 30, 10, seed=3).toPandas()
    seen = pdf.groupby("user_idx").item_idx.apply(set).to_dict()
    assert sorted(rows.user_idx.unique()) == [0, 1, 5]
    for u, g in rows.groupby("user_idx"):
        pos = g[g.label == 1.0].item_idx.tolist()
        negs = g[g.label == 0.0].item_idx
        assert pos == [{0: 3, 1: 4, 5: 8}[u]]
        assert len(negs) == 10 and negs.is_unique and not set(negs) & (seen[u] | set(pos))
    # user 0 has seen 15 of 30 items plus the held-out one: only 14 unseen, all of them are taken
    few = ncf_data.sampled_eval_rows(holdout, known, 30, 20, seed=3).toPandas()
    assert (few.user_idx == 0).sum() == 1 + 14


def _train_df(spark: SparkSession, users: object, items: object, negatives: object) -> DataFrame:
    rows = [(int(u), int(i), [int(x) for x in n]) for u, i, n in zip(users, items, negatives, strict=True)]
    return spark.createDataFrame(rows, "user_idx int, item_idx int, negatives array<int>")


def test_shards_split_rounds_between_ranks_exactly(spark: SparkSession, tmp_path: Path) -> None:
    pdf, df = _interactions(spark)
    rows = ncf_data.training_rows(ncf_data.positives(df), 30, 2, 3, seed=1)
    data = ncf_data.write_shards(rows, str(tmp_path / "train"), shards=6, seed=9)
    full = rows.toPandas()
    assert data.rounds == 3 and data.rows == len(full) // 3
    for r in range(3):
        parts = [ncf_data.read_rank_shards(data, rank, 2, r) for rank in range(2)]
        assert all(p["negatives"].shape == (len(p["user_idx"]), 2) for p in parts)
        w = full[full["round"] == r]
        want = _train_df(spark, w.user_idx, w.item_idx, w.negatives)
        got = [_train_df(spark, p["user_idx"], p["item_idx"], p["negatives"]) for p in parts]
        assertDataFrameEqual(got[0].unionByName(got[1]), want)
        assert abs(len(parts[0]["user_idx"]) - len(parts[1]["user_idx"])) < 0.3 * data.rows
        one = ncf_data.read_rank_shards(data, 0, 1, r)  # one rank reads everything, sorted by (user, item)
        assertDataFrameEqual(_train_df(spark, one["user_idx"], one["item_idx"], one["negatives"]), want)
        assert np.all(np.diff(one["user_idx"].astype(np.int64) * 1000 + one["item_idx"]) > 0)
    holdout = spark.createDataFrame(
        [(int(u), 29) for u in sorted(pdf.user_idx.unique())], "user_idx int, item_idx int"
    )
    ev_rows = ncf_data.sampled_eval_rows(holdout, df.select("user_idx", "item_idx"), 30, 5, seed=3)
    ev = ncf_data.write_shards(ev_rows, str(tmp_path / "ev"), shards=4, seed=9, by_user=True)
    users = [set(ncf_data.read_rank_shards(ev, rank, 2)["user_idx"]) for rank in range(2)]
    assert not users[0] & users[1]  # evaluation users are not split between ranks
    assert users[0] | users[1] == set(pdf.user_idx)


def test_ranks_draw_the_negatives_training_rows_materialises(spark: SparkSession, tmp_path: Path) -> None:
    """The stage's path: positives sharded by user, each rank drawing its users' negatives per round,
    gives exactly the rows of training_rows (same draws), a user's rows on one rank; a user who has
    seen every item is left out and an item outside the catalogue is refused."""
    _, df = _interactions(spark)
    pos = ncf_data.positives(df)
    full = spark.createDataFrame([(9, i) for i in range(30)], "user_idx int, item_idx int")
    sampling = ncf_data.NegativeSampling(n_items=30, per_positive=2, rounds=3, seed=1)
    rows = ncf_data.training_positives(pos.unionByName(full), 30)
    data = ncf_data.write_shards(rows, str(tmp_path / "train"), shards=6, seed=9, sampling=sampling)
    reference = ncf_data.training_rows(pos, 30, 2, 3, seed=1).toPandas()
    assert data.rounds == 3 and data.sampling == sampling and data.rows == len(reference) // 3
    for r in range(3):
        parts = [ncf_data.read_rank_shards(data, rank, 2, r) for rank in range(2)]
        assert not set(parts[0]["user_idx"]) & set(parts[1]["user_idx"])
        w = reference[reference["round"] == r]
        want = _train_df(spark, w.user_idx, w.item_idx, w.negatives)
        got = [_train_df(spark, p["user_idx"], p["item_idx"], p["negatives"]) for p in parts]
        assertDataFrameEqual(got[0].unionByName(got[1]), want)
    with pytest.raises(ValueError, match="n_items is too small"):
        ncf_data.training_positives(pos, 10)


def test_iter_batches_wraps_around_to_the_common_step_count() -> None:
    arrays = {
        "user_idx": np.arange(10),
        "item_idx": np.arange(10) + 100,
        "negatives": np.arange(20).reshape(10, 2),
    }
    batches = list(ncf_data.iter_batches(arrays, 4, 4, np.random.default_rng(0)))
    assert [len(b["user_idx"]) for b in batches] == [4, 4, 4, 4]  # 16 rows from 10: wrapped, same step count
    firsts = np.concatenate([b["user_idx"] for b in batches])
    assert set(firsts[:10]) == set(range(10))  # an epoch sees every row before repeating any
    for b in batches:  # rows stay aligned
        np.testing.assert_array_equal(b["item_idx"], b["user_idx"] + 100)
        np.testing.assert_array_equal(b["negatives"], np.stack([2 * b["user_idx"], 2 * b["user_idx"] + 1], 1))


def test_sampled_ranks_and_metrics_hand_example() -> None:
    users = np.array([1, 1, 1, 1, 2, 2, 2, 3, 3])
    labels = np.array([0, 1, 0, 0, 0, 0, 1, 1, 0], dtype=np.float32)
    scores = np.array([0.9, 0.5, 0.5, 0.1, 0.2, 0.3, 0.4, 0.1, 0.7])
    ranks = sampled_ranks(users, labels, scores)
    # user 1: 0.9 ahead and 0.5 tied (ties count against) -> 2; user 2: nothing ahead -> 0; user 3: 1
    np.testing.assert_array_equal(ranks, [2, 0, 1])
    hits, ndcg = hit_ndcg(ranks, 2)
    assert hits == 2.0
    assert ndcg == pytest.approx(1.0 + 1 / np.log2(3))
    with pytest.raises(ValueError, match="exactly one positive"):
        sampled_ranks(np.array([1, 1]), np.array([1, 1], dtype=np.float32), np.array([0.1, 0.2]))


# ------------------------------------------------------------------------------------------ scoring
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(7)
    spec = NcfSpec(n_users=12, n_items=40, mf_dim=4, mlp_layers=[8, 4], l2=0.0)
    model = build_model(spec)
    model.set_weights([w + np.random.default_rng(2).normal(0, 0.3, w.shape) for w in model.get_weights()])
    path = str(tmp_path_factory.mktemp("ncf") / "model")
    save_model(model, spec, path)
    return path, model


def test_saved_model_round_trips(saved_model: tuple[str, object]) -> None:
    path, model = saved_model
    u, i = np.repeat(np.arange(12), 40), np.tile(np.arange(40), 12)
    np.testing.assert_array_equal(predict_logits(load_model(path), u, i), predict_logits(model, u, i))


def test_score_topk_matches_brute_force(spark: SparkSession, saved_model: tuple[str, object]) -> None:
    path, model = saved_model
    seen = [(u, i) for u in range(12) for i in range(0, 40, 3 + u % 4)]
    seen_df = spark.createDataFrame(seen + [(0, 99)], "user_idx int, item_idx int")  # 99: not an item
    users = spark.createDataFrame([(u,) for u in range(12)] + [(3,)], "user_idx int")  # duplicate user
    got = score_topk(users, path, 40, 5, seen_df, block=5)
    logits = predict_logits(model, np.repeat(np.arange(12), 40), np.tile(np.arange(40), 12)).reshape(12, 40)
    seen_set = set(seen)
    rows = []
    for u in range(12):
        cand = sorted((-logits[u, i], i) for i in range(40) if (u, i) not in seen_set)[:5]
        rows += [(u, i, float(1 / (1 + np.exp(s))), r + 1) for r, (s, i) in enumerate(cand)]
    expected = spark.createDataFrame(rows, got.schema)
    assertDataFrameEqual(got, expected, rtol=1e-6)
    # no seen list: every item may come back
    top1 = score_topk(users, path, 40, 1, None).orderBy("user_idx").select("item_idx").toPandas().item_idx
    np.testing.assert_array_equal(top1.to_numpy(), logits.argmax(axis=1))


def test_score_topk_does_not_depend_on_how_the_users_are_partitioned(
    spark: SparkSession, tmp_path: Path
) -> None:
    """TensorFlow's products give other bits for a user scored in a batch of another shape, so the
    batches are fixed by user id: a re-run under another session (spark-submit, other partitions)
    writes the same scores bit for bit."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(3)
    spec = NcfSpec(n_users=300, n_items=120, mf_dim=8, mlp_layers=[16, 8], l2=0.0)
    model = build_model(spec)
    model.set_weights([w + np.random.default_rng(4).normal(0, 0.3, w.shape) for w in model.get_weights()])
    save_model(model, spec, str(tmp_path / "model"))
    ids = np.random.default_rng(5).permutation(300)
    seen = spark.createDataFrame([(int(u), int(u) % 120) for u in ids], "user_idx int, item_idx int")
    runs = [
        score_topk(
            spark.createDataFrame([(int(u),) for u in order], "user_idx int").repartition(parts),
            str(tmp_path / "model"), 120, 10, seen, block=64,
        )
        for order, parts in ((np.arange(300), 1), (ids, 5))
    ]  # fmt: skip
    assertDataFrameEqual(runs[0], runs[1], rtol=0.0, atol=0.0)


def test_score_pairs_adds_the_probability(spark: SparkSession, saved_model: tuple[str, object]) -> None:
    path, model = saved_model
    pairs = spark.createDataFrame(
        [(u, (u * 7) % 40, f"r{u}") for u in range(12)], "user_idx int, item_idx int, tag string"
    )
    got = score_pairs(pairs, path)
    logits = predict_logits(model, np.arange(12), (np.arange(12) * 7) % 40)
    expected = spark.createDataFrame(
        [(u, (u * 7) % 40, f"r{u}", float(1 / (1 + np.exp(-logits[u])))) for u in range(12)], got.schema
    )
    assertDataFrameEqual(got, expected, rtol=1e-6)
    assert got.where(F.col("score").isNull()).count() == 0
