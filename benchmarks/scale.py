"""Scale runs: every pipeline stage on synthetic data of growing size, one process per stage (``make scale``).

    .venv/bin/python benchmarks/scale.py [--sizes 1M,5M,20M] [--stages ingest,als,...] [--deadline 20:05]

For each size the synthetic generator (``lib/watchnext/ingest/synthetic.py``) makes the data inside
the ingest stage, with users and items growing as a catalogue does: users = interactions / 40 (the mean
per user), items growing about as the square root of the interactions (a catalogue grows more slowly
than its audience), more genre clusters. Config: ``conf/base.yaml`` -> ``conf/local.yaml`` ->
``conf/scale.yaml`` (searches off, NCF at a CPU size) -> the sizes below, with every table, the MLflow
store and the report in a scratch folder (``--work``, default ``/tmp/watchnext-scale``).

Each stage runs as its own ``python -m watchnext.cli <stage>`` process (its own JVM, as under Airflow);
a sampler thread reads the process tree every ``--interval`` seconds (psutil) and keeps the peak RSS of

* the **driver JVM** (local mode: the driver is also the executor, so this is the Spark heap, caches
  and shuffle buffers; the limit is ``spark.driver_memory`` plus off-heap);
* the **driver Python** process (the stage code; what a ``collect()`` would grow);
* the **Python workers** (``mapInPandas`` / ``mapInArrow`` / UDF workers and Horovod ranks), summed;
* the whole tree, summed at the same instant.

Written after every stage (a run cut short keeps what finished): ``benchmarks/results/scale.json``
(merged with earlier sizes), ``benchmarks/results/scale.md`` and ``scale.png`` (wall time and peak
memory per stage against the interactions; the report stage of the run shows the same plot, with
``report.scale_results`` pointed at the JSON); stage logs under ``benchmarks/results/scale/<size>/``.
``--deadline HH:MM`` (UTC) stops before a stage that would start after it, and kills a running stage
at it. ``--resume --stages als,...`` reruns stages on a size's
existing tables (the scratch folder is kept unless ``--clean``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from watchnext.report.data import scale_frame
from watchnext.report.plots import scale_figure

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RUN_DATE = "2024-06-01"
STAGES = ["ingest", "als", "clusters", "similarities", "ncf", "recommend", "evaluate", "report"]


# name -> interactions (approximate: the generator draws each user's count), users, items, clusters,
# generator partitions, shuffle partitions.
def _size(interactions: int, users: int, items: int, clusters: int, gen: int, shuffle: int) -> dict[str, int]:
    return dict(
        interactions=interactions, users=users, items=items, clusters=clusters, gen=gen, shuffle=shuffle
    )


SIZES: dict[str, dict[str, int]] = {
    "1M": _size(1_000_000, 25_000, 10_000, 20, gen=4, shuffle=8),
    "5M": _size(5_000_000, 125_000, 20_000, 30, gen=8, shuffle=16),
    "20M": _size(20_000_000, 500_000, 40_000, 40, gen=32, shuffle=32),
}


class Sampler(threading.Thread):
    """Peak RSS of a process tree, by role, sampled every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval = interval
        self.stop = threading.Event()
        self.peak = {"jvm": 0, "driver_python": 0, "python_workers": 0, "total": 0}
        self.max_workers = 0
        self.samples = 0
        self.cpu: dict[int, float] = {}  # pid -> user + system CPU seconds at its last sample

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        now = {"jvm": 0, "driver_python": 0, "python_workers": 0}
        workers = 0
        for p in procs:
            try:
                rss = p.memory_info().rss
                name = p.name()
                t = p.cpu_times()
            except psutil.Error:
                continue
            self.cpu[p.pid] = t.user + t.system
            if p.pid == self.root.pid:
                now["driver_python"] += rss
            elif name == "java":
                now["jvm"] += rss
            elif name.startswith("python"):
                now["python_workers"] += rss
                workers += 1
        for k, v in now.items():
            self.peak[k] = max(self.peak[k], v)
        self.peak["total"] = max(self.peak["total"], sum(now.values()))
        self.max_workers = max(self.max_workers, workers)
        self.samples += 1

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)


def stage_cmd(stage: str, size: dict[str, int], work: Path, extra: list[str]) -> list[str]:
    conf = {
        "storage.lakehouse": work / "lakehouse",
        "storage.checkpoint_dir": work / "checkpoints",
        "mlflow.tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        "mlflow.artifact_location": work / "artifacts",
        "report.out_dir": work / "reports",
        "spark.local_dir": work / "spark-local",
        "spark.shuffle_partitions": size["shuffle"],
        "ingest.synthetic.n_users": size["users"],
        "ingest.synthetic.n_items": size["items"],
        "ingest.synthetic.n_clusters": size["clusters"],
        "ingest.synthetic.partitions": size["gen"],
    }
    cmd = [
        sys.executable,
        "-m",
        "watchnext.cli",
        stage,
        "--env",
        "local",
        "--config",
        str(REPO / "conf/scale.yaml"),
    ]
    for k, v in conf.items():
        cmd += ["--conf", f"{k}={v}"]
    for item in extra:
        cmd += ["--conf", item]
    return [*cmd, "--run-date", RUN_DATE, "--json"]


def _children_cpu() -> float:
    """User + system CPU seconds of every reaped descendant: the stage process, and what it waited for
    (the JVM and Python workers that outlive their parent are not counted here, hence the sampler's)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_stage(cmd: list[str], log: Path, interval: float, deadline: float | None) -> dict[str, Any]:
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        sampler = Sampler(proc.pid, interval)
        sampler.start()
        killed = False
        while proc.poll() is None:
            if deadline is not None and time.time() > deadline:
                os.killpg(proc.pid, signal.SIGTERM)
                killed = True
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                break
            time.sleep(0.5)
        sampler.stop.set()
        sampler.join()
    wall = time.perf_counter() - t0
    rc = proc.returncode
    status = "stopped at the deadline" if killed else ("ok" if rc == 0 else f"failed (exit {rc})")
    gib = {f"peak_{k}_gib": round(v / 2**30, 2) for k, v in sampler.peak.items()}
    # CPU-seconds of the process tree move less than wall time when others load the machine: the sum
    # over every process seen of its CPU time at its last sample (short of at most one interval each),
    # or the reaped descendants' rusage where that is more.
    cpu = round(max(sum(sampler.cpu.values()), _children_cpu() - cpu0), 1)
    return {
        "status": status,
        "wall_s": round(wall, 1),
        "cpu_s": cpu,
        **gib,
        "max_python_workers": sampler.max_workers,
    }


def summary_of(log: Path) -> dict[str, Any]:
    """The stage's JSON summary (the CLI's --json output, the last JSON object of the log)."""
    text = log.read_text()
    start = text.rfind("\n{\n")
    if start < 0:
        return {}
    try:
        return json.loads(text[start + 1 :])
    except json.JSONDecodeError:
        return {}


def markdown(results: dict[str, Any]) -> str:
    sizes = [s for s in SIZES if s in results]
    head = " | ".join(
        f"{s}: {r['interactions']:,} rows, {r['users']:,} users, {r['items']:,} items"
        for s, r in ((s, results[s]) for s in sizes)
    )
    lines = [
        f"Per stage: wall time (CPU-seconds of the stage's process tree, where measured), peak RSS of the "
        f"driver JVM / driver Python / Python workers (GiB). {head}.",
        "",
        "| stage | " + " | ".join(f"{s} wall | {s} JVM / py / workers" for s in sizes) + " |",
        "|---|" + "---|---|" * len(sizes),
    ]
    for stage in STAGES:
        cells = []
        seen = False
        for s in sizes:
            r = results[s]["stages"].get(stage)
            if r is None:
                cells += ["-", "-"]
                continue
            seen = True
            if r["status"] == "skipped":
                cells += [r.get("why", "skipped"), "-"]
                continue
            wall = f"{r['wall_s']:.0f} s" + ("" if r["status"] == "ok" else f" ({r['status']})")
            if r.get("cpu_s") is not None:
                wall += f" ({r['cpu_s']:.0f} CPU-s)"
            mem = " / ".join(f"{r[f'peak_{k}_gib']:.1f}" for k in ("jvm", "driver_python", "python_workers"))
            cells += [wall, mem]
        if seen:
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    totals = []
    for s in sizes:
        done = [r for r in results[s]["stages"].values() if r["status"] == "ok"]
        peak = max((r["peak_total_gib"] for r in done), default=0.0)
        totals += [f"**{sum(r['wall_s'] for r in done):.0f} s**", f"max tree {peak:.1f}"]
    lines.append("| **all stages** | " + " | ".join(totals) + " |")
    return "\n".join(lines) + "\n"


def write(results: dict[str, Any], out: Path) -> None:
    """The JSON, its markdown table (``.md``) and the plot of the run report's scale section (``.png``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    out.with_suffix(".md").write_text(markdown(results))
    frame = scale_frame(results)
    if not frame.empty:
        scale_figure(frame).savefig(out.with_suffix(".png"), dpi=110, bbox_inches="tight", facecolor="white")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1M,5M,20M", help=f"comma-separated, of {', '.join(SIZES)}")
    p.add_argument("--stages", default=",".join(STAGES))
    p.add_argument("--ncf-max", default="1M", help="largest size that runs the ncf stage (CPU budget)")
    p.add_argument("--work", type=Path, default=Path("/tmp/watchnext-scale"))
    p.add_argument("--clean", action="store_true", help="remove each size's scratch folder when done")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the size's tables and earlier stage results (rerun --stages)",
    )
    p.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    p.add_argument("--deadline", help="HH:MM UTC: start no stage after it, stop a running one at it")
    p.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    p.add_argument("--out", type=Path, default=RESULTS / "scale.json")
    args = p.parse_args(argv)
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        p.error(f"unknown sizes {unknown}; known: {', '.join(SIZES)}")
    stages = args.stages.split(",")
    deadline = None
    if args.deadline:
        hh, mm = map(int, args.deadline.split(":"))
        now = dt.datetime.now(dt.UTC)
        deadline = now.replace(hour=hh, minute=mm, second=0, microsecond=0).timestamp()

    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    md_path = args.out.with_suffix(".md")
    for name in sizes:
        size = SIZES[name]
        work = args.work / name
        if not args.resume:
            shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True, exist_ok=True)
        logs = RESULTS / "scale" / name
        logs.mkdir(parents=True, exist_ok=True)
        entry = {
            "interactions": size["interactions"],
            "users": size["users"],
            "items": size["items"],
            "clusters": size["clusters"],
            "cores": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "overrides": args.conf,
            "stages": {},
        }
        if args.resume and name in results:
            entry = results[name]
            entry["overrides"] = sorted(set(entry.get("overrides", [])) | set(args.conf))
        results[name] = entry
        for stage in stages:
            if stage == "ncf" and size["interactions"] > SIZES[args.ncf_max]["interactions"]:
                entry["stages"][stage] = {"status": "skipped", "why": f"skipped (--ncf-max {args.ncf_max})"}
                continue
            if deadline is not None and time.time() > deadline:
                entry["stages"][stage] = {"status": "skipped", "why": "not run (deadline)"}
                continue
            log = logs / f"{stage}.log"
            print(f"== {name} {stage} (load {os.getloadavg()[0]:.1f})", flush=True)
            # the run's own report plots the results so far (written after every stage)
            extra = (
                [*args.conf, f"report.scale_results={args.out.resolve()}"] if stage == "report" else args.conf
            )
            r = run_stage(stage_cmd(stage, size, work, extra), log, args.interval, deadline)
            r["load_after"] = round(os.getloadavg()[0], 1)
            s = summary_of(log).get(stage, {})
            if stage == "ingest" and "interactions_written" in s:
                entry["interactions"] = s["interactions_written"]
                entry["users"] = s.get("users", entry["users"])
                entry["items"] = s.get("items", entry["items"])
            r["summary"] = {k: v for k, v in s.items() if not isinstance(v, dict | list)}
            entry["stages"][stage] = r
            print(
                f"   {r['status']} in {r['wall_s']:.0f} s; peak JVM {r['peak_jvm_gib']} GiB, driver Python "
                f"{r['peak_driver_python_gib']} GiB, workers {r['peak_python_workers_gib']} GiB "
                f"(tree {r['peak_total_gib']} GiB)",
                flush=True,
            )
            write(results, args.out)
            if r["status"] != "ok":
                print("   " + "\n   ".join(log.read_text().splitlines()[-20:]), flush=True)
                break
        entry["finished"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        write(results, args.out)
        if args.clean:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + markdown(results))
    print(f"wrote {args.out} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
