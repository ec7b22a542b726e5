"""The one SparkSession factory, and the preflight check of the runtime stack."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata

from pyspark.sql import SparkSession

from watchnext.config import SparkConfig

log = logging.getLogger(__name__)

DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"
DELTA_CATALOG = "org.apache.spark.sql.delta.catalog.DeltaCatalog"

# Delta release -> the Spark minor versions it is built for (Delta's release notes / compat table).
DELTA_SPARK_COMPAT: dict[str, tuple[str, ...]] = {
    "4.4": ("4.2", "4.1", "4.0"),
    "4.3": ("4.1", "4.0"),
    "4.2": ("4.1", "4.0"),
    "4.1": ("4.1", "4.0"),
    "4.0": ("4.0",),
}
MIN_JAVA = 17
SUPPORTED_PYTHON = ((3, 10), (3, 11))


class PreflightError(RuntimeError):
    """The installed Spark/Delta/Java/Python combination cannot work; the message says what to do."""


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def java_major_version(java_home: str | None = None) -> int | None:
    """Major version of the ``java`` Spark will launch (JAVA_HOME first, then PATH)."""
    java_home = java_home if java_home is not None else os.environ.get("JAVA_HOME")
    java = os.path.join(java_home, "bin", "java") if java_home else shutil.which("java")
    if not java or not os.path.exists(java):
        return None
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    m = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major  # "1.8" -> 8


def preflight(
    spark_version: str | None = None,
    delta_version: str | None = None,
    java_major: int | None = None,
    python: tuple[int, int] | None = None,
    check_delta: bool = True,
) -> None:
    """Fail fast, with an actionable message, when the versions do not fit together."""
    spark_version = spark_version or metadata.version("pyspark")
    python = python or sys.version_info[:2]
    problems: list[str] = []
    if python not in SUPPORTED_PYTHON:
        problems.append(
            f"Python {python[0]}.{python[1]} is not supported; use 3.10 or 3.11 (TensorFlow 2.18 and "
            "Horovod 0.28.1 build for these)."
        )
    if check_delta:
        try:
            delta_version = delta_version or metadata.version("delta-spark")
        except metadata.PackageNotFoundError:
            problems.append("delta-spark is not installed; run `make setup` (pip install -e .).")
        if delta_version:
            sparks = DELTA_SPARK_COMPAT.get(_minor(delta_version))
            if sparks is None:
                problems.append(
                    f"delta-spark {delta_version} is not a release this project knows; pin 4.4.x."
                )
            elif _minor(spark_version) not in sparks:
                problems.append(
                    f"pyspark {spark_version} does not fit delta-spark {delta_version} (built for Spark "
                    f"{', '.join(sparks)}); install the pair pinned in pyproject.toml (pyspark 4.2.0 + "
                    "delta-spark 4.4.0)."
                )
    java_major = java_major if java_major is not None else java_major_version()
    if java_major is None:
        problems.append("no Java found: install JDK 17 (or 21) and set JAVA_HOME.")
    elif java_major < MIN_JAVA:
        problems.append(f"Java {java_major} is too old for Spark 4; install JDK 17 or 21 and set JAVA_HOME.")
    if problems:
        raise PreflightError("watchnext preflight failed:\n  - " + "\n  - ".join(problems))


# Loggers whose WARN lines are expected by design, raised to ERROR when spark.log_level is WARN (a more
# verbose level keeps them). The metrics' and the report's windows over per-item aggregates (catalogue
# sized, ranked as a whole on purpose) each print "No Partition Defined for Window operation!".
QUIET_LOGGERS = ("org.apache.spark.sql.execution.window",)


def quiet_expected_warnings(spark: SparkSession) -> None:
    jvm = spark.sparkContext._jvm
    if jvm is None:  # a Spark Connect session: the server's logging is not ours to set
        return
    level = jvm.org.apache.logging.log4j.Level.ERROR
    for name in QUIET_LOGGERS:
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, level)


# Spark's Python daemon with the kernels imported and frozen before it forks (worker_daemon.py).
WORKER_DAEMON = "watchnext.worker_daemon"
NETLIB_PROPERTIES = ("dev.ludovic.netlib.blas.nativeLibPath", "dev.ludovic.netlib.lapack.nativeLibPath")
# MKL for the JVM: one thread per task (Spark runs a task per core), and its conditional numerical
# reproducibility mode, without which MKL's results may depend on the arrays' memory alignment, which
# the Java heap does not fix: a re-run must give the same factors bit for bit (same cost, measured).
MKL_ENV = {"MKL_THREADING_LAYER": "SEQUENTIAL", "MKL_CBWR": "AUTO"}


def native_blas_library(setting: str, prefix: str | None = None) -> str | None:
    """The native BLAS/LAPACK library Spark's netlib should load, or None for its Java BLAS.

    ``auto``: the MKL runtime (``libmkl_rt.so.*``, standard BLAS and LAPACK symbols) that PyPI's ``mkl``
    package puts under ``<prefix>/lib`` (``sys.prefix``: the venv), if installed; ``off``: none; else
    a path to such a library, which must exist. numpy's bundled OpenBLAS exports only prefixed
    symbols, so netlib cannot use it (``../shared/STACK.md``)."""
    if setting == "off":
        return None
    if setting == "auto":
        lib = os.path.join(prefix or sys.prefix, "lib")
        names = os.listdir(lib) if os.path.isdir(lib) else []
        found = sorted(f for f in names if re.fullmatch(r"libmkl_rt\.so(\.\d+)*", f))
        return os.path.join(lib, found[-1]) if found else None
    if not os.path.isfile(setting):
        raise PreflightError(f"spark.native_blas: no library at {setting!r} (auto, off, or a path)")
    return setting


def native_blas_settings(library: str | None, settings: dict[str, str]) -> dict[str, str]:
    """``settings`` with netlib pointed at ``library`` on the driver and the executors (appended to
    their ``extraJavaOptions``) and the executors' environment set to ``MKL_ENV``."""
    if library is None:
        return settings
    out = dict(settings)
    props = " ".join(f"-D{p}={library}" for p in NETLIB_PROPERTIES)
    for key in ("spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions"):
        out[key] = f"{out[key]} {props}" if out.get(key) else props
    for name, value in MKL_ENV.items():
        out.setdefault(f"spark.executorEnv.{name}", value)
    return out


def build_session(
    cfg: SparkConfig, checkpoint_dir: str | None = None, run_preflight: bool = True
) -> SparkSession:
    """Create (or return the active) SparkSession with Delta configured from ``cfg``.

    ``cfg.delta_jars == "maven"`` resolves Delta's jars through Ivy from Maven Central via
    ``configure_spark_with_delta_pip`` (the version follows the installed delta-spark); ``"provided"``
    trusts the cluster's classpath.
    """
    if run_preflight:
        preflight(check_delta=True)
    if cfg.master and cfg.master.startswith("local"):
        # Local Python workers must run this interpreter (the venv), not whatever `python3` is on PATH.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(cfg.app_name)
    if cfg.master:
        builder = builder.master(cfg.master)
    settings = {
        "spark.sql.extensions": DELTA_EXTENSION,
        "spark.sql.catalog.spark_catalog": DELTA_CATALOG,
        "spark.sql.shuffle.partitions": str(cfg.shuffle_partitions),
        "spark.ui.enabled": str(cfg.ui_enabled).lower(),
        "spark.sql.session.timeZone": "UTC",
        # Arrow for toPandas / mapInPandas / createDataFrame(pandas)
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.databricks.delta.schema.autoMerge.enabled": "false",
    }
    if cfg.driver_memory:
        settings["spark.driver.memory"] = cfg.driver_memory
    if cfg.local_dir:
        settings["spark.local.dir"] = cfg.local_dir
    if cfg.worker_daemon and cfg.master and cfg.master.startswith("local"):
        settings["spark.python.daemon.module"] = WORKER_DAEMON
    settings.update(cfg.conf)
    blas = native_blas_library(cfg.native_blas)
    if blas is not None:
        settings = native_blas_settings(blas, settings)
        for name, value in MKL_ENV.items():  # a local driver JVM inherits them
            os.environ.setdefault(name, value)
    for k, v in settings.items():
        builder = builder.config(k, v)
    if cfg.delta_jars == "maven":
        from delta.pip_utils import configure_spark_with_delta_pip

        builder = configure_spark_with_delta_pip(builder, extra_packages=list(cfg.extra_packages))
    elif cfg.extra_packages:
        builder = builder.config("spark.jars.packages", ",".join(cfg.extra_packages))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(cfg.log_level)
    if cfg.log_level == "WARN":
        quiet_expected_warnings(spark)
    if checkpoint_dir:
        # ALS ignores checkpointInterval silently unless a checkpoint dir is set.
        spark.sparkContext.setCheckpointDir(checkpoint_dir)
    log.info(
        "Spark %s session %s (master %s; BLAS %s)",
        spark.version,
        cfg.app_name,
        spark.sparkContext.master,
        blas or "netlib's Java BLAS",
    )
    return spark
