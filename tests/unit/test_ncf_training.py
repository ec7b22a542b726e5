"""NCF trained for real with Horovod on Spark (Gloo ranks as Spark tasks) on planted-cluster data."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession

from watchnext.models import ncf_data
from watchnext.models.ncf import NcfSpec
from watchnext.models.ncf_score import load_model, score_topk
from watchnext.models.ncf_train import TrainParams, fit

pytestmark = [pytest.mark.spark, pytest.mark.horovod, pytest.mark.mlflow, pytest.mark.slow]

N_CLUSTERS, PER_CLUSTER, N_USERS = 4, 40, 160
N_ITEMS = N_CLUSTERS * PER_CLUSTER
# 100 candidates (1 held out + 99 negatives): a random ranking hits the top 10 with probability 0.10.
HR_THRESHOLD = 0.5
SPEC = NcfSpec(n_users=N_USERS, n_items=N_ITEMS, mf_dim=8, mlp_layers=[16, 8], l2=0.0)


def _cluster(item: int) -> int:
    return item // PER_CLUSTER


def _planted(seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """User u likes cluster u % 4: 20 of its 40 items (the last one held out), plus 2 random others."""
    rng = np.random.default_rng(seed)
    train, hold = [], []
    for u in range(N_USERS):
        c = u % N_CLUSTERS
        liked = rng.choice(np.arange(c * PER_CLUSTER, (c + 1) * PER_CLUSTER), 20, replace=False)
        noise = rng.choice(
            np.setdiff1d(np.arange(N_ITEMS), np.arange(c * PER_CLUSTER, (c + 1) * PER_CLUSTER)), 2
        )
        train += [(u, int(i)) for i in [*liked[:-1], *noise]]
        hold.append((u, int(liked[-1])))
    cols = ["user_idx", "item_idx"]
    return pd.DataFrame(train, columns=cols), pd.DataFrame(hold, columns=cols)


@pytest.fixture(scope="module")
def planted(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tmp = tmp_path_factory.mktemp("ncf_data")
    train_pdf, hold_pdf = _planted()
    train = spark.createDataFrame(train_pdf, "user_idx int, item_idx int")
    hold = spark.createDataFrame(hold_pdf, "user_idx int, item_idx int")
    rows = ncf_data.training_rows(train, N_ITEMS, num_negatives=4, rounds=3, seed=11)
    data = ncf_data.write_shards(rows, str(tmp / "train"), shards=8, seed=11)
    ev = ncf_data.sampled_eval_rows(hold, train.unionByName(hold), N_ITEMS, 99, seed=12)
    evaluation = ncf_data.write_shards(ev, str(tmp / "eval"), shards=8, seed=11, by_user=True)
    return {"train": train, "train_pdf": train_pdf, "data": data, "eval": evaluation}


def _mlflow_run(tmp_path: Path) -> tuple[str, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("ncf-test", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client.create_run(exp).info.run_id


def test_two_rank_training_learns_and_only_rank0_writes(
    spark: SparkSession, planted: dict[str, object], tmp_path: Path
) -> None:
    uri, run_id = _mlflow_run(tmp_path)
    params = TrainParams(epochs=6, batch_size=32, learning_rate=0.005, seed=3)
    res = fit(
        spark,
        SPEC,
        params,
        planted["data"],
        str(tmp_path / "work"),
        num_proc=2,
        eval_data=planted["eval"],
        tracking_uri=uri,
        run_id=run_id,
        prefix="offline",
    )
    assert [r.rank for r in res.ranks] == [0, 1] and all(r.size == 2 for r in res.ranks)
    assert all(r.device.startswith("CPU") for r in res.ranks)
    for r in res.ranks:  # each rank's own loss falls
        assert len(r.losses) == 6 and r.losses[-1] < 0.7 * r.losses[0], r.losses
        assert r.steps_per_epoch == res.ranks[0].steps_per_epoch  # same allreduce count
    # both ranks hold part of the data, and together all of it
    assert sum(r.samples for r in res.ranks) == planted["data"].rows and min(r.samples for r in res.ranks) > 0
    r0 = res.rank0
    assert r0.eval_users == N_USERS
    assert r0.hr[-1] >= HR_THRESHOLD and r0.hr[-1] > r0.hr[0], r0.hr
    assert res.ranks[1].hr == r0.hr  # metrics summed over both ranks' users

    # rank 0 alone checkpoints, saves and logs; every metric step is logged exactly once
    assert res.ranks[1].wrote == [] and not res.ranks[1].mlflow_logged
    assert r0.mlflow_logged and len([w for w in r0.wrote if "checkpoints" in w]) == 6
    assert sorted(
        p.name for p in (tmp_path / "work" / "checkpoints").iterdir() if p.name.startswith("ckpt-")
    )[-1].startswith("ckpt-6")
    client = mlflow.MlflowClient(tracking_uri=uri)
    losses = client.get_metric_history(run_id, "offline.loss")
    assert [m.step for m in sorted(losses, key=lambda m: m.step)] == list(range(6))
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx(r0.global_losses)
    hr = client.get_metric_history(run_id, "offline.val_hr_at_10")
    assert [m.value for m in sorted(hr, key=lambda m: m.step)] == pytest.approx(r0.hr)
    run = client.get_run(run_id)
    assert run.data.params["offline.num_proc"] == "2" and run.data.params["offline.model"] == "neumf"
    assert float(run.data.params["offline.effective_learning_rate"]) == pytest.approx(0.01)
    artifacts = {a.path for a in client.list_artifacts(run_id, "offline/model")}
    assert "offline/model/spec.json" in artifacts


def test_one_rank_is_reproducible_and_recommends_the_users_cluster(
    spark: SparkSession, planted: dict[str, object], tmp_path: Path
) -> None:
    params = TrainParams(epochs=5, batch_size=32, learning_rate=0.005, seed=4)
    runs = [
        fit(
            spark,
            SPEC,
            params,
            planted["data"],
            str(tmp_path / f"w{j}"),
            num_proc=1,
            eval_data=planted["eval"],
        )
        for j in range(2)
    ]
    assert runs[0].rank0.losses == runs[1].rank0.losses  # bit-identical for a fixed seed
    assert runs[0].rank0.hr == runs[1].rank0.hr
    w0, w1 = (load_model(r.model_dir).get_weights() for r in runs)
    assert all(np.array_equal(a, b) for a, b in zip(w0, w1, strict=True))

    # a planted user's top 10 unseen items all come from the user's own cluster
    train: DataFrame = planted["train"]
    users = [0, 1, 2, 3, 41, 42]
    recs = score_topk(
        train.where(train.user_idx.isin(users)).select("user_idx"), runs[0].model_dir, N_ITEMS, 10, train
    ).toPandas()
    assert sorted(recs.user_idx.unique()) == users
    for u, g in recs.groupby("user_idx"):
        assert len(g) == 10, (u, len(g))
        assert {_cluster(i) for i in g.item_idx} == {u % N_CLUSTERS}, (u, g.item_idx.tolist())
    seen = planted["train_pdf"]
    pairs = set(zip(seen.user_idx, seen.item_idx, strict=True))
    assert not set(zip(recs.user_idx, recs.item_idx, strict=True)) & pairs


def test_pretrained_neumf_trains_from_gmf_and_mlp(
    spark: SparkSession, planted: dict[str, object], tmp_path: Path
) -> None:
    params = TrainParams(epochs=2, batch_size=64, learning_rate=0.005, seed=5)
    res = fit(
        spark,
        SPEC,
        params,
        planted["data"],
        str(tmp_path / "w"),
        num_proc=2,
        eval_data=planted["eval"],
        pretrain={"epochs": 3, "alpha": 0.5},
    )
    # the pre-trained towers were saved and NeuMF started from them: already good after 2 epochs
    assert (tmp_path / "w" / "pretrain_gmf" / "spec.json").exists()
    assert (tmp_path / "w" / "pretrain_mlp" / "spec.json").exists()
    assert res.rank0.hr[0] >= HR_THRESHOLD, res.rank0.hr
