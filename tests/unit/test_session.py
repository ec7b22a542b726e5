"""What the session builder sets beyond Spark's own settings."""

from __future__ import annotations

import logging

import py4j.java_gateway
import pytest
from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

from watchnext.cli import drop_py4j_retry_notices
from watchnext.session import QUIET_LOGGERS, quiet_expected_warnings


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
