from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
import yaml

from watchnext.config import Config, ConfigError, load_config
from watchnext.session import PreflightError, preflight


def test_layers_merge_in_order(tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("spark:\n  shuffle_partitions: 3\ningest:\n  synthetic:\n    n_users: 7\n")
    cfg = load_config(
        env="local", files=[extra], overrides=["ingest.synthetic.n_users=9", "spark.log_level=ERROR"]
    )
    assert isinstance(cfg, Config)
    assert cfg.spark.master == "local[*]"  # local.yaml
    assert cfg.spark.shuffle_partitions == 3  # extra file beats local.yaml
    assert cfg.ingest.synthetic.n_users == 9  # --conf beats files
    assert cfg.spark.log_level == "ERROR"
    assert cfg.storage.lakehouse == f"file://{Path.cwd() / 'lakehouse'}"  # base.yaml, made absolute
    assert cfg.env == "local"


def test_cluster_env_reads_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHNEXT_LAKEHOUSE", "s3a://bucket/wn")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    cfg = load_config(env="cluster")
    assert cfg.spark.master is None
    assert cfg.spark.delta_jars == "provided"
    assert cfg.storage.lakehouse == "s3a://bucket/wn"
    assert cfg.mlflow.tracking_uri == "http://mlflow:5000"
    assert cfg.table_path("items") == "s3a://bucket/wn/items"


def test_unknown_key_is_named() -> None:
    with pytest.raises(ConfigError, match=r"config key 'spark.shufle_partitions': unknown key"):
        load_config(overrides=["spark.shufle_partitions=4"])


def test_wrong_type_is_named() -> None:
    with pytest.raises(ConfigError, match=r"config key 'spark.shuffle_partitions'.*integer.*'many'"):
        load_config(overrides=["spark.shuffle_partitions=many"])


def test_out_of_range_and_bad_choice() -> None:
    with pytest.raises(ConfigError, match=r"'ingest.synthetic.in_cluster_share'"):
        load_config(overrides=["ingest.synthetic.in_cluster_share=1.5"])
    with pytest.raises(ConfigError, match=r"'ingest.source'"):
        load_config(overrides=["ingest.source=kafka"])


def test_source_needs_its_settings() -> None:
    with pytest.raises(ConfigError, match="neither movielens.path nor movielens.name"):
        load_config(overrides=["ingest.source=movielens"])


def test_bad_override_syntax_and_unknown_env() -> None:
    with pytest.raises(ConfigError, match="key.path=value"):
        load_config(overrides=["spark.master"])
    with pytest.raises(ConfigError, match="unknown env 'prod'"):
        load_config(env="prod")


def test_literal_secret_refused(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("mlflow:\n  api_token: hunter2\n")
    with pytest.raises(ConfigError, match="literal secret"):
        load_config(files=[f])


def test_missing_env_var_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WN_TEST_MISSING", raising=False)
    with pytest.raises(ConfigError, match="storage.lakehouse.*WN_TEST_MISSING"):
        load_config(overrides=["storage.lakehouse=${env:WN_TEST_MISSING}"])


def test_flat_has_every_leaf() -> None:
    flat = load_config(overrides=["ingest.synthetic.start_date=2020-02-03"]).flat()
    assert flat["spark.master"] == "local[*]"
    assert flat["ingest.synthetic.start_date"] == "2020-02-03"
    assert load_config(
        overrides=["ingest.synthetic.start_date=2020-02-03"]
    ).ingest.synthetic.start_date == dt.date(2020, 2, 3)


def test_preflight_messages() -> None:
    preflight(spark_version="4.2.0", delta_version="4.4.0", java_major=17, python=(3, 11))
    with pytest.raises(PreflightError, match="pyspark 4.3.0 does not fit delta-spark 4.4.0"):
        preflight(spark_version="4.3.0", delta_version="4.4.0", java_major=17, python=(3, 11))
    with pytest.raises(PreflightError, match="Java 11 is too old"):
        preflight(spark_version="4.2.0", delta_version="4.4.0", java_major=11, python=(3, 11))
    with pytest.raises(PreflightError, match="Python 3.12 is not supported"):
        preflight(spark_version="4.2.0", delta_version="4.4.0", java_major=17, python=(3, 12))


def test_base_yaml_holds_the_schema_defaults() -> None:
    """The typed schema is where defaults are decided; conf/base.yaml lists them for reading and must
    not drift from it (it once ran every stage while the schema ran only ingest)."""
    from watchnext.config import ALL_STAGES, Config, default_conf_dir, validate_config
    from watchnext.pipeline import STAGES

    base = yaml.safe_load((default_conf_dir() / "base.yaml").read_text())
    assert validate_config(base).model_dump() == Config().model_dump()
    assert list(STAGES) == list(ALL_STAGES) == Config().pipeline.stages


def test_domain_words_load_and_are_checked(tmp_path: Path) -> None:
    assert load_config().domain.verb == "watched"  # base.yaml: the movie wording
    music = load_config(
        overrides=["domain.verb=listened to", "domain.users=Listeners", "domain.items=artists"]
    )
    assert (music.domain.verb, music.domain.users, music.domain.items) == (
        "listened to",
        "Listeners",
        "artists",
    )
    assert music.domain.service == "watchnext" and music.domain.item == "title"  # the rest keep defaults
    bad = tmp_path / "bad.yaml"
    bad.write_text('domain:\n  users: " Listeners"\n')
    with pytest.raises(ConfigError, match=r"config key 'domain.users':.*whitespace.*' Listeners'"):
        load_config(files=[bad])
    bad.write_text('domain:\n  verb: ""\n')
    with pytest.raises(ConfigError, match=r"config key 'domain.verb':.*non-empty"):
        load_config(files=[bad])
    # each kind of reason names an MLflow metric, which refuses an apostrophe
    with pytest.raises(ConfigError, match=r"config key 'domain.service':.*MLflow metrics.*\"Bob's\""):
        load_config(overrides=["domain.service=Bob's"])
    with pytest.raises(ConfigError, match=r"config key 'domain.noun': unknown key"):
        load_config(overrides=["domain.noun=track"])


def test_als_confidence_auto_and_its_search_space() -> None:
    cfg = load_config(env="local")
    assert cfg.als.confidence == "auto"
    assert cfg.als.tuning.space.confidence == ["binary", "log", "rating"]
    assert cfg.ingest.synthetic.play_counts is False
    ok = load_config(overrides=["als.confidence=log", "als.tuning.space.confidence=[log, rating]"])
    assert (ok.als.confidence, ok.als.tuning.space.confidence) == ("log", ["log", "rating"])
    with pytest.raises(ConfigError, match=r"'als.confidence'"):
        load_config(overrides=["als.confidence=sqrt"])
    with pytest.raises(ConfigError, match=r"'als.tuning.space.confidence'"):
        load_config(overrides=["als.tuning.space.confidence=[]"])
    with pytest.raises(ConfigError, match=r"'als.tuning.space.confidence.*'"):
        load_config(overrides=["als.tuning.space.confidence=[binary, auto]"])  # auto is no scheme
    with pytest.raises(ConfigError, match=r"'als.tuning.space.confidence'.*distinct"):
        load_config(overrides=["als.tuning.space.confidence=[log, log]"])
    with pytest.raises(ConfigError, match=r"'ingest.synthetic.play_count_ratio'"):
        load_config(overrides=["ingest.synthetic.play_count_ratio=1"])
