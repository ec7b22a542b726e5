"""What the session builder sets beyond Spark's own settings."""

from __future__ import annotations

import logging
from importlib import metadata

import py4j.java_gateway
import pytest
from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

from watchnext.cli import drop_py4j_retry_notices
from watchnext.session import (
    NETLIB_PROPERTIES,
    QUIET_LOGGERS,
    PreflightError,
    native_blas_library,
    native_blas_settings,
    quiet_expected_warnings,
)


@pytest.mark.spark
def test_expected_window_warnings_are_raised_to_error(spark: SparkSession) -> None:
    log4j = spark.sparkContext._jvm.org.apache.logging.log4j
    manager = log4j.LogManager
    window = manager.getLogger("org.apache.spark.sql.execution.window.WindowExec")
    spark.sparkContext.setLogLevel("WARN")  # what a default run sets (the test session runs at ERROR)
    # An earlier build_session in this JVM may have quieted them already: start from WARN.
    for name in QUIET_LOGGERS:
        log4j.core.config.Configurator.setLevel(name, log4j.Level.WARN)
    try:
        assert window.getLevel().toString() == "WARN"
        quiet_expected_warnings(spark)
        assert window.getLevel().toString() == "ERROR"
        assert manager.getRootLogger().getLevel().toString() == "WARN"  # only the listed loggers move
        assert all(manager.getLogger(n).getLevel().toString() == "ERROR" for n in QUIET_LOGGERS)
        # a global window still runs (the warning was the only thing dropped)
        df = spark.range(5).withColumn("r", F.row_number().over(Window.orderBy(F.col("id").desc())))
        assert [r.r for r in df.orderBy("id").collect()] == [5, 4, 3, 2, 1]
    finally:
        spark.sparkContext.setLogLevel("ERROR")


def test_only_py4j_info_notices_are_dropped() -> None:
    def record(name: str, level: int, path: str) -> logging.LogRecord:
        return logging.LogRecord(name, level, path, 1, "Exception while sending command.", None, None)

    assert not drop_py4j_retry_notices(record("root", logging.INFO, py4j.java_gateway.__file__))
    assert drop_py4j_retry_notices(record("root", logging.ERROR, py4j.java_gateway.__file__))
    assert drop_py4j_retry_notices(record("watchnext.x", logging.INFO, "/srv/watchnext/stages/ncf.py"))


def test_native_blas_library_auto_off_and_path(tmp_path) -> None:  # noqa: ANN001
    lib = tmp_path / "lib"
    lib.mkdir()
    assert native_blas_library("auto", prefix=str(tmp_path)) is None  # no MKL in this environment
    (lib / "libmkl_rt.so.2").write_bytes(b"")
    (lib / "libmkl_rt.so.3").write_bytes(b"")
    (lib / "libmkl_core.so.3").write_bytes(b"")
    assert native_blas_library("auto", prefix=str(tmp_path)) == str(lib / "libmkl_rt.so.3")
    assert native_blas_library("off", prefix=str(tmp_path)) is None
    assert native_blas_library(str(lib / "libmkl_core.so.3")) == str(lib / "libmkl_core.so.3")
    with pytest.raises(PreflightError, match="spark.native_blas: no library at"):
        native_blas_library(str(lib / "libopenblas.so"))


def test_native_blas_settings_append_to_java_options() -> None:
    got = native_blas_settings("/x/libmkl_rt.so.3", {"spark.driver.extraJavaOptions": "-XX:+UseParallelGC"})
    props = " ".join(f"-D{p}=/x/libmkl_rt.so.3" for p in NETLIB_PROPERTIES)
    assert got == {
        "spark.driver.extraJavaOptions": f"-XX:+UseParallelGC {props}",
        "spark.executor.extraJavaOptions": props,
        "spark.executorEnv.MKL_THREADING_LAYER": "SEQUENTIAL",
        "spark.executorEnv.MKL_CBWR": "AUTO",
    }
    assert native_blas_settings(None, {"a": "b"}) == {"a": "b"}


@pytest.mark.spark
def test_spark_linear_algebra_runs_on_the_venvs_mkl(spark: SparkSession) -> None:
    """pyproject's `mkl` dependency gives Spark native BLAS and LAPACK (ALS's dspr and dppsv), not
    netlib's Java fallback."""
    assert metadata.version("mkl")  # a dependency on Linux x86_64, where the suite runs
    assert native_blas_library("auto") is not None
    netlib = spark.sparkContext._jvm.dev.ludovic.netlib
    assert netlib.lapack.LAPACK.getInstance().getClass().getName() == "dev.ludovic.netlib.lapack.JNILAPACK"
    assert netlib.blas.NativeBLAS.getInstance().getClass().getName() == "dev.ludovic.netlib.blas.JNIBLAS"


@pytest.mark.spark
def test_python_workers_fork_from_the_frozen_daemon(spark: SparkSession) -> None:
    """A local master's session (the test session's too) sets spark.python.daemon.module: every task's
    worker was forked from watchnext.worker_daemon after it imported the kernels and froze them, so
    the collection the daemon runs after each task skips them."""
    assert spark.conf.get("spark.python.daemon.module") == "watchnext.worker_daemon"

    def probe(batches):  # noqa: ANN001, ANN202
        import gc
        import sys

        import pandas as pd

        for _ in batches:
            frozen = gc.get_freeze_count()
            yield pd.DataFrame({"frozen": [frozen], "numpy": ["numpy" in sys.modules]})

    rows = spark.range(8).repartition(2).mapInPandas(probe, "frozen long, numpy boolean").collect()
    assert len(rows) == 2 and all(r.numpy and r.frozen > 50_000 for r in rows)
