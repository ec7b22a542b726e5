"""The evaluate stage with an experiment enabled, on hand-built input tables in a temporary lakehouse.

The module fixture writes what ingest and recommend would have written for RUN_DATE (interactions,
items, user_index, the ``blend`` lists in eval_recommendations, experiment_assignments), with the
``blend`` list of each test user built from the variant the test computes that user is served: the
treatment ``cap3`` puts a held-out item at the top of the list, the control further down. It then runs
the stage twice: with the experiment (what it logs to MLflow captured), then without.

The expected ``experiment_results`` come from an independent computation: the per-user metrics by hand
in pandas (the definitions of evaluation/metrics.py), the served variants from the Python hash and the
recorded rows, and ``analysis.analyse`` on them.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from support.common import RUN_DATE, local_overrides
from watchnext import catalog, tables, tracking
from watchnext.config import Config, load_config
from watchnext.constants import (
    TABLE_EVAL_RECS,
    TABLE_EVALUATION,
    TABLE_EXPERIMENT_ASSIGNMENTS,
    TABLE_EXPERIMENT_RESULTS,
    TABLE_INTERACTIONS,
    TABLE_ITEMS,
    TABLE_USER_INDEX,
)
from watchnext.evaluation import experiments, protocol
from watchnext.evaluation.metrics import ranking_metrics_per_user
from watchnext.experiments.analysis import analyse
from watchnext.experiments.assignment import in_traffic_python, variant_python
from watchnext.experiments.spec import ExperimentConfig
from watchnext.stages import evaluate

pytestmark = [pytest.mark.spark, pytest.mark.delta]

K = 10
N_USERS, N_ITEMS, PER_USER = 240, 60, 8
OTHER_DATE = RUN_DATE - dt.timedelta(days=1)
EXPERIMENT = {
    "name": "cap-test",
    "salt": "test-cap-salt",
    "enabled": True,
    "traffic": 0.8,
    "min_users_per_variant": 20,
    "variants": [
        {"name": "control", "share": 0.5},
        {"name": "cap3", "share": 0.5, "recommend": {"max_per_cluster": 3}},
    ],
}


def _cfg(tmp: Path, *extra: str) -> Config:
    return load_config(
        env="local", overrides=[*local_overrides(tmp), "mlflow.enabled=false", f"evaluation.ks=[{K}]", *extra]
    )


def _with_experiment(cfg: Config) -> Config:
    return cfg.with_overrides(f"experiments={json.dumps([EXPERIMENT])}")


def _reference_per_user(lists: pd.DataFrame, truth: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per truth user, the metrics of evaluation/metrics.py by their definitions (binary relevance)."""
    rows = []
    for user, rel in truth.groupby("user_idx"):
        relevant = set(rel["item_idx"])
        top = lists[lists["user_idx"] == user].sort_values("rank").head(k)
        hit_ranks = [int(r) for r, i in zip(top["rank"], top["item_idx"], strict=True) if i in relevant]
        idcg = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, len(relevant)) + 1))
        rows.append(
            {
                "user_idx": int(user),
                "ndcg": sum(1.0 / math.log2(r + 1) for r in hit_ranks) / idcg,
                "precision": len(hit_ranks) / k,
                "recall": len(hit_ranks) / len(relevant),
                "map": sum((j + 1) / r for j, r in enumerate(hit_ranks)) / len(relevant),
                "mrr": 1.0 / hit_ranks[0] if hit_ranks else 0.0,
                "hit_rate": 1.0 if hit_ranks else 0.0,
            }
        )
    return pd.DataFrame(rows)


@dataclass
class Runs:
    cfg: Config  # with the experiment
    expected: DataFrame  # experiment_results rows of RUN_DATE, without run_id
    reference: pd.DataFrame  # user_idx, user_id, variant (served), metrics: every test user
    blend: DataFrame
    test: DataFrame
    summary: dict[str, Any]  # the stage summary of the run with the experiment
    written: DataFrame  # experiment_results after that run (collected to a local frame)
    commit: dict[str, Any]
    mlflow_metrics: dict[str, float]  # what the stage passed to tracking.log_metrics
    artifact: str  # its experiment.txt
    evaluation: DataFrame
    after_clear: DataFrame  # experiment_results after the second run (no experiment)
    clear_commit: dict[str, Any]
    other_date_rows: DataFrame  # the OTHER_DATE rows planted before, as they were


def _served(user_id: str, recorded: dict[str, str], exp: ExperimentConfig) -> str | None:
    """What assignment.served_variants gives: the recorded variant inside the traffic, else the hash."""
    if not in_traffic_python(user_id, exp):
        return None
    return recorded.get(user_id, variant_python(user_id, exp))


@pytest.fixture(scope="module")
def runs(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    tmp = tmp_path_factory.mktemp("experiment_eval")
    cfg = _cfg(tmp)
    exp_cfg = _with_experiment(cfg)
    exp = exp_cfg.experiment
    assert exp is not None
    rng = np.random.default_rng(7)

    # -- ingest's tables: interactions (8 distinct items per user over 60 days), items, user_index
    start = dt.datetime(2024, 4, 1, tzinfo=dt.UTC).timestamp()
    inter = [
        (f"u{u}", u, f"i{i}", int(i), float(rng.integers(1, 6)), dt.datetime.fromtimestamp(start + t, dt.UTC))
        for u in range(N_USERS)
        for i, t in zip(
            rng.choice(N_ITEMS, PER_USER, replace=False), rng.integers(0, 60 * 86400, PER_USER), strict=True
        )
    ]
    schema = "user_id string, user_idx int, item_id string, item_idx int, rating double, timestamp timestamp"
    interactions = spark.createDataFrame(inter, schema).withColumn("run_date", F.lit(RUN_DATE))
    tables.overwrite_run_date(interactions, cfg.table_path(TABLE_INTERACTIONS), RUN_DATE)
    genres = ["Drama", "Comedy", "Action", "Horror"]
    items = spark.createDataFrame(
        [(i, f"i{i}", [genres[i % 4], genres[(i // 4) % 4]], ["tag"]) for i in range(N_ITEMS)],
        "item_idx int, item_id string, genres array<string>, tags array<string>",
    ).withColumn("run_date", F.lit(RUN_DATE))
    tables.overwrite_run_date(items, cfg.table_path(TABLE_ITEMS), RUN_DATE)
    users = [(f"u{u}", u) for u in range(N_USERS)]
    tables.overwrite(
        spark.createDataFrame(users, "user_id string, user_idx int"), cfg.table_path(TABLE_USER_INDEX)
    )

    # -- the test split, as the stage will recompute it
    _, test = protocol.split(protocol.protocol_frame(interactions), cfg.evaluation)
    truth = test.select("user_idx", "item_idx").distinct().toPandas()
    test_users = [int(u) for u in sorted(truth["user_idx"].unique())]

    # -- experiment_assignments: the in-traffic users with their hash variant, except a sticky user (recorded
    # control, hash cap3), a recorded user now outside the traffic, and one in-traffic user not recorded yet;
    # plus another experiment's rows
    in_traffic = [u for u in range(N_USERS) if in_traffic_python(f"u{u}", exp)]
    outside = next(u for u in range(N_USERS) if u not in in_traffic)
    sticky = next(u for u in in_traffic if variant_python(f"u{u}", exp) == "cap3")
    unrecorded = next(u for u in in_traffic if u != sticky)
    recorded = {f"u{u}": variant_python(f"u{u}", exp) for u in in_traffic if u != unrecorded}
    recorded[f"u{sticky}"] = "control"
    recorded[f"u{outside}"] = "cap3"
    rows = [("cap-test", u, v, RUN_DATE) for u, v in recorded.items()]
    rows += [("other", f"u{u}", "x", RUN_DATE) for u in range(N_USERS)]
    tables.overwrite(
        spark.createDataFrame(rows, "experiment string, user_id string, variant string, first_assigned date"),
        cfg.table_path(TABLE_EXPERIMENT_ASSIGNMENTS),
    )

    # -- recommend's blend lists for the test users (a few without a list: they score 0)
    served = {u: _served(f"u{u}", recorded, exp) for u in test_users}
    assert served[sticky] == "control" and served[outside] is None
    lists = []
    for u in test_users:
        if u % 17 == 0:
            continue
        held = sorted(truth.loc[truth["user_idx"] == u, "item_idx"])
        others = [i for i in range(N_ITEMS) if i not in held]
        rng.shuffle(others)
        ranked = others[:K]
        if served[u] == "cap3":
            ranked[u % 3] = held[0]
        elif u % 2:
            ranked[3 + u % 5] = held[0]
        lists += [(u, int(i), 1.0 / r, r) for r, i in enumerate(ranked, start=1)]
    blend = spark.createDataFrame(lists, "user_idx int, item_idx int, score double, rank int")
    protocol.write_recommendations(blend, cfg, "blend", RUN_DATE, "recommend-run")

    # -- the expected results, computed without the library's per-user metrics or served variants
    ref = _reference_per_user(
        pd.DataFrame(lists, columns=["user_idx", "item_idx", "score", "rank"]), truth, K
    )
    ref["user_id"] = "u" + ref["user_idx"].astype(str)
    ref["variant"] = [served[u] for u in ref["user_idx"]]
    metrics = list(experiments.METRICS)
    in_exp = ref[ref["variant"].notna()].sort_values("user_id", ignore_index=True)  # the bootstrap's order
    analysed = analyse(in_exp, exp, metrics, seed=cfg.pipeline.seed)
    expected = spark.createDataFrame(experiments.results_rows(analysed, exp, K), experiments.RESULTS_SCHEMA)
    expected = expected.withColumn("run_date", F.lit(RUN_DATE))

    results_path = cfg.table_path(TABLE_EXPERIMENT_RESULTS)

    # a row of another date, which no run for RUN_DATE may touch
    other = expected.limit(1).withColumn("run_date", F.lit(OTHER_DATE)).withColumn("run_id", F.lit("old"))
    tables.overwrite_run_date(other, results_path, OTHER_DATE, "planted")
    other_rows = spark.createDataFrame(other.collect(), other.schema)

    # -- run 1: the experiment; what it logs to MLflow captured (a real store costs seconds to create)
    logged: dict[str, float] = {}
    texts: dict[str, str] = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracking, "log_metrics", lambda metrics, step=None: logged.update(metrics))
        mp.setattr(tracking, "log_text", lambda text, name: texts.__setitem__(name, text))
        summary = evaluate.run(spark, exp_cfg, RUN_DATE)
    written_df = tables.read_run_date(spark, results_path, RUN_DATE)
    written = spark.createDataFrame(written_df.collect(), written_df.schema)
    commit = tables.last_commit(spark, results_path)
    evaluation_df = tables.read_run_date(spark, cfg.table_path(TABLE_EVALUATION), RUN_DATE)
    evaluation = spark.createDataFrame(evaluation_df.collect(), evaluation_df.schema)

    # -- run 2: no experiment: the run date's results are cleared, the other date's kept
    evaluate.run(spark, cfg, RUN_DATE)
    after = tables.read(spark, results_path)
    return Runs(
        cfg=exp_cfg,
        expected=expected,
        reference=ref,
        blend=blend,
        test=test,
        summary=summary,
        written=written,
        commit=commit,
        mlflow_metrics=logged,
        artifact=texts["experiment.txt"],
        evaluation=evaluation,
        after_clear=spark.createDataFrame(after.collect(), after.schema),
        clear_commit=tables.last_commit(spark, results_path),
        other_date_rows=other_rows,
    )


def test_results_are_the_analysis_of_the_served_variants(runs: Runs) -> None:
    assert runs.written.columns[: len(experiments.RESULT_COLUMNS)] == experiments.RESULT_COLUMNS
    assert sorted(runs.written.columns[len(experiments.RESULT_COLUMNS) :]) == ["run_date", "run_id"]
    assertDataFrameEqual(runs.written.drop("run_id"), runs.expected, rtol=1e-9)
    # lineage in the rows and the commit note, as the evaluation table's (MLflow off: no run id)
    assert {r.run_id for r in runs.written.select("run_id").distinct().collect()} == {tracking.NO_RUN}
    assert runs.commit["userMetadata"] == f"evaluate run_id={tracking.NO_RUN} experiment=cap-test"
    # the designed effect: cap3 puts a held-out item on top, so it ships on NDCG
    ndcg = runs.written.where(F.col("metric") == "ndcg").first()
    assert ndcg is not None and ndcg.verdict == "ship cap3" and ndcg.srm_ok and ndcg.lift > 0.5
    assert sorted(r.metric for r in runs.written.collect()) == sorted(experiments.METRICS)
    assert {r.verdict for r in runs.written.where(F.col("metric") != "ndcg").collect()} == {"n/a"}


def test_users_outside_the_traffic_are_left_out(runs: Runs) -> None:
    ref = runs.reference
    served = ref[ref["variant"].notna()]
    assert 0 < len(served) < len(ref)  # traffic 0.8: some test users are outside
    row = runs.written.where(F.col("metric") == "ndcg").first()
    assert row is not None
    counts = served["variant"].value_counts()
    assert (row.n_control, row.n_variant) == (counts["control"], counts["cap3"])
    assert (row.control_share, row.variant_share, row.k) == (0.5, 0.5, K)


def test_per_user_metrics_average_to_the_evaluation_table(spark: SparkSession, runs: Runs) -> None:
    """The per-user values the experiment compares are those the evaluation table's blend row averages."""
    per_user = ranking_metrics_per_user(runs.blend, runs.test, K)
    names = {f"{m}_at_{K}": m for m in experiments.METRICS}
    expected = spark.createDataFrame(runs.reference[["user_idx", *names.values()]]).select(
        F.col("user_idx").cast("int"), *[F.col(names[n]).alias(n) for n in per_user.columns[1:]]
    )
    assertDataFrameEqual(per_user, expected, rtol=1e-12)
    means = per_user.agg(*[F.avg(n).alias(m) for n, m in names.items()]).first()
    assert means is not None
    stored = {
        r.metric: r.value
        for r in runs.evaluation.where((F.col("model") == "blend") & (F.col("k") == K)).collect()
    }
    for m in experiments.METRICS:
        assert means[m] == pytest.approx(stored[m], rel=1e-12, abs=1e-15), m
        assert runs.reference[m].mean() == pytest.approx(stored[m], rel=1e-12, abs=1e-15), m


def test_mlflow_log_and_summary_carry_the_verdict(runs: Runs) -> None:
    ndcg = runs.written.where(F.col("metric") == "ndcg").first()
    assert ndcg is not None
    m = runs.mlflow_metrics
    assert m["experiment.cap3.ndcg.lift"] == pytest.approx(ndcg.lift)
    assert m["experiment.cap3.ndcg.p_value"] == pytest.approx(ndcg.p_value)
    assert m["experiment.srm_p"] == pytest.approx(ndcg.srm_p)
    assert m["experiment.users.control"] == ndcg.n_control
    assert "ship cap3" in runs.artifact and "sample ratio check" in runs.artifact
    assert runs.summary["experiment"] == {
        "name": "cap-test",
        "metric": "ndcg",
        "verdicts": {"cap3": "ship cap3"},
        "srm_p": round(ndcg.srm_p, 4),
    }
    assert runs.summary["notes"] == ["experiment cap-test: cap3: ship cap3"]


def test_without_an_experiment_nothing_is_written_and_stale_results_are_cleared(runs: Runs) -> None:
    # the second run emptied RUN_DATE (the first run's verdict is not this run's) and kept OTHER_DATE
    assertDataFrameEqual(runs.after_clear, runs.other_date_rows)
    assert "no experiment enabled" in runs.clear_commit["userMetadata"]


def test_without_an_experiment_no_results_table_is_created(spark: SparkSession, tmp_path: Path) -> None:
    """The stale-results check runs first and writes nothing where there is no table (the stage then
    fails on the missing interactions of this empty lakehouse)."""
    cfg = _cfg(tmp_path)
    with pytest.raises(FileNotFoundError, match="interactions"):
        evaluate.run(spark, cfg, RUN_DATE)
    assert not tables.exists(spark, cfg.table_path(TABLE_EXPERIMENT_RESULTS))


def test_missing_inputs_name_the_stage_to_run(spark: SparkSession, runs: Runs, tmp_path: Path) -> None:
    empty = _with_experiment(_cfg(tmp_path))
    with pytest.raises(
        catalog.MissingInputError, match="'experiment_assignments' table .* run the recommend"
    ):
        evaluate.run(spark, empty, RUN_DATE)
    # the tables exist, but no blend lists for that date
    with pytest.raises(catalog.MissingInputError, match="'blend' lists of run_date 2024-05-31 .* recommend"):
        evaluate.run(spark, runs.cfg, OTHER_DATE)
    assert catalog.written_by(TABLE_EVAL_RECS)  # the table the message names is in the catalogue


def test_a_metric_the_stage_does_not_compute_fails_first(spark: SparkSession, tmp_path: Path) -> None:
    bad = {**EXPERIMENT, "metric": "ild"}
    cfg = _cfg(tmp_path, f"experiments={json.dumps([bad])}")
    with pytest.raises(ValueError, match="metric 'ild' is not a per-user metric .* ndcg, precision"):
        evaluate.run(spark, cfg, RUN_DATE)
