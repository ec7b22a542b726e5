"""evaluation/experiments.py: the served variant of each test user, the per-user metrics the analysis
compares (a hand-made example, and their mean against ``ranking_metrics``), and the rows, MLflow
metrics and text made of an analysis frame."""

from __future__ import annotations

import datetime as dt
import math

import pandas as pd
import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from watchnext.evaluation import experiments
from watchnext.evaluation.metrics import ranking_metrics, ranking_metrics_per_user
from watchnext.experiments.analysis import OUTPUT_COLUMNS
from watchnext.experiments.assignment import in_traffic_python, variant_python
from watchnext.experiments.spec import ExperimentConfig

EXP = ExperimentConfig(
    name="cap",
    salt="unit-salt",
    traffic=0.6,
    variants=[
        {"name": "control", "share": 0.5},
        {"name": "cap3", "share": 0.5, "recommend": {"max_per_cluster": 3}},
    ],
)
DAY = dt.date(2024, 6, 1)


def _users(pred: object, n: int = 1) -> list[str]:
    """The first ``n`` ids ``u0, u1, ...`` that ``pred`` accepts (the hash is fixed by the salt)."""
    out = [f"u{i}" for i in range(1000) if pred(f"u{i}")]  # type: ignore[operator]
    return out[:n]


@pytest.mark.spark
def test_served_variant_is_the_recorded_one_inside_the_traffic(spark: SparkSession) -> None:
    (sticky,) = _users(lambda u: in_traffic_python(u, EXP) and variant_python(u, EXP) == "cap3")
    (outside,) = _users(lambda u: not in_traffic_python(u, EXP))
    (new,) = _users(lambda u: in_traffic_python(u, EXP) and u != sticky)
    index = {sticky: 0, outside: 1, new: 2, "nobody": 3}
    # sticky: recorded control though the hash now says cap3 (shares changed) -> control
    # outside: recorded, but outside today's traffic -> null (the base recipe)
    # new: in the traffic, not recorded yet -> its hash variant
    # u_untested: recorded, but not a test user -> no row; test user 9 has no user_index row -> no row
    assignments = spark.createDataFrame(
        [("cap", sticky, "control", DAY), ("cap", outside, "cap3", DAY), ("cap", "u_untested", "cap3", DAY)]
        + [("other", u, "x", DAY) for u in index],
        "experiment string, user_id string, variant string, first_assigned date",
    )
    user_index = spark.createDataFrame(
        list(index.items()) + [("u_untested", 4)], "user_id string, user_idx int"
    )
    test = spark.createDataFrame([(0, 10), (0, 11), (1, 10), (2, 12), (9, 10)], "user_idx int, item_idx int")

    served = experiments.served_test_users(test, user_index, assignments, EXP)

    expected = spark.createDataFrame(
        [(0, sticky, "control"), (1, outside, None), (2, new, variant_python(new, EXP))],
        "user_idx int, user_id string, variant string",
    )
    assertDataFrameEqual(served, expected)


# The hand example of tests/unit/test_metrics.py, K = 3:
# user 1: list 10, 20, 30 (40 at rank 4 is cut); relevant {20, 40}: one hit, at rank 2.
# user 2: list 10, 40, 50; relevant {10, 50}: hits at ranks 1 and 3.
# user 3: no list; relevant {10}: zero on everything.
# user 4: a list but no truth: no row.
RECS = [(1, 10, 1), (1, 20, 2), (1, 30, 3), (1, 40, 4), (2, 10, 1), (2, 40, 2), (2, 50, 3), (4, 10, 1)]
TRUTH = [(1, 20), (1, 40), (2, 10), (2, 50), (3, 10)]
L3 = 1 / math.log2(3)  # 0.6309297535714575
PER_USER = [
    # user, ndcg, precision, recall, map, mrr, hit_rate
    # u1: DCG = 1/log2(3), IDCG(2) = 1 + 1/log2(3); AP = (P@2 = 1/2) / 2 = 0.25; RR = 1/2
    (1, L3 / (1 + L3), 1 / 3, 1 / 2, 0.25, 0.5, 1.0),
    # u2: DCG = 1 + 1/log2(4) = 1.5, IDCG(2) = 1 + 1/log2(3); AP = (1 + 2/3) / 2; RR = 1
    (2, 1.5 / (1 + L3), 2 / 3, 1.0, (1 + 2 / 3) / 2, 1.0, 1.0),
    (3, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
]


@pytest.mark.spark
def test_per_user_metrics_hand_example_and_their_mean(spark: SparkSession) -> None:
    recs = spark.createDataFrame(RECS, "user_idx int, item_idx int, rank int")
    truth = spark.createDataFrame(TRUTH, "user_idx int, item_idx int")
    # users 1 and 3 in the experiment, user 2 outside the traffic (null variant): left out
    served = spark.createDataFrame(
        [(1, "a", "control"), (2, "b", None), (3, "c", "cap3")],
        "user_idx int, user_id string, variant string",
    )

    per_user = experiments.per_user_metrics(recs, truth, served, 3)

    rows = {r[0]: r[1:] for r in PER_USER}
    expected = spark.createDataFrame(
        [("a", "control", *rows[1]), ("c", "cap3", *rows[3])],
        "user_id string, variant string, ndcg double, precision double, recall double, map double, "
        "mrr double, hit_rate double",
    )
    assertDataFrameEqual(per_user, expected, rtol=1e-12)
    # over every truth user, the per-user values average to ranking_metrics (the evaluation table's)
    all_users = ranking_metrics_per_user(recs, truth, 3).toPandas().set_index("user_idx").sort_index()
    overall = ranking_metrics(recs, truth, 3)
    assert sorted(all_users.columns) == sorted(overall)
    for name, value in overall.items():
        assert all_users[name].mean() == pytest.approx(value, rel=1e-12), name
    assert all_users["ndcg_at_3"].tolist() == pytest.approx([r[1] for r in PER_USER], rel=1e-12)


@pytest.mark.spark
def test_analysis_does_not_depend_on_the_row_order(spark: SparkSession) -> None:
    """The bootstrap resamples by position: the rows are put in user order before it."""
    rows = [(f"u{i:03d}", "control" if i % 2 else "cap3", (i * 37 % 101) / 101.0) for i in range(80)]
    cols = "user_id string, variant string, ndcg double"
    frame = spark.createDataFrame(rows, cols)
    for m in experiments.METRICS[1:]:
        frame = frame.withColumn(m, frame["ndcg"])
    shuffled = spark.createDataFrame(rows[::-1], cols)
    for m in experiments.METRICS[1:]:
        shuffled = shuffled.withColumn(m, shuffled["ndcg"])
    a = experiments.analyse_experiment(frame, EXP)
    b = experiments.analyse_experiment(shuffled.repartition(3), EXP)
    pd.testing.assert_frame_equal(a, b)
    assert a["metric"].tolist() == list(experiments.METRICS)  # the primary first, then the others


def test_a_metric_without_per_user_values_is_refused() -> None:
    bad = EXP.model_copy(update={"metric": "catalog_coverage"})
    with pytest.raises(ValueError, match="experiment 'cap': metric 'catalog_coverage' is not a per-user"):
        experiments.check_metric(bad)


def _results() -> pd.DataFrame:
    """An analysis frame by hand: the primary metric decided, the other one reported; one NaN interval."""
    base = {
        "experiment": "cap", "variant": "cap3", "control": "control", "n_control": 120, "n_variant": 118,
        "srm_chi2": 0.0168, "srm_p": 0.8969, "srm_ok": True,
    }  # fmt: skip
    rows = [
        {**base, "metric": "ndcg", "control_value": 0.20, "variant_value": 0.23, "diff": 0.03,
         "diff_low": 0.01, "diff_high": 0.05, "lift": 0.15, "lift_low": 0.05, "lift_high": 0.26,
         "p_value": 0.004, "significant": True, "verdict": "ship cap3"},
        {**base, "metric": "recall", "control_value": 0.0, "variant_value": 0.0, "diff": 0.0,
         "diff_low": math.nan, "diff_high": math.nan, "lift": math.nan, "lift_low": math.nan,
         "lift_high": math.nan, "p_value": math.nan, "significant": False, "verdict": "n/a"},
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=OUTPUT_COLUMNS)


def test_results_rows_mlflow_metrics_verdicts_and_text() -> None:
    results = _results()
    rows = experiments.results_rows(results, EXP, 10)
    assert [len(r) for r in rows] == [len(experiments.RESULT_COLUMNS)] * 2
    first = dict(zip(experiments.RESULT_COLUMNS, rows[0], strict=True))
    assert first == {**results.iloc[0].to_dict(), "control_share": 0.5, "variant_share": 0.5, "k": 10}
    assert [type(v) for v in rows[1][:6]] == [str, str, str, str, int, int]
    assert math.isnan(rows[1][OUTPUT_COLUMNS.index("lift")])

    assert experiments.verdicts(results) == {"cap3": "ship cap3"}
    assert experiments.mlflow_metrics(results) == {
        "experiment.cap3.ndcg.lift": 0.15,
        "experiment.cap3.ndcg.lift_low": 0.05,
        "experiment.cap3.ndcg.lift_high": 0.26,
        "experiment.cap3.ndcg.diff": 0.03,
        "experiment.cap3.ndcg.p_value": 0.004,
        "experiment.cap3.recall.diff": 0.0,  # the NaN ones are left out
        "experiment.users.cap3": 118.0,
        "experiment.users.control": 120.0,
        "experiment.srm_p": 0.8969,
        "experiment.srm_chi2": 0.0168,
    }
    text = experiments.format_results(results).splitlines()
    assert text[2].split() == [
        "cap3", "ndcg", "120", "118", "0.2000", "0.2300", "+15.0%", "[+5.0%,", "+26.0%]", "0.004",
        "ship", "cap3",
    ]  # fmt: skip
    assert text[3].split()[-1] == "n/a"
    assert text[-1] == "sample ratio check: chi2 0.017, p 0.897 (ok)"


def test_results_rows_refuse_a_frame_without_the_analysis_columns() -> None:
    with pytest.raises(ValueError, match="missing column"):
        experiments.results_rows(_results().drop(columns=["lift"]), EXP, 10)
