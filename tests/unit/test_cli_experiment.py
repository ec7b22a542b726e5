"""``--experiment NAME`` on every command (the jobs and the DAG's ``experiment`` param go through it),
and the example experiment layer conf/examples/experiment-cap.yaml."""

from __future__ import annotations

import json

import pytest

from support.common import ROOT
from watchnext.cli import build_parser, main
from watchnext.config import load_config
from watchnext.experiments.spec import resolve_experiment
from watchnext.pipeline import STAGES

EXAMPLE = ROOT / "conf" / "examples" / "experiment-cap.yaml"
OFF = "experiments=" + json.dumps(
    [
        {
            "name": "diversity-cap",
            "salt": "s1",
            "variants": [
                {"name": "control", "share": 0.5},
                {"name": "cap3", "share": 0.5, "recommend": {"max_per_cluster": 3}},
            ],
        },
        {
            "name": "n-eight",
            "salt": "s2",
            "enabled": True,
            "variants": [
                {"name": "control", "share": 0.5},
                {"name": "n8", "share": 0.5, "recommend": {"n": 8}},
            ],
        },
    ]
)


def test_every_command_accepts_experiment() -> None:
    parser = build_parser()
    for command in ["run", "config", *STAGES]:  # jobs/<stage>.py and jobs/pipeline.py call these
        assert parser.parse_args([command, "--experiment", "diversity-cap"]).experiment == "diversity-cap"
    assert parser.parse_args(["evaluate"]).experiment is None


def test_experiment_enables_that_one_and_no_other(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--get", "experiments", "--conf", OFF, "--experiment", "diversity-cap"]) == 0
    enabled = {e["name"]: e["enabled"] for e in json.loads(capsys.readouterr().out)}
    assert enabled == {"diversity-cap": True, "n-eight": False}
    # without the option the config is as written
    assert main(["config", "--get", "experiments", "--conf", OFF]) == 0
    enabled = {e["name"]: e["enabled"] for e in json.loads(capsys.readouterr().out)}
    assert enabled == {"diversity-cap": False, "n-eight": True}


def test_an_unknown_experiment_exits_2_naming_the_known_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "--conf", OFF, "--experiment", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no experiment 'nope'" in err and "diversity-cap" in err and "n-eight" in err


def test_the_example_layer_runs_the_cap_experiment() -> None:
    cfg = load_config(env="local", files=[EXAMPLE])
    exp = cfg.experiment
    assert exp is not None and (exp.name, exp.salt, exp.traffic, exp.control) == (
        "diversity-cap",
        "2026-12-cap",
        1.0,
        "control",
    )
    assert exp.shares == {"control": 0.5, "cap3": 0.5}
    recipes = resolve_experiment(cfg.recommend, exp)
    assert recipes["control"] == cfg.recommend
    assert recipes["cap3"] == cfg.recommend.model_copy(update={"max_per_cluster": 3})
    assert cfg.recommend.max_per_cluster != 3  # the variant changes something
    assert cfg.enable_experiment("diversity-cap").experiment == exp
