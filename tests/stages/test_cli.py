"""The `watchnext` command line, in process (it reuses the test session through getOrCreate)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyspark.sql import SparkSession
from pyspark.testing import assertDataFrameEqual

from support.common import local_overrides
from watchnext import tables
from watchnext.cli import main
from watchnext.config import load_config
from watchnext.constants import TABLE_INTERACTIONS
from watchnext.ingest.movielens import read_movielens

pytestmark = [pytest.mark.spark, pytest.mark.delta, pytest.mark.mlflow]


def _conf(tmp_path: Path, *extra: str) -> list[str]:
    out: list[str] = []
    for o in (*local_overrides(tmp_path), *extra):
        out += ["--conf", o]
    return out


def test_generate_then_ingest_the_generated_folder(
    spark: SparkSession, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gen = tmp_path / "gen"
    assert main(["generate", "--out", str(gen), *_conf(tmp_path)]) == 0
    assert (gen / "ratings.csv").is_file() and (gen / "movies.csv").is_file()
    capsys.readouterr()

    conf = _conf(tmp_path, "ingest.source=movielens", f"ingest.movielens.path={gen}")
    assert main(["ingest", "--run-date", "2024-06-01", "--json", *conf]) == 0
    summary = json.loads(capsys.readouterr().out)["ingest"]
    assert summary["source"] == "ml-latest"
    assert summary["rows_rejected"] == 0

    cfg = load_config(overrides=[*local_overrides(tmp_path)])
    written = tables.read(spark, cfg.table_path(TABLE_INTERACTIONS)).select("user_id", "item_id", "rating")
    expected = read_movielens(spark, str(gen)).interactions.selectExpr(
        "user_id", "item_id", "cast(rating as double) as rating"
    )
    assertDataFrameEqual(written, expected)
    assert summary["interactions_written"] == summary["rows_read"] == expected.count()


def test_config_error_exits_2_naming_the_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ingest", "--conf", "ingest.sourse=movielens"]) == 2
    assert "config key 'ingest.sourse': unknown key" in capsys.readouterr().err


def test_bad_run_date_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["ingest", "--run-date", "01/06/2024"])
    assert "--run-date must be YYYY-MM-DD" in capsys.readouterr().err


def test_config_prints_the_resolved_config_or_one_key(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--get", "ncf.enabled", "--conf", "ncf.enabled=false"]) == 0
    assert json.loads(capsys.readouterr().out) is False
    assert main(["config", "--get", "als.tuning", "--conf", "als.tuning.n_trials=7"]) == 0
    assert json.loads(capsys.readouterr().out)["n_trials"] == 7
    assert main(["config", "--env", "local"]) == 0
    assert json.loads(capsys.readouterr().out)["spark"]["master"] == "local[*]"
    assert main(["config", "--get", "als.no_such_key"]) == 2
    assert "config key 'als.no_such_key': unknown key" in capsys.readouterr().err
    assert main(["config", "--get", "ncf.enabled", "--conf", "ncf.enabeld=true"]) == 2
    assert "config key 'ncf.enabeld': unknown key" in capsys.readouterr().err
