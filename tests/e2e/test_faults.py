"""Reliability: idempotent re-runs and real faults.

* **Idempotence**: the whole pipeline (every stage, NCF and MLflow included) run twice for the same run
  date leaves every table it writes identical, compared whole and exactly; only the columns that name
  the MLflow run (``run_id``) or the registry versions it produced (``model_versions``) differ. The
  first run is the session's scheduled one (``conftest.whole_run``: the Airflow DAG, one spark-submit
  per stage), the second ``watchnext run``'s path (every stage in this process), on a copy of its
  outputs: a re-run of a day gives the same tables whichever way it is started.
* **Killed jobs**: the ingest and recommend jobs run as subprocesses (``jobs/<stage>.py``, their own
  JVM) and are killed with SIGKILL, the whole process group (Python driver, JVM, Python workers), at
  seeded random delays after their first Delta file appears, spread over the write phase measured on a
  run of the same job that was not killed (``KILLS_INGEST`` + ``KILLS_RECOMMEND`` kills a run). After
  each kill every table is readable and holds exactly the content of its previous version or of the
  new one, never a mix; re-running completes it.
* **A Spark task failure** injected into every Delta write of the
  recommend job (``fault_job.py``: the first attempt of a task raises) under a master that allows
  retries (``local[2,4]``): Spark retries and the tables equal a clean run's.
* **A Horovod worker that dies** (``os._exit`` in rank 1 at the start of its second epoch) fails the
  training with an error naming the rank, in bounded time, instead of hanging the surviving rank.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from delta.tables import DeltaTable
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from support.common import E2E_TIMEOUT, RUN_DATE, local_overrides
from support.whole_run import WHOLE_RUN, WholeRun
from watchnext import pipeline, tables
from watchnext.cli import delta_tables
from watchnext.config import Config, load_config
from watchnext.constants import (
    TABLE_BECAUSE_YOU_WATCHED,
    TABLE_EVAL_RECS,
    TABLE_GENRE_ROWS,
    TABLE_INTERACTIONS,
    TABLE_ITEM_INDEX,
    TABLE_ITEMS,
    TABLE_RECOMMENDATIONS,
    TABLE_RECOMMENDATIONS_LATEST,
    TABLE_REJECTS,
    TABLE_USER_INDEX,
)
from watchnext.locations import local_path

# The session's whole pipeline run (conftest.whole_run) may be the setup of any of these tests.
pytestmark = [pytest.mark.spark, pytest.mark.delta, pytest.mark.mlflow, pytest.mark.slow]
pytestmark += [pytest.mark.timeout(E2E_TIMEOUT)]

log = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[2]
EXACT = {"rtol": 0.0, "atol": 0.0}
# Columns that legitimately differ between two runs of the same date: the MLflow run that wrote the
# row, and the registry versions of the models (each run registers a new version).
RUN_SPECIFIC = ("run_id", "model_versions")
KILLS_INGEST = 6
KILLS_RECOMMEND = 4

# Two recommend configurations whose tables differ everywhere (so a kill's outcome is told apart). The
# job under the kills writes the same tables as with every source, from its cheapest sources and
# without weight tuning: each kill costs a JVM start and the stage up to its writes.
RECOMMEND_A = [
    "recommend.tuning.enabled=false",
    "recommend.sources=[cluster, popular, trending]",
    "recommend.weights={cluster: 1.0, popular: 0.2, trending: 0.1}",
]
RECOMMEND_B = [
    *RECOMMEND_A,
    "recommend.n=8",
    "recommend.because_k=4",
    "recommend.genre_row_length=4",
    "recommend.weights={cluster: 0.2, popular: 1.0, trending: 0.5}",
]
RECOMMEND_TABLES = [
    TABLE_EVAL_RECS,
    TABLE_RECOMMENDATIONS,
    TABLE_RECOMMENDATIONS_LATEST,
    TABLE_GENRE_ROWS,
    TABLE_BECAUSE_YOU_WATCHED,
]
INGEST_TABLES = [TABLE_USER_INDEX, TABLE_ITEM_INDEX, TABLE_REJECTS, TABLE_ITEMS, TABLE_INTERACTIONS]


# ------------------------------------------------------------------------------------------ helpers
def version(spark: SparkSession, path: str) -> int | None:
    return DeltaTable.forPath(spark, path).history(1).first().version if tables.exists(spark, path) else None


def versions(spark: SparkSession, cfg: Config, names: list[str]) -> dict[str, int | None]:
    return {n: version(spark, cfg.table_path(n)) for n in names}


def at(spark: SparkSession, path: str, v: int, drop: tuple[str, ...] = ()) -> DataFrame:
    df = spark.read.format("delta").option("versionAsOf", v).load(path)
    return df.drop(*[c for c in drop if c in df.columns])


def current(spark: SparkSession, path: str) -> DataFrame:
    """The table's latest version, without the column naming the run that wrote it."""
    v = version(spark, path)
    assert v is not None, f"{path} is not a Delta table"
    return at(spark, path, v, ("run_id",))


def same(a: DataFrame, b: DataFrame) -> bool:
    try:
        assertDataFrameEqual(a, b, **EXACT)
    except AssertionError:
        return False
    return True


def state_of(spark: SparkSession, path: str, v: int, candidates: dict[str, int | None]) -> str:
    """The label of the candidate version whose content the table holds at version ``v``; fails the
    test when it holds none of them (a partial or mixed write)."""
    got = at(spark, path, v, ("run_id",)).localCheckpoint()
    got.count()  # readable, every file of the version
    for label, cv in candidates.items():
        if cv is not None and (cv == v or same(got, at(spark, path, cv, ("run_id",)))):
            return label
    pytest.fail(f"{path} at version {v} holds neither of {candidates}: a partial write")


def job_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(TF_USE_LEGACY_KERAS="1", PYTHONHASHSEED="0", PYSPARK_PYTHON=sys.executable)
    return env


def job_command(
    stage: str, overrides: list[str], run_date: dt.date, runner: list[str] | None = None
) -> list[str]:
    cmd = [sys.executable, *(runner or [str(ROOT / "jobs" / f"{stage}.py")])]
    cmd += ["--run-date", run_date.isoformat(), "--env", "local"]
    for o in overrides:
        cmd += ["--conf", o]
    return cmd


def _files(dirs: list[Path]) -> set[str]:
    out: set[str] = set()
    for d in dirs:
        for root, _, names in os.walk(d):
            out.update(os.path.join(root, n) for n in names)
    return out


@dataclass
class Outcome:
    killed: bool
    rc: int | None
    seconds: float  # from start to exit or kill
    write_start: float | None  # seconds from start to the first new file under the watched tables
    write_span: float | None = None  # un-killed runs: first to last new file
    delay: float | None = None  # killed runs: seconds after write_start


def run_job(
    cmd: list[str], watch: list[Path], log_file: Path, kill_after: float | None, timeout: float
) -> Outcome:
    """Run ``cmd`` in a process group of its own; with ``kill_after``, SIGKILL the whole group that many
    seconds after the first new file appears under ``watch`` (if it has not finished by then)."""
    before = _files(watch)
    t0 = time.monotonic()
    write_start = last_new = None
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=job_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if now - t0 > timeout:
                raise TimeoutError(f"{cmd[1]} ran over {timeout} s; log: {log_file}")
            if kill_after is None or write_start is None:
                new = _files(watch) - before
                if new:
                    write_start = write_start if write_start is not None else now
                    last_new = now
                    before |= new
            if write_start is not None and kill_after is not None and now - write_start >= kill_after:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                _wait_gone(proc.pid)
                return Outcome(True, None, now - t0, write_start - t0, delay=kill_after)
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    end = time.monotonic()
    start = None if write_start is None else write_start - t0
    span = None if write_start is None or last_new is None else last_new - write_start
    return Outcome(False, proc.returncode, end - t0, start, write_span=span)


class Watch:
    """Times the write phase of work done in this process: first to last new file under ``dirs``."""

    def __init__(self, dirs: list[Path]) -> None:
        self.dirs, self.first, self.last = dirs, None, None
        self._stop = threading.Event()

    def __enter__(self) -> Watch:
        self._seen = _files(self.dirs)
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            new = _files(self.dirs) - self._seen
            if new:
                now = time.monotonic()
                self.first = self.first or now
                self.last = now
                self._seen |= new
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def span(self) -> float:
        assert self.first is not None and self.last is not None, f"no file written under {self.dirs}"
        return self.last - self.first


def delays(n: int, window: float, seed: int) -> list[float]:
    """``n`` seeded random delays spread over ``[0, window]``: one uniform draw in each n-th of it."""
    rng = random.Random(seed)
    return [(k + rng.random()) * window / n for k in range(n)]


def _wait_gone(pgid: int, limit: float = 30.0) -> None:
    """Until no process of the killed group still runs (the JVM and the Python workers die with the
    driver). A zombie counts as gone: it has stopped and only waits to be reaped, which this container's
    init does for orphans only every half minute or so."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and _running_in_group(pgid):
        time.sleep(0.05)


def _running_in_group(pgid: int) -> bool:
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.exists() else ""


# ------------------------------------------------------------------------------------- idempotence
@dataclass
class Built:
    cfg: Config
    overrides: list[str]
    tmp: Path
    versions: dict[str, int | None] = field(default_factory=dict)


@pytest.fixture(scope="module")
def built(spark: SparkSession, whole_run: WholeRun, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The session's whole pipeline run (conftest.whole_run: the DAG, every stage, cheapest settings),
    copied: these tests rewrite its tables."""
    run = whole_run.copy(tmp_path_factory.mktemp("faults"))
    names = [name for name, _ in delta_tables(run.cfg.storage.lakehouse)]
    return Built(run.cfg, run.overrides, run.tmp, versions(spark, run.cfg, names))


def test_whole_pipeline_rerun_for_the_same_date_is_identical(spark: SparkSession, built: Built) -> None:
    cfg = built.cfg
    t0 = time.perf_counter()
    results = pipeline.run_pipeline(spark, cfg, RUN_DATE)
    log.warning("whole pipeline, second run: %.1f s", time.perf_counter() - t0)
    assert [s for s in results if s != "pipeline"] == list(cfg.pipeline.stages)
    assert not results["ncf"].get("skipped")
    # every table the pipeline writes, and each one rewritten by the second run
    names = [name for name, _ in delta_tables(cfg.storage.lakehouse)]
    assert set(names) == set(built.versions)
    assert {
        "interactions", "items", "rejects", "user_index", "item_index", "user_factors", "item_factors",
        "eval_recommendations", "eval_factors", "eval_neighbors", "evaluation", "item_features",
        "item_clusters", "clusters", "user_cluster_affinity", "item_similarities", "user_neighbors",
        "ncf_scores", "recommendations", "recommendations_latest", "genre_rows", "because_you_watched",
    } <= set(names)  # fmt: skip
    now = versions(spark, cfg, names)
    # each table rewritten, except the index (no new ids) and what is empty both times (Delta skips
    # a commit that would neither add nor remove a file)
    rewritten = {n for n in names if now[n] != built.versions[n]}
    assert rewritten >= set(names) - {"user_index", "item_index", "rejects"}
    for name in sorted(names):
        path = cfg.table_path(name)
        first = at(spark, path, built.versions[name], RUN_SPECIFIC)
        second = at(spark, path, now[name], RUN_SPECIFIC)
        assert first.columns == second.columns, name
        assert name == "rejects" or not first.isEmpty(), name  # synthetic data may have no rejects
        assertDataFrameEqual(second, first, **EXACT)


# ------------------------------------------------------------------------------- killed recommend
@dataclass
class Refs:
    """The recommend stage run in this process with config A, then B: their table versions."""

    overrides: dict[str, list[str]]
    cfgs: dict[str, Config]
    versions: dict[str, dict[str, int | None]]
    window: float  # seconds from the first new file of the stage's tables to the last


@pytest.fixture(scope="module")
def refs(spark: SparkSession, built: Built) -> Refs:
    overrides = {"a": [*built.overrides, *RECOMMEND_A], "b": [*built.overrides, *RECOMMEND_B]}
    cfgs = {k: load_config(env="local", overrides=v) for k, v in overrides.items()}
    out, window = {}, 0.0
    for name in ("a", "b"):
        with Watch(recommend_watch(cfgs[name])) as w:
            pipeline.run_stage(spark, cfgs[name], RUN_DATE, "recommend")
        window = max(window, w.span)
        out[name] = versions(spark, cfgs[name], RECOMMEND_TABLES)
    cfg = cfgs["a"]
    for t in RECOMMEND_TABLES:  # the two states differ in every table, so a kill's outcome is told apart
        a, b = (at(spark, cfg.table_path(t), out[k][t], ("run_id",)) for k in ("a", "b"))
        assert not same(a, b), t
    return Refs(overrides, cfgs, out, window)


def recommend_watch(cfg: Config) -> list[Path]:
    """Every table the stage writes: its write phase starts with the blend's offline lists
    (``eval_recommendations``) and ends with ``because_you_watched``."""
    return [local_path(cfg.table_path(t)) for t in RECOMMEND_TABLES]


# Each kill costs a JVM start and the stage up to its writes (about 45 s on 2 cores): the suite's budget
# sets KILLS_RECOMMEND.
def test_recommend_killed_during_its_writes(spark: SparkSession, built: Built, refs: Refs) -> None:
    cfg = refs.cfgs["a"]
    paths = {t: cfg.table_path(t) for t in RECOMMEND_TABLES}
    logs = built.tmp / "recommend-jobs.log"
    prev, target = versions(spark, cfg, RECOMMEND_TABLES), "b"  # the state refs left: B
    outcomes: list[tuple[Outcome, dict[str, str]]] = []
    t0 = time.monotonic()
    for delay in delays(KILLS_RECOMMEND, refs.window, seed=20240601):
        target = "b" if target == "a" else "a"
        cmd = job_command("recommend", refs.overrides[target], RUN_DATE)
        out = run_job(cmd, recommend_watch(cfg), logs, delay, 1500)
        assert out.killed or out.rc == 0, _tail(logs)
        now = versions(spark, cfg, RECOMMEND_TABLES)
        states = {
            t: state_of(spark, paths[t], now[t], {"previous": prev[t], target: refs.versions[target][t]})
            for t in RECOMMEND_TABLES
        }
        prev = now
        outcomes.append((out, states))
    killed = [o for o, _ in outcomes if o.killed]
    log.warning(
        "recommend: %d of %d runs killed in %.0f s (write phase %.1f s); delays and outcomes: %s",
        len(killed), len(outcomes), time.monotonic() - t0, refs.window,
        [(round(o.delay or -1, 2), sorted(set(s.values()))) for o, s in outcomes],
    )  # fmt: skip
    assert len(killed) >= KILLS_RECOMMEND - 1  # one may finish before its delay is up

    # re-running completes it
    pipeline.run_stage(spark, refs.cfgs[target], RUN_DATE, "recommend")
    final = versions(spark, cfg, RECOMMEND_TABLES)
    for t in RECOMMEND_TABLES:
        assert state_of(spark, paths[t], final[t], {target: refs.versions[target][t]}) == target


# ------------------------------------------------------------------------------ task failure retried
def test_task_failure_mid_stage_is_retried_with_an_identical_result(
    spark: SparkSession, built: Built, refs: Refs
) -> None:
    cfg = refs.cfgs["a"]
    markers = built.tmp / "task-failures"
    logs = built.tmp / "fault-job.log"
    overrides = [*refs.overrides["a"], "spark.master=local[2,4]"]  # up to 4 attempts per task
    runner = [str(ROOT / "tests" / "support" / "fault_job.py"), str(markers), "recommend"]
    before = versions(spark, cfg, RECOMMEND_TABLES)
    out = run_job(job_command("recommend", overrides, RUN_DATE, runner), [], logs, None, 1500)
    assert out.rc == 0, _tail(logs)
    failed = sorted(p.name.split("-stage")[0] for p in markers.iterdir())
    # the first attempt of a task failed in every partition-scoped write of the stage; Spark retried it
    assert failed == sorted(["eval_recommendations", "recommendations", "genre_rows", "because_you_watched"])
    assert "injected task failure" in logs.read_text(errors="replace")
    now = versions(spark, cfg, RECOMMEND_TABLES)
    for t in RECOMMEND_TABLES:
        assert now[t] != before[t]
        path = cfg.table_path(t)
        assertDataFrameEqual(
            at(spark, path, now[t], ("run_id",)), at(spark, path, refs.versions["a"][t], ("run_id",)), **EXACT
        )


# ------------------------------------------------------------------------------------ killed ingest
def _ingest_input(folder: Path, k: int) -> list[str]:
    """Iteration ``k``'s files: 40 users x 8 of 30 items with k-dependent ratings, one new user and one
    new item (so the index tables are extended by a MERGE), and one rejected row."""
    rng = random.Random(k)
    ratings = ["user_id,item_id,rating,timestamp"]
    for u in range(1, 41):
        for i in rng.sample(range(1, 31), 8):
            ratings.append(f"{u},{i},{(u * i + k) % 10 / 2 + 0.5},{1_700_000_000 + u * 100 + i}")
    ratings += [f"{1000 + k},{i},4.0,1700000000" for i in (1, 2, 500 + k)]
    ratings.append(f"{u},{k}x,4.0,1700000000")  # non-numeric item id: a reject naming k
    items = ["item_id,title,genres"] + [f"{i},Film {i} ({1990 + i % 20}),Drama|Comedy" for i in range(1, 31)]
    items.append(f"{500 + k},New film {k} (2024),Drama")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.csv").write_text("\n".join(ratings) + "\n")
    (folder / "items.csv").write_text("\n".join(items) + "\n")
    return [
        "ingest.source=generic",
        f"ingest.generic.path={folder / 'ratings.csv'}",
        f"ingest.generic.items_path={folder / 'items.csv'}",
    ]


def test_ingest_killed_during_its_writes(spark: SparkSession, tmp_path: Path) -> None:
    """The ingest job (input 1) killed at spread moments of its writes over the tables input 0 left
    (each kill on a fresh copy of them): every table holds input 0's content or input 1's, never a mix;
    re-running a killed one completes it. Input 1's content comes from a run of the same job on a copy
    that was not killed; its write phase is the window the kills are spread over."""

    inputs = {k: _ingest_input(tmp_path / f"in{k}", k) for k in (0, 1)}  # written once

    def overrides(folder: Path, k: int) -> list[str]:
        return [*local_overrides(folder), *WHOLE_RUN[:3], *inputs[k]]

    def paths(folder: Path) -> dict[str, str]:
        c = load_config(env="local", overrides=overrides(folder, 1))
        return {t: c.table_path(t) for t in INGEST_TABLES}

    base = tmp_path / "base"
    pipeline.run_stage(spark, load_config(env="local", overrides=overrides(base, 0)), RUN_DATE, "ingest")

    def copy_of_base(folder: Path) -> Path:  # the tables and the MLflow store input 0 left
        for name in ("lakehouse", "mlruns"):
            shutil.copytree(base / name, folder / name)
        return folder

    logs = tmp_path / "ingest-jobs.log"
    ref = copy_of_base(tmp_path / "ref")
    cmd = job_command("ingest", overrides(ref, 1), RUN_DATE)
    base_paths, ref_paths = paths(base), paths(ref)
    clean = run_job(cmd, [local_path(p) for p in ref_paths.values()], logs, None, 900)
    assert clean.rc == 0 and clean.write_span, _tail(logs)
    contents = {
        t: {
            "previous": current(spark, base_paths[t]).localCheckpoint(),
            "new": current(spark, ref_paths[t]).localCheckpoint(),
        }
        for t in INGEST_TABLES
    }
    for t, c in contents.items():  # the two states differ in every table, so an outcome is told apart
        assert not same(c["previous"], c["new"]), t

    def state(folder: Path) -> dict[str, str]:
        out = {}
        for t, path in paths(folder).items():
            got = current(spark, path).localCheckpoint()
            out[t] = next((k for k, df in contents[t].items() if same(got, df)), "partial")
            assert out[t] != "partial", f"{path} holds neither the previous nor the new content"
        return out

    summary: list[tuple[float, bool, dict[str, str], Path]] = []
    t0 = time.monotonic()
    for k, delay in enumerate(delays(KILLS_INGEST, clean.write_span, seed=1)):
        # A run faster than the clean one (less load on the machine) can finish before a late delay:
        # that run is kept and checked, and the kill is tried again at half the delay, twice at most.
        for attempt in range(3):
            folder = copy_of_base(tmp_path / f"kill{k}-{attempt}")
            cmd = job_command("ingest", overrides(folder, 1), RUN_DATE)
            out = run_job(cmd, [local_path(p) for p in paths(folder).values()], logs, delay, 900)
            assert out.killed or out.rc == 0, _tail(logs)
            summary.append((round(delay, 2), out.killed, state(folder), folder))
            if out.killed:
                break
            delay /= 2
    log.warning(
        "ingest: write phase %.1f s; %d kills in %.0f s (delay, killed, tables at the new content): %s",
        clean.write_span, KILLS_INGEST, time.monotonic() - t0,
        [(d, killed, sorted(t for t, s in states.items() if s == "new")) for d, killed, states, _ in summary],
    )  # fmt: skip
    assert sum(1 for _, killed, _, _ in summary if killed) >= KILLS_INGEST - 1
    # spread over the writes: some kills came before a commit, some after
    assert {"previous", "new"} <= {s for _, _, states, _ in summary for s in states.values()}

    # re-running completes a killed run: the one whose kill left the most tables at the new content
    # short of all of them (a kill between the commits), else one that committed nothing
    unfinished = [
        (sum(s == "new" for s in st.values()), f) for _, _, st, f in summary if "previous" in st.values()
    ]
    folder = max(unfinished, key=lambda x: x[0])[1]
    pipeline.run_stage(spark, load_config(env="local", overrides=overrides(folder, 1)), RUN_DATE, "ingest")
    final = paths(folder)
    for t, path in final.items():
        assertDataFrameEqual(current(spark, path), contents[t]["new"], **EXACT)
    # the index was only ever extended: every id once, dense indices 0..n-1
    for t, col in ((TABLE_USER_INDEX, "user"), (TABLE_ITEM_INDEX, "item")):
        index = tables.read(spark, final[t])
        n = index.count()
        assert index.select(f"{col}_id").distinct().count() == n
        assert tuple(index.agg(F.min(f"{col}_idx"), F.max(f"{col}_idx")).first()) == (0, n - 1)


# ------------------------------------------------------------------------------ Horovod worker dies
@pytest.mark.horovod
def test_a_dead_horovod_worker_fails_training_in_bounded_time(spark: SparkSession, tmp_path: Path) -> None:
    import numpy as np

    from watchnext.models import ncf_data
    from watchnext.models.ncf import NcfSpec
    from watchnext.models.ncf_train import TrainJob, TrainParams, run_training

    n_users, n_items = 60, 40
    rng = np.random.default_rng(0)
    pairs = [(u, int(i)) for u in range(n_users) for i in rng.choice(n_items, 8, replace=False)]
    train = spark.createDataFrame(pairs, "user_idx int, item_idx int")
    rows = ncf_data.training_rows(train, n_items, num_negatives=4, rounds=1, seed=1)
    data = ncf_data.write_shards(rows, str(tmp_path / "train"), shards=4, seed=1)
    job = TrainJob(
        spec=NcfSpec(n_users=n_users, n_items=n_items, mf_dim=4, mlp_layers=[8, 4], l2=0.0).to_dict(),
        params=TrainParams(epochs=3, batch_size=32, seed=1),
        train=data,
        model_dir=str(tmp_path / "model"),
        crash_at=(1, 1),  # rank 1 dies at the start of its second epoch; rank 0 is then in an allreduce
    )
    t0 = time.monotonic()
    # Which exit Horovod reports first is a race: the crashed rank 1 (code 17), or rank 0 failing its
    # allreduce on the reset connection (code 1). Either way the job fails instead of hanging.
    first_exit = r"exited with non-zero status.*\nProcess name: (1\nExit code: 17|0\nExit code: 1)\n"
    with pytest.raises(RuntimeError, match=first_exit):
        run_training(spark, job, num_proc=2, start_timeout=300)
    elapsed = time.monotonic() - t0
    log.warning("dead Horovod worker: training failed after %.1f s", elapsed)
    # the surviving rank saw the closed connection instead of waiting in the allreduce forever
    assert elapsed < 600
    # nothing is left running, and the session still works
    assert spark.sparkContext.statusTracker().getActiveJobsIds() == []
    assert spark.range(10).count() == 10
    assert not (tmp_path / "model").exists()  # rank 0 never saved a model
