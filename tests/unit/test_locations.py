"""Storage locations are resolved once, where the config is loaded: no layer below sees a relative path."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from watchnext.config import ConfigError, StorageConfig, load_config
from watchnext.locations import local_path, resolve_path, resolve_sqlite_uri, resolve_uri


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("./lakehouse", "file:///base/lakehouse"),
        ("lakehouse/../lh", "file:///base/lh"),
        ("/abs/lh", "file:///abs/lh"),
        ("file:/abs/lh", "file:///abs/lh"),
        ("file:///abs/lh", "file:///abs/lh"),
        ("file://localhost/abs/lh", "file:///abs/lh"),
        ("file:rel/lh", "file:///base/rel/lh"),
        ("/tmp/my dir", "file:///tmp/my dir"),  # not percent-encoded: Hadoop's Path would not decode it
        ("s3a://bucket/wn", "s3a://bucket/wn"),
        ("abfss://c@acct.dfs.core.windows.net/wn", "abfss://c@acct.dfs.core.windows.net/wn"),
        ("hdfs://nn:8020/wn", "hdfs://nn:8020/wn"),
        ("dbfs:/mnt/wn", "dbfs:/mnt/wn"),
        ("file://otherhost/share/wn", "file://otherhost/share/wn"),
    ],
)
def test_resolve_uri(location: str, expected: str) -> None:
    assert resolve_uri(location, base="/base") == expected


def test_resolve_uri_is_idempotent_and_local_path_inverts_it() -> None:
    for loc in ("./a/b", "/x/y", "file:/x/y", "s3a://b/k"):
        once = resolve_uri(loc, base="/base")
        assert resolve_uri(once, base="/elsewhere") == once
    assert local_path(resolve_uri("./a/b", base="/base")) == Path("/base/a/b")
    assert local_path("s3a://b/k") is None


def test_resolve_path_and_sqlite() -> None:
    assert resolve_path("./cache", base="/base") == "/base/cache"
    assert resolve_path("file:///c/d") == "/c/d"
    with pytest.raises(ValueError, match="local folder"):
        resolve_path("s3a://bucket/cache")
    assert (
        resolve_sqlite_uri("sqlite:///mlruns/mlflow.db", base="/base") == "sqlite:////base/mlruns/mlflow.db"
    )
    assert resolve_sqlite_uri("sqlite:////abs/m.db", base="/base") == "sqlite:////abs/m.db"
    assert resolve_sqlite_uri("http://mlflow:5000", base="/base") == "http://mlflow:5000"
    assert resolve_sqlite_uri("databricks", base="/base") == "databricks"
    assert resolve_sqlite_uri("mlruns", base="/base") == "file:///base/mlruns"  # MLflow's file store


def test_config_resolves_every_location_where_it_is_loaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaded in ``a/``, every location points into ``a/`` even after the process moves to ``b/``."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    monkeypatch.chdir(a)
    cfg = load_config(
        env="local",
        overrides=[
            "ingest.generic.path=in/ratings.csv",
            "ingest.generic.items_path=in/items.csv",
            "ingest.movielens.path=ml",
            "spark.local_dir=scratch",
            "report.scale_results=scale.json",
        ],
    )
    monkeypatch.chdir(b)
    uri = f"file://{a}"
    assert cfg.storage.lakehouse == f"{uri}/lakehouse"
    assert cfg.table_path("recommendations") == f"{uri}/lakehouse/recommendations"
    assert cfg.storage.checkpoint_dir == f"{uri}/lakehouse/_checkpoints"
    assert cfg.storage.cache_dir == f"{a}/data/cache"
    assert cfg.mlflow.tracking_uri == f"sqlite:///{a}/mlruns/mlflow.db"
    assert cfg.mlflow.artifact_location == f"{uri}/mlruns/artifacts"
    assert cfg.report.out_dir == f"{uri}/reports"
    assert cfg.ingest.generic.path == f"{uri}/in/ratings.csv"
    assert cfg.ingest.generic.items_path == f"{uri}/in/items.csv"
    assert cfg.ingest.movielens.path == f"{a}/ml"
    assert cfg.spark.local_dir == f"{a}/scratch"
    assert cfg.report.scale_results == f"{a}/scale.json"
    # a copy with overrides (as the stages' tests and the Airflow DAG make) keeps the resolution
    assert cfg.with_overrides("spark.shuffle_partitions=3").storage.lakehouse == f"{uri}/lakehouse"
    # defaults of the typed schema are resolved too, not only values read from YAML
    assert StorageConfig().lakehouse == f"file://{b}/lakehouse"
    assert os.getcwd() == str(b)


def test_empty_or_remote_local_path_is_named() -> None:
    with pytest.raises(ConfigError, match=r"'storage.lakehouse'.*must not be empty"):
        load_config(overrides=["storage.lakehouse=''"])
    with pytest.raises(ConfigError, match=r"'storage.cache_dir'.*local folder"):
        load_config(overrides=["storage.cache_dir=s3a://b/cache"])
