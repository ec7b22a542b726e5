"""Distributed NCF training with Horovod on Spark, and batch scoring inside Spark.

The driver writes the training rows as Parquet shards (:mod:`watchnext.models.ncf_data`) and starts
``num_proc`` Horovod ranks as Spark tasks with ``horovod.spark.run`` (Gloo on CPU; NCCL when Horovod
was built with it on GPU workers). Each rank (:func:`train_worker`):

* pins itself to its local GPU (``hvd.local_rank()``) when GPUs exist, otherwise limits TensorFlow to
  its share of the cores;
* reads only its own shards, each epoch the round ``epoch % rounds``, shuffled with a seeded RNG;
* scores each positive and its sampled negatives and takes either a softmax cross-entropy over them
  (``loss="softmax"``, the default: it ranks the whole catalogue far better than the pointwise loss)
  or the paper's pointwise log loss (``loss="bce"``);
* builds the model with the Horovod-free builder, scales the learning rate by the number of ranks,
  wraps the tape in ``hvd.DistributedGradientTape`` and broadcasts rank 0's variables (and, after the
  first step, the optimizer's) so every rank starts from the same state;
* runs the same number of steps as every other rank (the largest share, wrapping around), so no
  allreduce waits on a rank that has finished;
* evaluates the paper's sampled protocol on its share of the evaluation users and sums hits over the
  ranks (HR@K, NDCG@K of the held-out item among the sampled negatives).

Rank 0 alone writes checkpoints (``tf.train.CheckpointManager``), the final weights and
``spec.json``, and logs params, per-epoch metrics and the model files to the MLflow run given by the
driver. The ranks' histories come back to the driver as the return value of ``horovod.spark.run``.

Saving, loading and batch scoring of the trained model: :mod:`watchnext.models.ncf_score`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
from pyspark.sql import SparkSession

from watchnext.constants import COL_ITEM_IDX, COL_USER_IDX
from watchnext.models.ncf import NcfSpec
from watchnext.models.ncf_data import COL_LABEL, COL_NEGATIVES, ShardedData
from watchnext.models.ncf_score import chunked_scores, load_model, save_model

log = logging.getLogger(__name__)


LossKind = Literal["softmax", "bce"]


@dataclass(frozen=True)
class TrainParams:
    epochs: int = 20
    batch_size: int = 1024  # positives per rank and step (each scored with its negatives)
    # softmax: cross-entropy of the positive against its sampled negatives (sampled softmax);
    # bce: the paper's pointwise log loss over the positive (label 1) and its negatives (label 0).
    loss: LossKind = "softmax"
    learning_rate: float = 0.001
    scale_lr: bool = True
    seed: int = 42
    eval_k: int = 10
    threads: int | None = None  # CPU ranks: TF intra-op threads
    # Allreduce embedding gradients as dense tensors instead of allgathering their sparse slices:
    # one fixed-size collective per step, faster while the tables are small enough to send whole.
    sparse_as_dense: bool = True


@dataclass(frozen=True)
class TrainJob:
    """What one Horovod run trains; pickled to every rank."""

    spec: dict[str, Any]
    params: TrainParams
    train: ShardedData
    model_dir: str
    eval: ShardedData | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    # MLflow: rank 0 logs to this run; keys are prefixed ("offline.loss", ...).
    tracking_uri: str | None = None
    run_id: str | None = None
    prefix: str = "ncf"
    # NeuMF initialised from pre-trained GMF and MLP model dirs (the paper's pre-training).
    init_from: dict[str, Any] | None = None
    # Fault injection (tests/e2e/test_faults.py): (rank, epoch) at whose start that rank dies abruptly.
    crash_at: tuple[int, int] | None = None


@dataclass
class RankResult:
    rank: int
    size: int
    device: str
    samples: int  # positives this rank holds per round
    pairs_per_row: int  # (user, item) pairs scored per positive: 1 + negatives
    steps_per_epoch: int
    losses: list[float] = field(default_factory=list)  # this rank's mean training loss per epoch
    global_losses: list[float] = field(default_factory=list)  # averaged over the ranks
    hr: list[float] = field(default_factory=list)  # sampled HR@K per epoch (all ranks' users)
    ndcg: list[float] = field(default_factory=list)
    eval_users: int = 0
    train_seconds: float = 0.0
    wrote: list[str] = field(default_factory=list)  # files this rank wrote (only rank 0 writes)
    mlflow_logged: bool = False


# ------------------------------------------------------------------------------------ in each rank
def _configure_devices(tf: Any, hvd: Any, threads: int | None) -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        for g in gpus:
            tf.config.experimental.set_memory_growth(g, True)
        gpu = gpus[hvd.local_rank() % len(gpus)]
        tf.config.set_visible_devices(gpu, "GPU")
        return f"GPU:{hvd.local_rank() % len(gpus)}"
    n = threads or max(1, (os.cpu_count() or 1) // hvd.local_size())
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    return f"CPU ({n} threads)"


def sampled_ranks(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per user (rows sorted by user, one label-1 row each): the number of its negatives that score
    at least as high as its positive, i.e. the positive's 0-based rank with ties counted against it."""
    uniq, start = np.unique(users, return_index=True)
    group = np.searchsorted(uniq, users)
    pos_rows = np.flatnonzero(labels == 1.0)
    if len(pos_rows) != len(uniq) or not np.array_equal(np.unique(users[pos_rows]), uniq):
        raise ValueError("every evaluation user needs exactly one positive row")
    pos_score = np.empty(len(uniq), dtype=np.float64)
    pos_score[group[pos_rows]] = scores[pos_rows]
    ahead = (labels == 0.0) & (scores >= pos_score[group])
    return np.bincount(group, weights=ahead.astype(np.float64), minlength=len(uniq)).astype(np.int64)


def hit_ndcg(ranks: np.ndarray, k: int) -> tuple[float, float]:
    """Sums over users of HR@k and NDCG@k for 0-based ranks of a single relevant item."""
    hit = ranks < k
    return float(hit.sum()), float((hit / np.log2(ranks + 2.0)).sum())


def train_worker(job: TrainJob) -> RankResult:
    """The function every Horovod rank runs (see the module docstring)."""
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import horovod.tensorflow as hvd
    import tensorflow as tf

    from watchnext.models.ncf import build_model, candidate_logits, init_neumf_from_pretrained
    from watchnext.models.ncf_data import iter_batches, read_rank_shards

    hvd.init()
    rank, size = hvd.rank(), hvd.size()
    p = job.params
    device = _configure_devices(tf, hvd, p.threads)
    tf.keras.utils.set_random_seed(p.seed)  # identical initial weights; broadcast makes sure anyway
    tf.config.experimental.enable_op_determinism()

    spec = NcfSpec.from_dict(job.spec)
    model = build_model(spec)
    if job.init_from:
        gmf, mlp = (load_model(job.init_from[k]) for k in ("gmf", "mlp"))
        init_neumf_from_pretrained(model, gmf, mlp, job.init_from.get("alpha", 0.5))
    lr = p.learning_rate * (size if p.scale_lr else 1)
    opt = tf.keras.optimizers.Adam(learning_rate=lr)
    epoch_var = tf.Variable(0, dtype=tf.int64, trainable=False)
    result = RankResult(rank=rank, size=size, device=device, samples=0, pairs_per_row=1, steps_per_epoch=0)
    if p.loss not in ("softmax", "bce"):
        raise ValueError(f"loss must be softmax or bce, got {p.loss!r}")

    manager = None
    if rank == 0 and job.checkpoint_dir:
        ckpt = tf.train.Checkpoint(model=model, optimizer=opt, epoch=epoch_var)
        manager = tf.train.CheckpointManager(ckpt, job.checkpoint_dir, max_to_keep=2)
        if job.resume and manager.latest_checkpoint:
            ckpt.restore(manager.latest_checkpoint)
    start_epoch = int(hvd.broadcast(tf.constant(int(epoch_var.numpy()), tf.int64), 0, name="start").numpy())

    @tf.function(reduce_retracing=True)
    def step(u: Any, cand: Any) -> Any:
        # u: (B,) users; cand: (B, 1 + K) items, the positive first, then its negatives.
        # Each user against its candidates (models/ncf.py): the model's function and L2 loss, each
        # user and item projected once; the item table itself when the step holds more pairs.
        width = tf.shape(cand)[1]
        project = cand.shape[1] is not None and spec.n_items <= p.batch_size * cand.shape[1]
        with tf.GradientTape() as tape:
            logits, l2 = candidate_logits(model, spec, u, cand, training=True, project_items=project)
            if p.loss == "softmax":
                target = tf.zeros(tf.shape(u), tf.int32)  # the positive is column 0
                loss = tf.reduce_mean(
                    tf.nn.sparse_softmax_cross_entropy_with_logits(labels=target, logits=logits)
                )
            else:
                y = tf.one_hot(tf.zeros(tf.shape(u), tf.int32), width)
                loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits))
            loss += l2
        tape = hvd.DistributedGradientTape(tape, sparse_as_dense=p.sparse_as_dense)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=False))
        return loss

    @tf.function(reduce_retracing=True)
    def logits_of(u: Any, i: Any) -> Any:
        return tf.reshape(model([u, i], training=False), [-1])

    hvd.broadcast_variables(model.variables, root_rank=0)

    # Every rank runs the largest rank's number of steps (allreduce needs all of them each step).
    first = read_rank_shards(job.train, rank, size, start_epoch % job.train.rounds)
    result.samples = len(first[COL_USER_IDX])
    result.pairs_per_row = 1 + first[COL_NEGATIVES].shape[1]
    counts = hvd.allgather(tf.constant([result.samples], tf.int64)).numpy()
    if counts.min() == 0:
        raise RuntimeError(f"a Horovod rank has no training rows (rows per rank {counts.tolist()})")
    steps = math.ceil(int(counts.max()) / p.batch_size)
    result.steps_per_epoch = steps

    evaluation = read_rank_shards(job.eval, rank, size) if job.eval is not None else None
    t0 = time.perf_counter()
    for epoch in range(start_epoch, p.epochs):
        if job.crash_at == (rank, epoch):
            os._exit(17)  # a worker killed mid-training: no exception, no cleanup
        data = (
            first
            if epoch == start_epoch
            else read_rank_shards(job.train, rank, size, epoch % job.train.rounds)
        )
        rng = np.random.default_rng([p.seed, rank, epoch])
        total, n_steps = 0.0, 0
        for b in iter_batches(data, p.batch_size, steps, rng):
            cand = np.concatenate([b[COL_ITEM_IDX][:, None], b[COL_NEGATIVES]], axis=1)
            loss = step(tf.constant(b[COL_USER_IDX]), tf.constant(cand))
            if epoch == start_epoch and n_steps == 0:
                hvd.broadcast_variables(opt.variables(), root_rank=0)
            total += float(loss)
            n_steps += 1
        local = total / max(n_steps, 1)
        result.losses.append(local)
        result.global_losses.append(float(hvd.allreduce(tf.constant(local), op=hvd.Average).numpy()))
        if evaluation is not None:
            sums = np.zeros(3)
            if len(evaluation[COL_LABEL]):
                scores = chunked_scores(logits_of, tf, evaluation[COL_USER_IDX], evaluation[COL_ITEM_IDX])
                ranks = sampled_ranks(evaluation[COL_USER_IDX], evaluation[COL_LABEL], scores)
                sums = np.array([*hit_ndcg(ranks, p.eval_k), len(ranks)])
            hits, ndcg, users = hvd.allreduce(tf.constant(sums), op=hvd.Sum, name=f"eval{epoch}").numpy()
            result.eval_users = int(users)
            result.hr.append(hits / max(users, 1.0))
            result.ndcg.append(ndcg / max(users, 1.0))
        epoch_var.assign(epoch + 1)
        if manager is not None:
            result.wrote.append(manager.save(checkpoint_number=epoch + 1))
    result.train_seconds = time.perf_counter() - t0

    if rank == 0:
        result.wrote.extend(save_model(model, spec, job.model_dir))
        if job.tracking_uri and job.run_id:
            _log_mlflow(job, result)
            result.mlflow_logged = True
    hvd.join()  # no rank leaves before rank 0 has saved and logged
    return result


def _log_mlflow(job: TrainJob, result: RankResult) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    if job.run_id is None:  # nothing to log to
        return
    client = MlflowClient(tracking_uri=job.tracking_uri)
    pre = job.prefix
    params = {
        **{f"{pre}.{k}": v for k, v in job.spec.items()},
        **{f"{pre}.{k}": v for k, v in asdict(job.params).items()},
    }
    params[f"{pre}.num_proc"] = result.size
    params[f"{pre}.device"] = result.device
    params[f"{pre}.effective_learning_rate"] = job.params.learning_rate * (
        result.size if job.params.scale_lr else 1
    )
    now = int(time.time() * 1000)
    metrics = []
    for e, loss in enumerate(result.global_losses):
        metrics.append(Metric(f"{pre}.loss", loss, now, e))
    for name, values in (
        (f"{pre}.val_hr_at_{job.params.eval_k}", result.hr),
        (f"{pre}.val_ndcg_at_{job.params.eval_k}", result.ndcg),
    ):
        metrics.extend(Metric(name, v, now, e) for e, v in enumerate(values))
    metrics.append(
        Metric(f"{pre}.train_samples_per_second", samples_per_second(result, job.params.batch_size), now, 0)
    )
    client.log_batch(
        job.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in sorted(params.items())]
    )
    if "://" not in job.model_dir or job.model_dir.startswith("file://"):
        client.log_artifacts(job.run_id, job.model_dir.removeprefix("file://"), f"{pre}/model")


def samples_per_second(r: RankResult, batch_size: int) -> float:
    """Training samples ((user, item) pairs scored) per second over all ranks: each rank runs
    steps x batch positives an epoch, each with its negatives."""
    pairs = r.steps_per_epoch * batch_size * r.pairs_per_row * r.size * len(r.losses)
    return pairs / max(r.train_seconds, 1e-9)


# ---------------------------------------------------------------------------------------- driver
@dataclass
class FitResult:
    model_dir: str
    ranks: list[RankResult]
    seconds: float

    @property
    def rank0(self) -> RankResult:
        return next(r for r in self.ranks if r.rank == 0)

    def summary(self) -> dict[str, Any]:
        r0 = self.rank0
        out: dict[str, Any] = {
            "num_proc": r0.size,
            "device": r0.device,
            "epochs": len(r0.losses),
            "final_loss": round(r0.global_losses[-1], 5) if r0.global_losses else None,
            "seconds": round(self.seconds, 2),
            "train_seconds": round(r0.train_seconds, 2),
        }
        if r0.hr:
            out.update(hr=round(r0.hr[-1], 4), ndcg=round(r0.ndcg[-1], 4), eval_users=r0.eval_users)
        return out


def run_training(spark: SparkSession, job: TrainJob, num_proc: int, start_timeout: int = 300) -> FitResult:
    """Train ``job`` on ``num_proc`` Horovod ranks started as Spark tasks (the active session's)."""
    import horovod.spark

    if num_proc < 1:
        raise ValueError(f"num_proc must be >= 1, got {num_proc}")
    slots = spark.sparkContext.defaultParallelism
    if num_proc > slots:
        raise ValueError(f"num_proc={num_proc} but Spark has {slots} task slots: Horovod needs one per rank")
    t0 = time.perf_counter()
    results = horovod.spark.run(
        train_worker,
        args=(job,),
        num_proc=num_proc,
        use_gloo=True,
        start_timeout=start_timeout,
        verbose=0,
        prefix_output_with_timestamp=False,
    )
    ranks = sorted(results, key=lambda r: r.rank)
    return FitResult(model_dir=job.model_dir, ranks=ranks, seconds=time.perf_counter() - t0)


def fit(
    spark: SparkSession,
    spec: NcfSpec,
    params: TrainParams,
    train: ShardedData,
    work_dir: str,
    *,
    num_proc: int,
    eval_data: ShardedData | None = None,
    pretrain: dict[str, Any] | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    prefix: str = "ncf",
    start_timeout: int = 300,
) -> FitResult:
    """Train ``spec`` (optionally after pre-training GMF and MLP: ``{"epochs": E, "alpha": a}``); the
    model lands in ``work_dir/model``, rank 0's checkpoints in ``work_dir/checkpoints``."""
    work = work_dir.rstrip("/")
    base = TrainJob(
        spec=spec.to_dict(),
        params=params,
        train=train,
        eval=eval_data,
        model_dir=f"{work}/model",
        checkpoint_dir=f"{work}/checkpoints",
        tracking_uri=tracking_uri,
        run_id=run_id,
        prefix=prefix,
    )
    if pretrain and spec.model == "neumf":
        dirs = {}
        for kind in ("gmf", "mlp"):
            sub = replace(
                base,
                spec={**base.spec, "model": kind},
                params=replace(params, epochs=int(pretrain["epochs"])),
                model_dir=f"{work}/pretrain_{kind}",
                checkpoint_dir=f"{work}/pretrain_{kind}_checkpoints",
                prefix=f"{prefix}.pretrain_{kind}",
            )
            run_training(spark, sub, num_proc, start_timeout)
            dirs[kind] = sub.model_dir
        base = replace(base, init_from={**dirs, "alpha": float(pretrain.get("alpha", 0.5))})
    return run_training(spark, base, num_proc, start_timeout)
