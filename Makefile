# watchnext — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
HOROVOD_VERSION := 0.28.1
# Extra pip extras for the job stack, e.g. `make setup EXTRAS=dev,gpu` on GPU workers.
EXTRAS ?= dev
# Horovod build flags (../shared/STACK.md): TF + Gloo, no MPI/PyTorch/MXNet. GPU workers add
# HOROVOD_GPU_OPERATIONS=NCCL via `make setup-gpu`.
HOROVOD_FLAGS ?= HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
	HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
ARGS ?=
# pytest workers for make test (pytest-xdist; tests/conftest.py keeps a module on one worker). The suite's
# Spark jobs on test data are mostly latency-bound (JVM starts, scheduling), so 2 workers overlap them.
TEST_WORKERS ?= 2
# Airflow lives in a virtual environment of its own (protobuf 7 vs TF 2.18's protobuf<6): see
# airflow_dags/requirements.txt for the direct pins and constraints-3.11.txt for the full set.
AIRFLOW_VENV ?= .venv-airflow
AIRFLOW_PY := $(AIRFLOW_VENV)/bin/python

export TF_USE_LEGACY_KERAS := 1
export PYTHONHASHSEED := 0

.PHONY: help setup setup-gpu setup-browser run test test-fast lint bench scale quality clean airflow-constraints package

help: ## Show this help
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade "pip>=24" "setuptools>=68,<81" wheel

$(VENV)/.deps-stamp: $(PY) pyproject.toml
	$(PIP) install --progress-bar off -e ".[$(EXTRAS)]"
	@touch $@

# Horovod 0.28.1 ships as an sdist and compiles against the installed TensorFlow, so it comes after
# the job stack, without build isolation. TF 2.18's headers include highwayhash from include/external.
$(VENV)/.horovod-stamp: $(VENV)/.deps-stamp
	TF_INC=$$($(PY) -c "import tensorflow as tf; print(tf.sysconfig.get_include())" 2>/dev/null) && \
	env $(HOROVOD_FLAGS) MAKEFLAGS=-j$$(nproc) CMAKE_POLICY_VERSION_MINIMUM=3.5 \
	    CXXFLAGS="-I$$TF_INC/external/highwayhash" \
	    $(PIP) install --progress-bar off --no-build-isolation "horovod==$(HOROVOD_VERSION)"
	TF_CPP_MIN_LOG_LEVEL=3 $(PY) -c "import horovod.tensorflow as hvd, horovod.spark; from horovod.common.util import gloo_built; assert gloo_built(), 'horovod built without Gloo'"
	@touch $@

# Spark fetches Delta's jars (spark.jars.packages) into the Ivy cache on its first start: part of the
# set-up, so the first `make run` does not spend its first seconds on downloads.
$(VENV)/.jars-stamp: $(VENV)/.deps-stamp
	$(PY) -c "from watchnext.config import load_config; from watchnext.pipeline import session_for; \
	    session_for(load_config().with_overrides('spark.log_level=ERROR')).stop()"
	@touch $@

$(AIRFLOW_VENV)/.airflow-stamp: airflow_dags/requirements.txt airflow_dags/constraints-3.11.txt
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_PY) -m pip install --quiet --upgrade "pip>=24"
	$(AIRFLOW_PY) -m pip install --progress-bar off -r airflow_dags/requirements.txt \
	    -c airflow_dags/constraints-3.11.txt
	$(AIRFLOW_PY) -c "import airflow.sdk, airflow.providers.apache.spark.operators.spark_submit"
	@touch $@

setup: $(VENV)/.horovod-stamp $(VENV)/.jars-stamp $(AIRFLOW_VENV)/.airflow-stamp setup-browser ## Create .venv (the job stack: Spark, Delta, TF, Horovod, MLflow) and .venv-airflow (Airflow)
	@echo "watchnext installed in $(VENV), Airflow in $(AIRFLOW_VENV)"

# The report test renders the page in headless Chromium driven by selenium (the [dev] extra). Browser
# downloads are not possible here, so Chromium and its matching chromedriver come from Debian's packages
# (apt-get as root, else through sudo); nothing is done when both are already on PATH.
setup-browser: ## Install headless Chromium + chromedriver from Debian (the run report's browser test)
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	    echo "chromium: $$(chromedriver --version | cut -d' ' -f1-2)"; \
	else \
	    SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q \
	        --no-install-recommends chromium chromium-driver fonts-dejavu-core; \
	fi

airflow-constraints: ## Re-resolve .venv-airflow from requirements.txt alone and rewrite its constraints file
	rm -rf $(AIRFLOW_VENV)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_PY) -m pip install --quiet --upgrade "pip>=24"
	$(AIRFLOW_PY) -m pip install --progress-bar off -r airflow_dags/requirements.txt
	{ echo "# Every package of .venv-airflow, pinned: \`pip freeze\` of a clean install of requirements.txt"; \
	  echo "# (Python 3.11, Linux, $$(date +%Y-%m)). Regenerate: make airflow-constraints"; \
	  $(AIRFLOW_PY) -m pip freeze; } > airflow_dags/constraints-3.11.txt
	@touch $(AIRFLOW_VENV)/.airflow-stamp

setup-gpu: ## Same, on a GPU worker: TF with CUDA wheels, Horovod with NCCL
	$(MAKE) setup EXTRAS=dev,gpu HOROVOD_FLAGS="$(HOROVOD_FLAGS) HOROVOD_GPU_OPERATIONS=NCCL"

package: $(VENV)/.deps-stamp ## Build dist/watchnext-*.whl (pip install on cluster nodes) and dist/watchnext.zip (--py-files)
	rm -rf dist && $(PIP) wheel --no-deps --no-build-isolation -q -w dist .
	cp dist/watchnext-*.whl dist/watchnext.zip
	@ls -1 dist

# Only the job environment: no Airflow, no browser, no root (the browser is for the report's test).
run: $(VENV)/.horovod-stamp $(VENV)/.jars-stamp ## Set up the job environment, then run the whole pipeline locally (Delta in ./lakehouse, MLflow in ./mlruns, the report in ./reports)
	$(VENV)/bin/watchnext run $(ARGS)

# pytest exits 5 when it collects no test: that is not a failure of the suite.
test: setup ## Run every test (Spark, Delta, MLflow, Horovod for real)
	$(VENV)/bin/pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder $(ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest: no tests collected"; rc=0; fi; exit $$rc

test-fast: setup ## Tests without the slow / horovod markers
	$(VENV)/bin/pytest -m "not slow and not horovod" $(ARGS)

lint: setup ## ruff on the code, mypy on lib/ ([tool.mypy] in pyproject.toml)
	$(VENV)/bin/ruff check lib jobs tests benchmarks airflow_dags
	$(VENV)/bin/mypy

quality: setup ## Quality report: the whole pipeline on ../shared/datasets/ml-latest-small
	$(PY) benchmarks/quality.py $(ARGS)

# Every bench_*.py in its own process, then one table of ratios: benchmarks/results/BENCH.md + bench.json.
# ARGS=--quick: the smallest sizes (a smoke run); ARGS="--only topn,als" a subset.
bench: setup ## Benchmarks: one table of ratios against references measured in the same run (< 30 min on 2 cores)
	$(PIP) install --quiet -e ".[bench]"
	$(PY) benchmarks/run_all.py $(ARGS)

# Synthetic data at 1M, 5M and 20M interactions through every stage (conf/scale.yaml), one process per
# stage: wall time and peak memory per stage in benchmarks/results/scale.{json,md}. ARGS="--sizes 1M".
scale: setup ## Scale runs: per-stage wall time and peak memory at 1M / 5M / 20M synthetic interactions
	$(PY) benchmarks/scale.py $(ARGS)

clean: ## Remove local tables, MLflow store and caches (keeps .venv)
	rm -rf lakehouse mlruns reports logs spark-warehouse metastore_db derby.log .pytest_cache
