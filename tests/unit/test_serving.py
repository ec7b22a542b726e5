"""The serving read path: a Spark-written ``recommendations_latest`` read back without Spark."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pytest
from pyspark.sql import SparkSession
from pyspark.sql import types as T

from support.common import RUN_DATE, local_overrides
from watchnext.cli import main
from watchnext.config import Config, load_config
from watchnext.constants import TABLE_RECOMMENDATIONS_LATEST
from watchnext.serving import (
    Engine,
    RecommendationStore,
    UnknownUserError,
    recommendations_for,
    table_uri,
)

pytestmark = [pytest.mark.spark, pytest.mark.delta]

REPO = Path(__file__).resolve().parents[2]

SCHEMA = T.StructType(
    [
        T.StructField("user_id", T.StringType()),
        T.StructField("user_idx", T.IntegerType()),
        T.StructField("rank", T.IntegerType()),
        T.StructField("item_id", T.StringType()),
        T.StructField("title", T.StringType()),
        T.StructField("score", T.DoubleType()),
        T.StructField("reason", T.StringType()),
        T.StructField("sources", T.ArrayType(T.StringType())),
        T.StructField("model_versions", T.MapType(T.StringType(), T.StringType())),
        T.StructField("run_id", T.StringType()),
        T.StructField("run_date", T.DateType()),
    ]
)

TITLES = [
    "Heat (1995)",
    "Amélie (2001)",
    "Crouching Tiger, Hidden Dragon (Wò hǔ cáng lóng) (2000)",
    "Léon: The Professional (1994)",
    "千と千尋の神隠し (2001)",
    "Casino (1995)",
    "Das Boot (1981)",
    "Trois couleurs : Bleu (1993)",
]


def _rows(run_id: str, run_date: dt.date, n_users: int = 7, salt: int = 0) -> list[tuple[Any, ...]]:
    """``n_users`` users with 3..(3 + n_users) items each (users differ in list length)."""
    rows = []
    for u in range(n_users):
        # a non-ASCII id with a quote, and one with a backslash (SQL literal escaping)
        user = {3: "ünï'code user", 6: "back\\slash'6"}.get(u, f"u{u:03d}")
        for rank in range(1, 4 + u):
            i = (u * 7 + rank * 3 + salt) % len(TITLES)
            rows.append(
                (
                    user,
                    u,
                    rank,
                    f"{100 + i}",
                    TITLES[i],
                    round(1.0 / rank + 0.001 * u + salt, 6),
                    f"Because you watched {TITLES[(i + 1) % len(TITLES)]}"
                    if rank % 2
                    else "Popular in Dark Comedies",
                    ["als", "item_knn"] if rank % 3 else ["popular"],
                    {"als": "3", "clusters": "1"} if rank % 3 else {},
                    run_id,
                    run_date,
                )
            )
    return rows


def _write(spark: SparkSession, path: str, rows: list[tuple[Any, ...]], files: int = 3) -> None:
    df = (
        spark.createDataFrame(rows, SCHEMA)
        .repartitionByRange(files, "user_id")
        .sortWithinPartitions("user_id")
    )
    df.write.format("delta").mode("overwrite").option("overwriteSchema", "true").save(path)


def _expected(spark: SparkSession, path: str) -> dict[str, list[dict[str, Any]]]:
    """What Spark reads back from the table, per user, by rank."""
    out: dict[str, list[dict[str, Any]]] = {}
    for r in spark.read.format("delta").load(path).orderBy("user_id", "rank").collect():
        d = r.asDict()
        out.setdefault(d["user_id"], []).append(d)
    return out


@pytest.fixture(scope="module")
def root(spark: SparkSession, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose ``lakehouse/recommendations_latest`` the read-only tests share (written once)."""
    root = tmp_path_factory.mktemp("serving")
    path = load_config(env="local", overrides=local_overrides(root)).table_path(TABLE_RECOMMENDATIONS_LATEST)
    _write(spark, path, _rows("run-abc123", RUN_DATE))
    return root


@pytest.fixture()
def table(root: Path) -> str:
    return load_config(env="local", overrides=local_overrides(root)).table_path(TABLE_RECOMMENDATIONS_LATEST)


@pytest.fixture()
def own_table(spark: SparkSession, cfg: Config, run_date: dt.date) -> str:
    """A fresh table for a test that changes it."""
    path = cfg.table_path(TABLE_RECOMMENDATIONS_LATEST)
    _write(spark, path, _rows("run-abc123", run_date))
    return path


@pytest.mark.parametrize("engine", ["datafusion", "pyarrow"])
def test_every_user_reads_back_what_spark_wrote(
    spark: SparkSession, table: str, run_date: dt.date, engine: Engine
) -> None:
    expected = _expected(spark, table)
    assert len(expected) == 7 and "back\\slash'6" in expected
    store = RecommendationStore(table, engine=engine)
    assert store.active_engine == engine
    for user, rows in expected.items():
        recs = store.for_user(user)
        assert recs.user_id == user
        assert recs.run_date == run_date
        assert recs.run_id == "run-abc123"
        assert recs.table_version == store.version == 0
        got = [
            {
                "rank": r.rank,
                "item_id": r.item_id,
                "title": r.title,
                "score": r.score,
                "reason": r.reason,
                "sources": list(r.sources),
                "model_versions": dict(r.model_versions),
            }
            for r in recs.items
        ]
        want = [{k: row[k] for k in got[0]} for row in rows]
        assert got == want, user
        assert [r.rank for r in recs.items] == list(range(1, len(rows) + 1))


def test_pyarrow_lookup_is_pushed_down_to_one_file(table: str) -> None:
    snap = RecommendationStore(table, engine="pyarrow")._snapshot
    assert snap.dataset is not None and snap.query is None
    assert len(list(snap.dataset.get_fragments())) == 3
    for user in ("u000", "ünï'code user", "u005"):
        assert len(list(snap.dataset.get_fragments(filter=pc.field("user_id") == user))) == 1


def test_deletion_vectors_fall_back_to_datafusion(
    spark: SparkSession, own_table: str, run_date: dt.date
) -> None:
    spark.sql(f"ALTER TABLE delta.`{own_table}` SET TBLPROPERTIES ('delta.enableDeletionVectors' = 'true')")
    spark.sql(f"DELETE FROM delta.`{own_table}` WHERE user_id = 'u001' OR (user_id = 'u002' AND rank = 2)")
    store = RecommendationStore(own_table, engine="pyarrow")
    assert store.active_engine == "datafusion"  # pyarrow datasets can't apply deletion vectors
    expected = _expected(spark, own_table)
    for user, rows in expected.items():
        got = store.for_user(user)
        assert [(r.rank, r.item_id, r.score, r.reason, list(r.sources)) for r in got.items] == [
            (w["rank"], w["item_id"], w["score"], w["reason"], w["sources"]) for w in rows
        ]
        assert (got.run_date, got.run_id) == (run_date, "run-abc123")
    assert [r.rank for r in store.for_user("u002", n=3).items] == [1, 3, 4]
    with pytest.raises(UnknownUserError):
        store.for_user("u001")


def test_n_truncates_to_the_best_n(table: str) -> None:
    store = RecommendationStore(table)
    full = store.for_user("u005")
    assert len(full) == 8
    top3 = store.for_user("u005", n=3)
    assert top3.items == full.items[:3]
    assert len(store.for_user("u005", n=100)) == 8
    with pytest.raises(ValueError, match="n must be >= 1"):
        store.for_user("u005", n=0)


def test_unknown_user_is_a_key_error_naming_the_user(table: str) -> None:
    store = RecommendationStore(table)
    with pytest.raises(UnknownUserError, match="no recommendations for user 'nobody'") as exc:
        store.for_user("nobody")
    assert isinstance(exc.value, KeyError)
    assert exc.value.user_id == "nobody"
    with pytest.raises(KeyError):
        store.for_user("u00")  # a prefix of real ids is not a match


def test_missing_table_says_to_run_the_recommend_stage(tmp_path: Path) -> None:
    path = str(tmp_path / "lakehouse" / TABLE_RECOMMENDATIONS_LATEST)
    with pytest.raises(FileNotFoundError, match="run the recommend stage") as exc:
        RecommendationStore(path)
    assert path in str(exc.value)


def test_convenience_function_takes_a_config_or_a_path(root: Path, table: str) -> None:
    by_cfg = recommendations_for(load_config(env="local", overrides=local_overrides(root)), "u001", n=2)
    by_path = recommendations_for("file:" + table, "u001", n=2)
    assert by_cfg == by_path
    assert len(by_cfg) == 2
    assert by_cfg.to_dict()["items"][0]["sources"] == list(by_cfg.items[0].sources)
    json.dumps(by_cfg.to_dict())


def test_file_uris_become_absolute_paths() -> None:
    assert table_uri("file:///data/t") == "/data/t"
    assert table_uri("file:/data/t") == "/data/t"
    assert table_uri("s3://bucket/t") == "s3://bucket/t"
    assert table_uri("rel/t") == os.path.abspath("rel/t")


def test_refresh_sees_the_next_overwrite(spark: SparkSession, own_table: str, run_date: dt.date) -> None:
    table = own_table
    store = RecommendationStore(table)
    before = store.for_user("u002")
    assert store.refresh() is False  # nothing new yet

    nxt = run_date + dt.timedelta(days=1)
    rows = _rows("run-next", nxt, n_users=9, salt=1)
    _write(spark, table, rows, files=2)
    assert store.for_user("u002") == before  # a cached snapshot until refreshed
    with pytest.raises(UnknownUserError):
        store.for_user("u008")

    assert store.refresh() is True
    assert store.version == 1
    after = store.for_user("u002")
    assert (after.run_date, after.run_id, after.table_version) == (nxt, "run-next", 1)
    assert [r.score for r in after.items] == [r[5] for r in rows if r[0] == "u002"]
    assert len(store.for_user("u008")) == 11


def test_table_properties_are_surfaced_when_present(spark: SparkSession, own_table: str) -> None:
    table = own_table
    assert RecommendationStore(table).for_user("u000").mlflow_run_id is None
    spark.sql(
        f"ALTER TABLE delta.`{table}` SET TBLPROPERTIES "
        "('watchnext.run_date' = '2024-06-01', 'watchnext.mlflow_run_id' = 'mlf-42')"
    )
    store = RecommendationStore(table)
    assert store.properties["watchnext.mlflow_run_id"] == "mlf-42"
    assert store.for_user("u000").mlflow_run_id == "mlf-42"
    # the recommend stage's spelling
    spark.sql(f"ALTER TABLE delta.`{table}` UNSET TBLPROPERTIES ('watchnext.mlflow_run_id')")
    spark.sql(f"ALTER TABLE delta.`{table}` SET TBLPROPERTIES ('watchnext.run_id' = 'mlf-43')")
    assert store.refresh() is True
    assert store.for_user("u000").mlflow_run_id == "mlf-43"


# ----------------------------------------------------------------------------------------------- CLI
def _conf(tmp_path: Path) -> list[str]:
    out: list[str] = []
    for o in local_overrides(tmp_path):
        out += ["--conf", o]
    return out


def test_cli_prints_the_list_with_reasons(
    spark: SparkSession, root: Path, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = _expected(spark, table)["u004"]
    assert main(["recommend", "--user", "u004", "--n", "5", *_conf(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Top 5 for user u004 (run_date 2024-06-01, run run-abc123):"
    assert len(out) == 6
    for line, row in zip(out[1:], expected[:5], strict=True):
        assert line.startswith(f"{row['rank']:>2}. {row['title']}")
        assert f"{row['score']:.3f}" in line
        assert line.endswith(row["reason"])


def test_cli_json(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--user", "ünï'code user", "--json", *_conf(root)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["user_id"] == "ünï'code user"
    assert data["run_date"] == "2024-06-01"
    assert [i["rank"] for i in data["items"]] == [1, 2, 3, 4, 5, 6]
    assert {"item_id", "title", "score", "reason", "sources"} <= set(data["items"][0])


def test_cli_unknown_user_and_missing_table_exit_1(
    root: Path, table: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["recommend", "--user", "nobody", *_conf(root)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"watchnext: no recommendations for user 'nobody' in {table}"

    other = tmp_path / "empty"
    assert main(["recommend", "--user", "u001", *_conf(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "run the recommend stage" in err
    assert str(other / "lakehouse" / TABLE_RECOMMENDATIONS_LATEST) in err


def test_cli_serving_works_before_the_stage_is_registered(
    root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from watchnext import pipeline

    monkeypatch.setattr(pipeline, "STAGES", {k: v for k, v in pipeline.STAGES.items() if k != "recommend"})
    assert main(["recommend", "--user", "u002", "--n", "1", *_conf(root)]) == 0
    assert capsys.readouterr().out.startswith("Top 1 for user u002 ")
    with pytest.raises(SystemExit):  # no stage to run without --user
        main(["recommend", *_conf(root)])
    assert "not a registered stage" in capsys.readouterr().err


def test_cli_n_needs_a_user_and_a_positive_value(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["recommend", "--user", "u1", "--n", "0"])
    assert "--n must be a positive integer" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["recommend", "--n", "3"])
    assert "--n needs --user" in capsys.readouterr().err


def test_cli_serving_starts_no_spark(root: Path, tmp_path: Path) -> None:
    """In a fresh interpreter, where no Java can be found: the lookup works and no JVM was launched."""
    code = textwrap.dedent(
        f"""
        import sys
        from watchnext.cli import main
        rc = main(["recommend", "--user", "u001", "--n", "2", *{_conf(root)!r}])
        from pyspark import SparkContext
        assert SparkContext._gateway is None and SparkContext._active_spark_context is None
        sys.exit(rc)
        """
    )
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "no-java-here"), "WATCHNEXT_ENV": "local"}
    env.pop("SPARK_HOME", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "Top 2 for user u001 (run_date 2024-06-01, run run-abc123):"
    assert lines[1].startswith(" 1. ") and len(lines) == 3

    # And the installed entry point's module form, end to end.
    proc = subprocess.run(
        [sys.executable, "-m", "watchnext.cli", "recommend", "--user", "u001", "--json", *_conf(root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["user_id"] == "u001"
