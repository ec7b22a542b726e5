"""The trained NCF model on disk and in Spark: save, load, and batch scoring in ``mapInPandas``.

Rank 0 of the Horovod training saves the weights (a TF checkpoint prefix) and ``spec.json`` under the
model dir (any ``tf.io.gfile`` location); :func:`load_model` rebuilds the network from the spec.
Batch scoring (:func:`score_topk`, :func:`score_pairs`) runs the saved model inside ``mapInPandas``,
loaded once per Python worker.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from watchnext.checks import require_columns
from watchnext.constants import COL_ITEM_IDX, COL_RANK, COL_SCORE, COL_USER_IDX
from watchnext.models.ncf import NcfSpec

SPEC_FILE = "spec.json"
WEIGHTS = "weights"  # TF checkpoint prefix under the model dir (works on any tf.io.gfile filesystem)


def chunked_scores(
    fn: Any, tf: Any, users: np.ndarray, items: np.ndarray, chunk: int = 1 << 18
) -> np.ndarray:
    """``fn(users, items)`` (a model's logits) in chunks of ``chunk`` pairs, as float64."""
    out = [
        fn(
            tf.constant(users[s : s + chunk].reshape(-1, 1)), tf.constant(items[s : s + chunk].reshape(-1, 1))
        ).numpy()
        for s in range(0, len(users), chunk)
    ]
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def save_model(model: Any, spec: NcfSpec, model_dir: str) -> list[str]:
    """Write ``model``'s weights and ``spec`` (JSON) under ``model_dir`` (any ``tf.io.gfile`` location),
    for :func:`load_model`; returns the paths written."""
    import tensorflow as tf

    tf.io.gfile.makedirs(model_dir)
    prefix = f"{model_dir.rstrip('/')}/{WEIGHTS}"
    model.save_weights(prefix, save_format="tf")
    spec_path = f"{model_dir.rstrip('/')}/{SPEC_FILE}"
    with tf.io.gfile.GFile(spec_path, "w") as f:
        f.write(json.dumps(spec.to_dict(), sort_keys=True))
    return [prefix, spec_path]


def _load(model_dir: str) -> tuple[Any, NcfSpec]:
    """The model saved by rank 0 in ``model_dir``, and its spec."""
    import tensorflow as tf

    from watchnext.models.ncf import build_model

    with tf.io.gfile.GFile(f"{model_dir.rstrip('/')}/{SPEC_FILE}") as f:
        spec = NcfSpec.from_dict(json.loads(f.read()))
    model = build_model(spec)
    model.load_weights(f"{model_dir.rstrip('/')}/{WEIGHTS}").expect_partial()
    return model, spec


def load_model(model_dir: str) -> Any:
    """Rebuild the saved network and load its weights (public: tests, notebooks)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    return _load(model_dir)[0]


_MODELS: dict[str, tuple[Any, NcfSpec]] = {}


def _cached_model(model_dir: str) -> tuple[Any, NcfSpec]:
    """One load per Python worker process (Spark reuses workers across tasks)."""
    if model_dir not in _MODELS:
        _MODELS.clear()
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        _MODELS[model_dir] = _load(model_dir)
        import gc

        gc.freeze()  # TensorFlow's ~200k objects: out of the collection Spark runs after each task
    return _MODELS[model_dir]


def _catalogue_fn(model_dir: str, n_items: int, chunk: int = 1 << 18) -> Any:
    """``users`` (int32 numpy) -> their logits against items ``[0, n_items)``, ``(len(users), n_items)``
    float64, through :func:`~watchnext.models.ncf.candidate_logits` (each user and item projected once)."""
    import tensorflow as tf

    from watchnext.models.ncf import candidate_logits

    model, spec = _cached_model(model_dir)
    key = f"_watchnext_catalogue_{n_items}"
    fn = getattr(model, key, None)
    if fn is None:
        items = tf.range(n_items, dtype=tf.int32)

        def block(u: Any) -> Any:
            cand = tf.broadcast_to(items[None, :], [tf.shape(u)[0], n_items])
            return candidate_logits(model, spec, u, cand, project_items=True)[0]

        fn = tf.function(block, reduce_retracing=True)
        setattr(model, key, fn)
    step = max(1, chunk // n_items)  # users per call: about ``chunk`` pairs in memory at once

    def logits(users: np.ndarray) -> np.ndarray:
        out = [fn(tf.constant(users[s : s + step])).numpy() for s in range(0, len(users), step)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, n_items))

    return logits


def _logits_fn(model_dir: str) -> Any:
    import tensorflow as tf

    model, _ = _cached_model(model_dir)
    fn = getattr(model, "_watchnext_logits", None)
    if fn is None:
        fn = tf.function(lambda u, i: tf.reshape(model([u, i], training=False), [-1]), reduce_retracing=True)
        model._watchnext_logits = fn
    return lambda u, i: chunked_scores(fn, tf, u, i)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def score_pairs(pairs: DataFrame, model_dir: str, *, col_score: str = COL_SCORE) -> DataFrame:
    """``pairs`` (user_idx, item_idx, ...) with ``col_score`` = the model's probability, scored in
    ``mapInPandas`` with the model loaded once per Python worker."""
    require_columns(pairs, [COL_USER_IDX, COL_ITEM_IDX], "pairs")
    schema = T.StructType([*pairs.schema.fields, T.StructField(col_score, T.DoubleType(), False)])

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        logits = _logits_fn(model_dir)
        for pdf in batches:
            s = logits(pdf[COL_USER_IDX].to_numpy(np.int32), pdf[COL_ITEM_IDX].to_numpy(np.int32))
            yield pdf.assign(**{col_score: _sigmoid(s)})

    return pairs.mapInPandas(score, schema)


def score_topk(
    users: DataFrame, model_dir: str, n_items: int, k: int, seen: DataFrame | None = None, *, block: int = 256
) -> DataFrame:
    """Top ``k`` of the whole catalogue ``[0, n_items)`` per distinct user of ``users`` by the model's
    probability, ``seen`` (user_idx, item_idx) excluded inside the block; ties to the smaller item.
    Returns (user_idx, item_idx, score, rank).

    The users are scored in fixed blocks, ``user_idx // block``, in user order: TensorFlow's products
    give a user's logits other last bits in a batch of another shape, and the blocks a partition
    happens to hold depend on the session (its shuffle partitions, spark-submit or in process), so a
    re-run anywhere gives the same scores bit for bit."""
    from watchnext.models.topk import top_positions

    require_columns(users, [COL_USER_IDX], "users")
    if k < 1 or n_items < 1 or block < 1:
        raise ValueError(f"k, n_items and block must be >= 1, got {k}, {n_items}, {block}")
    u = users.select(F.col(COL_USER_IDX).cast("int")).distinct()
    if seen is not None:
        require_columns(seen, [COL_USER_IDX, COL_ITEM_IDX], "seen")
        lists = seen.groupBy(F.col(COL_USER_IDX).cast("int").alias(COL_USER_IDX)).agg(
            F.collect_set(F.col(COL_ITEM_IDX).cast("int")).alias("_seen")
        )
        u = u.join(lists, COL_USER_IDX, "left")
    else:
        u = u.withColumn("_seen", F.lit(None).cast("array<int>"))
    schema = T.StructType(
        [
            T.StructField(COL_USER_IDX, T.IntegerType(), False),
            T.StructField(COL_ITEM_IDX, T.IntegerType(), False),
            T.StructField(COL_SCORE, T.DoubleType(), False),
            T.StructField(COL_RANK, T.IntegerType(), False),
        ]
    )

    def score(pdf: pd.DataFrame) -> pd.DataFrame:  # one block of users
        logits = _catalogue_fn(model_dir, n_items)
        pdf = pdf.sort_values(COL_USER_IDX)
        ids = pdf[COL_USER_IDX].to_numpy(np.int32)
        mat = logits(ids)
        for row, items in enumerate(pdf["_seen"]):
            if items is not None and len(items):
                it = np.asarray(items, dtype=np.int64)
                mat[row, it[(it >= 0) & (it < n_items)]] = -np.inf
        top, vals = top_positions(mat, k)
        keep = vals > -np.inf
        ranks = np.broadcast_to(np.arange(1, top.shape[1] + 1, dtype=np.int32), top.shape)
        return pd.DataFrame(
            {
                COL_USER_IDX: np.broadcast_to(ids[:, None], top.shape)[keep],
                COL_ITEM_IDX: top[keep].astype(np.int32),
                COL_SCORE: _sigmoid(vals[keep]),
                COL_RANK: ranks[keep],
            }
        )

    blocks = u.withColumn("_block", F.floor(F.col(COL_USER_IDX) / F.lit(block)))
    return blocks.groupBy("_block").applyInPandas(score, schema)
