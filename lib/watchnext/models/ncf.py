"""NeuMF, GMF and MLP (He et al., "Neural Collaborative Filtering", WWW 2017) in tf-keras.

The builders know nothing of Horovod or Spark: :mod:`watchnext.models.ncf_train` wraps them in a
distributed training loop. Inputs are the dense ``user_idx`` / ``item_idx`` of the ingest index; the
output is one logit per pair (``sigmoid(logit)`` = the predicted probability of an interaction).

* **GMF**: ``h . (p_u * q_i)``, with ``p_u, q_i`` of size ``mf_dim``.
* **MLP**: user and item embeddings of ``mlp_layers[0] / 2`` each, concatenated, then ReLU layers of
  sizes ``mlp_layers[1:]`` (the paper's tower, e.g. 64 -> 32 -> 16 -> 8).
* **NeuMF**: both towers with their own embeddings, the last GMF and MLP vectors concatenated into
  one prediction layer. :func:`init_neumf_from_pretrained` sets it from a trained GMF and MLP with the
  paper's trade-off ``alpha`` (Section 3.4.1).

L2 regularisation is on the looked-up embeddings (Keras activity regularisation, which is averaged
over the batch), so its weight is per sample and independent of the catalogue size.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Keras 2 API: Keras 3 breaks Horovod (STACK.md)

if TYPE_CHECKING:
    import tf_keras

ModelKind = Literal["neumf", "gmf", "mlp"]
USER_INPUT = "user_idx"
ITEM_INPUT = "item_idx"


@dataclass(frozen=True)
class NcfSpec:
    """Everything needed to rebuild the network (saved beside the weights)."""

    n_users: int
    n_items: int
    model: ModelKind = "neumf"
    mf_dim: int = 32
    mlp_layers: list[int] = field(default_factory=lambda: [128, 64, 32])
    dropout: float = 0.0
    l2: float = 1e-6

    def __post_init__(self) -> None:
        if self.n_users < 1 or self.n_items < 1:
            raise ValueError(f"n_users and n_items must be >= 1, got {self.n_users}, {self.n_items}")
        if self.model not in ("neumf", "gmf", "mlp"):
            raise ValueError(f"model must be neumf, gmf or mlp, got {self.model!r}")
        if not self.mlp_layers or self.mlp_layers[0] % 2 or min(self.mlp_layers) < 1:
            raise ValueError(f"mlp_layers must be positive with an even first size, got {self.mlp_layers}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NcfSpec:
        return cls(**{**d, "mlp_layers": list(d["mlp_layers"])})


def _keras() -> Any:
    import tensorflow as tf

    return tf.keras


def build_model(spec: NcfSpec) -> tf_keras.Model:
    """The network of ``spec.model``: inputs ``[user_idx, item_idx]`` (int32), ``(batch, 1)`` logits out."""
    keras = _keras()
    layers = keras.layers

    def embed(name: str, n: int, dim: int, ids: Any) -> Any:
        # The paper's N(0, 0.01); one initializer per table (a reused unseeded one repeats its values).
        init = keras.initializers.RandomNormal(stddev=0.01)
        e = layers.Embedding(n, dim, embeddings_initializer=init, name=name)(ids)
        e = layers.Flatten(name=f"{name}_flat")(e)
        return layers.ActivityRegularization(l2=spec.l2, name=f"{name}_l2")(e) if spec.l2 else e

    user = keras.Input(shape=(1,), dtype="int32", name=USER_INPUT)
    item = keras.Input(shape=(1,), dtype="int32", name=ITEM_INPUT)
    towers: list[Any] = []
    if spec.model in ("neumf", "gmf"):
        p = embed("gmf_user", spec.n_users, spec.mf_dim, user)
        q = embed("gmf_item", spec.n_items, spec.mf_dim, item)
        towers.append(layers.Multiply(name="gmf")([p, q]))
    if spec.model in ("neumf", "mlp"):
        half = spec.mlp_layers[0] // 2
        x = layers.Concatenate(name="mlp_concat")(
            [embed("mlp_user", spec.n_users, half, user), embed("mlp_item", spec.n_items, half, item)]
        )
        for j, units in enumerate(spec.mlp_layers[1:]):
            x = layers.Dense(units, activation="relu", name=f"mlp_dense_{j}")(x)
            if spec.dropout:
                x = layers.Dropout(spec.dropout, name=f"mlp_dropout_{j}")(x)
        towers.append(x)
    top = towers[0] if len(towers) == 1 else layers.Concatenate(name="neumf_concat")(towers)
    out = layers.Dense(1, kernel_initializer="lecun_uniform", name="prediction")(top)
    return keras.Model(inputs=[user, item], outputs=out, name=spec.model)


def init_neumf_from_pretrained(
    neumf: tf_keras.Model, gmf: tf_keras.Model, mlp: tf_keras.Model, alpha: float = 0.5
) -> None:
    """Copy the pre-trained towers into ``neumf``; its prediction layer becomes
    ``[alpha h_gmf, (1 - alpha) h_mlp]`` (and the bias mixed alike)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    names = {layer.name for layer in neumf.layers}
    for src in (gmf, mlp):
        for layer in src.layers:
            if layer.weights and layer.name != "prediction":
                if layer.name not in names:
                    raise ValueError(f"NeuMF has no layer {layer.name!r}: the pre-trained shapes differ")
                neumf.get_layer(layer.name).set_weights(layer.get_weights())
    (kg, bg), (km, bm) = gmf.get_layer("prediction").get_weights(), mlp.get_layer("prediction").get_weights()
    import numpy as np

    neumf.get_layer("prediction").set_weights(
        [np.concatenate([alpha * kg, (1 - alpha) * km], axis=0), alpha * bg + (1 - alpha) * bm]
    )


def candidate_logits(
    model: tf_keras.Model,
    spec: NcfSpec,
    users: Any,
    cand: Any,
    *,
    training: bool = False,
    project_items: bool | None = None,
) -> tuple[Any, Any]:
    """Logits ``(B, W)`` of each of ``users`` ``(B,)`` against its ``W`` candidate items ``cand``
    ``(B, W)``, and the L2 activity loss: the same function and loss as ``model`` called on the
    ``B x W`` flat pairs (the training step's positive and negatives, or a block of the catalogue).

    It costs less: each user's embeddings are looked up once, not ``W`` times, and the first MLP
    layer (``relu([u, i] K + b)`` = ``relu(u K_u + i K_i + b)``) projects each user once and each item
    once per call (``project_items``: the whole item table, cheaper when the call holds more pairs
    than the catalogue has items; else the looked-up rows; None: decided from ``cand``'s static
    shape), leaving an add and a ReLU per pair instead of a ``2h x units`` product.
    """
    import tensorflow as tf

    width = tf.shape(cand)[1]
    n_pairs = tf.cast(tf.shape(users)[0] * width, tf.float32)
    if project_items is None:
        static = cand.shape[0] is not None and cand.shape[1] is not None
        project_items = static and spec.n_items <= cand.shape[0] * cand.shape[1]

    def table(name: str) -> Any:
        return model.get_layer(name).embeddings

    def l2_of(user_rows: Any, item_table: Any) -> Any:
        # Keras divides each lookup's activity loss by the flat batch (B x W rows); a user row is
        # repeated W times there, so its term is its squared norm over B.
        if not spec.l2:
            return 0.0
        item_sq = tf.gather(tf.reduce_sum(tf.square(item_table), axis=1), cand)
        user_sq = tf.reduce_sum(tf.square(user_rows)) * tf.cast(width, tf.float32)
        return spec.l2 * (user_sq + tf.reduce_sum(item_sq)) / n_pairs

    pred = model.get_layer("prediction")
    h, offset = pred.kernel[:, 0], 0  # the prediction layer, split by tower: no (B, W, d) concatenation
    logits: Any = pred.bias[0]
    loss: Any = 0.0
    if spec.model in ("neumf", "gmf"):
        p = tf.gather(table("gmf_user"), users)
        q = tf.gather(table("gmf_item"), cand)
        logits += tf.einsum("bwd,bd->bw", q, p * h[: spec.mf_dim])  # h . (p * q) per pair
        loss += l2_of(p, table("gmf_item"))
        offset = spec.mf_dim
    if spec.model in ("neumf", "mlp"):
        half = spec.mlp_layers[0] // 2
        u, items = tf.gather(table("mlp_user"), users), table("mlp_item")
        loss += l2_of(u, items)
        if len(spec.mlp_layers) > 1:
            first = model.get_layer("mlp_dense_0")
            k_user, k_item = first.kernel[:half], first.kernel[half:]
            if project_items:
                item_part = tf.gather(tf.matmul(items, k_item), cand)  # the table, projected once
            else:
                item_part = tf.tensordot(tf.gather(items, cand), k_item, axes=1)
            x = tf.nn.relu(tf.matmul(u, k_user)[:, None, :] + item_part + first.bias)
            for j in range(len(spec.mlp_layers) - 1):
                if j:
                    x = model.get_layer(f"mlp_dense_{j}")(x)
                if spec.dropout:
                    x = model.get_layer(f"mlp_dropout_{j}")(x, training=training)
            logits += tf.tensordot(x, h[offset:], axes=1)
        else:  # no hidden layer: the concatenated embeddings feed the prediction directly
            logits += tf.matmul(u, h[offset : offset + half, None])  # (B, 1): broadcast over W
            logits += tf.tensordot(tf.gather(items, cand), h[offset + half :], axes=1)
    return logits, loss


def predict_logits(model: tf_keras.Model, users: Sequence[int] | Any, items: Sequence[int] | Any) -> Any:
    """Logits of the pairs ``(users[j], items[j])`` as a float32 numpy vector (no Keras predict loop)."""
    import numpy as np
    import tensorflow as tf

    u = tf.convert_to_tensor(np.asarray(users, dtype=np.int32).reshape(-1, 1))
    i = tf.convert_to_tensor(np.asarray(items, dtype=np.int32).reshape(-1, 1))
    return model([u, i], training=False).numpy().reshape(-1)
