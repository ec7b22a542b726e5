"""The serving read of a user's A/B experiment and variant (``recommendations_latest``'s nullable
``experiment`` and ``variant`` columns), and of a table written before those columns existed.

The tables are written with ``deltalake`` (no Spark): what is under test is the read of optional
columns, which tests/unit/test_serving.py checks on Spark-written tables for the others."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from support.common import RUN_DATE, local_overrides
from watchnext.cli import main
from watchnext.config import load_config
from watchnext.constants import TABLE_RECOMMENDATIONS_LATEST
from watchnext.serving import Engine, RecommendationStore

# user, rank, item, title, score, experiment, variant
ROWS = [
    ("u1", 1, "10", "Heat (1995)", 0.9, "diversity-cap", "cap3"),
    ("u1", 2, "11", "Casino (1995)", 0.8, "diversity-cap", "cap3"),
    ("u2", 1, "12", "Das Boot (1981)", 0.7, "diversity-cap", "control"),
    ("u3", 1, "13", "Amélie (2001)", 0.6, None, None),  # outside the experiment's traffic
]


def _table(path: Path, with_experiment: bool) -> None:
    cols = list(zip(*ROWS, strict=True))
    data = {
        "user_id": pa.array(cols[0], pa.string()),
        "rank": pa.array(cols[1], pa.int32()),
        "item_id": pa.array(cols[2], pa.string()),
        "title": pa.array(cols[3], pa.string()),
        "score": pa.array(cols[4], pa.float64()),
        "reason": pa.array(["Because you watched Heat (1995)"] * len(ROWS), pa.string()),
        "run_id": pa.array(["run-x"] * len(ROWS), pa.string()),
        "run_date": pa.array([RUN_DATE] * len(ROWS), pa.date32()),
    }
    if with_experiment:
        data["experiment"] = pa.array(cols[5], pa.string())
        data["variant"] = pa.array(cols[6], pa.string())
    write_deltalake(str(path), pa.table(data))


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    path = load_config(env="local", overrides=local_overrides(tmp_path)).table_path(
        TABLE_RECOMMENDATIONS_LATEST
    )
    _table(Path(path.removeprefix("file://")), with_experiment=True)
    return tmp_path


def _conf(root: Path) -> list[str]:
    return [a for o in local_overrides(root) for a in ("--conf", o)]


@pytest.mark.parametrize("engine", ["datafusion", "pyarrow"])
def test_the_users_experiment_and_variant_are_read(root: Path, engine: Engine) -> None:
    path = load_config(env="local", overrides=local_overrides(root)).table_path(TABLE_RECOMMENDATIONS_LATEST)
    store = RecommendationStore(path, engine=engine)
    got = {u: (r.experiment, r.variant, len(r)) for u in ("u1", "u2", "u3") for r in [store.for_user(u)]}
    assert got == {
        "u1": ("diversity-cap", "cap3", 2),
        "u2": ("diversity-cap", "control", 1),
        "u3": (None, None, 1),
    }


@pytest.mark.parametrize("engine", ["datafusion", "pyarrow"])
def test_a_table_from_before_experiments_still_serves(tmp_path: Path, engine: Engine) -> None:
    _table(tmp_path / "old", with_experiment=False)
    recs = RecommendationStore(str(tmp_path / "old"), engine=engine).for_user("u1")
    assert (recs.experiment, recs.variant) == (None, None)
    assert [i.item_id for i in recs.items] == ["10", "11"] and recs.run_date == dt.date(2024, 6, 1)


def test_cli_prints_the_experiment_and_variant(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recommend", "--user", "u1", *_conf(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        out[0]
        == "Top 2 for user u1 (run_date 2024-06-01, run run-x; experiment diversity-cap, variant cap3):"
    )
    assert out[1].startswith(" 1. Heat (1995)")
    # outside the experiment: the line as before
    assert main(["recommend", "--user", "u3", *_conf(root)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "Top 1 for user u3 (run_date 2024-06-01, run run-x):"
    assert main(["recommend", "--user", "u2", "--json", *_conf(root)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert (data["experiment"], data["variant"]) == ("diversity-cap", "control")
