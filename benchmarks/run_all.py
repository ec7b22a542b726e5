"""Run every benchmark of ``benchmarks/`` and write one table of ratios (``make bench``).

    .venv/bin/python benchmarks/run_all.py [--quick] [--only topn,als] [--skip ncf] [--collect-only]

Each ``bench_*.py`` runs in its own process (its own Spark session), one after the other, with the
sizes of ``SIZES`` (chosen so the whole run stays under 30 minutes on a 2-core machine; ``--quick``
uses each bench's smallest sizes, a smoke run), and writes its figures to
``benchmarks/results/<bench>.json``; its output goes to ``benchmarks/results/logs/<bench>.log``. Then
the JSONs are read back and every figure is put beside the reference it was measured against in the
same run, as a ratio (the machines are shared and noisy: absolute seconds alone mean little):

* ``benchmarks/results/BENCH.md``: the markdown table, with the machine (cores, load) and versions;
* ``benchmarks/results/bench.json``: the same rows, the machine and versions, and each bench's JSON.

``--collect-only`` rebuilds the table from the JSONs already there (no bench runs). A bench that
fails is reported as failed in the table and the exit status is 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
PACKAGES = (
    "pyspark",
    "delta-spark",
    "tensorflow",
    "tf-keras",
    "horovod",
    "numpy",
    "scipy",
    "pandas",
    "pyarrow",
    "implicit",
    "deltalake",
    "mlflow",
)

# bench -> (arguments of the full run, arguments of --quick). Each bench writes RESULTS/<bench>.json.
SIZES: dict[str, tuple[list[str], list[str]]] = {
    "bench_topn": (
        ["--users", "20000", "--items", "8000", "--rank", "64", "--k", "100", "--repeats", "2"],
        ["--quick"],
    ),
    "bench_similarity": (
        ["--tables", "2", "--buckets", "0.4,0.8", "--naive-items", "1200", "--lsh-budget", "300"],
        ["--items", "2000", "--data", "/nonexistent", "--tables", "1", "--buckets", "0.8"]
        + ["--naive-items", "500"],
    ),
    "bench_cooccurrence": (["--interactions", "400000", "--items", "5000"], ["--quick"]),
    "bench_als": (
        ["--rank", "64", "--iters", "5", "--repeats", "1"],
        ["--rank", "32", "--iters", "3", "--repeats", "1"],
    ),
    "bench_ncf": (["--epochs", "2", "--negatives", "10"], ["--epochs", "1", "--negatives", "4"]),
    "bench_delta_write": (["--rows", "1000000"], ["--quick"]),
    "bench_serving": (
        ["--users", "50000", "--lookups", "1000", "--spark-lookups", "20", "--cli-runs", "2"],
        ["--users", "5000", "--lookups", "200", "--spark-lookups", "5", "--cli-runs", "1"],
    ),
    "bench_synthetic": (["--interactions", "1000000"], ["--quick"]),
    "bench_blend": (["--users", "20000", "--repeats", "1"], ["--quick"]),
}
# bench_serving takes its JSON path as --json, the others as --out.
OUT_FLAG = {"bench_serving": "--json"}


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        java = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=30).stderr
        info["java"] = java.splitlines()[0] if java else None
    except (OSError, subprocess.SubprocessError):
        info["java"] = None
    return info


def run_bench(name: str, args: list[str], logs: Path) -> dict[str, Any]:
    """Run one bench in its own process; returns its wall time, exit status and load."""
    out = RESULTS / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [
        sys.executable,
        str(REPO / "benchmarks" / f"{name}.py"),
        *args,
        OUT_FLAG.get(name, "--out"),
        str(out),
    ]
    log = logs / f"{name}.log"
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    with log.open("w") as fh:
        rc = subprocess.run(cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t
    status = "ok" if rc == 0 and out.exists() else f"failed (exit {rc}, log {log.relative_to(REPO)})"
    print(f"   {status} in {wall:.0f} s (load {load:.1f} -> {os.getloadavg()[0]:.1f})", flush=True)
    if rc != 0:
        print("   " + "\n   ".join(log.read_text().splitlines()[-15:]), flush=True)
    return {
        "args": args,
        "wall_s": wall,
        "status": status,
        "load_before": load,
        "load_after": os.getloadavg()[0],
    }


def _load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def rows(res: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """One row per figure: what, ours (s), reference, reference (s), ours / reference, target."""
    out: list[dict[str, Any]] = []

    def add(bench: str, what: str, ours: float, ref_name: str, ref: float, target: str = "", note: str = ""):  # type: ignore[no-untyped-def]
        out.append(
            {
                "bench": bench,
                "figure": what,
                "ours_s": ours,
                "reference": ref_name,
                "reference_s": ref,
                "ratio": ours / ref if ref else None,
                "target": target,
                "note": note,
            }
        )

    if t := res.get("bench_topn"):
        size = f"{t['users']:,} users x {t['items']:,} items, rank {t['rank']}, K={t['k']}"
        agree = f"lists identical up to ties for {t['agreement_up_to_ties']:.0%} of sampled users"
        add("bench_topn", f"batch top-N ({size})", t["topk_s"], "`recommendForAllUsers`",
            t["recommendForAllUsers_s"], "<= 0.1 (>= 10x faster)", agree)  # fmt: skip
        add("bench_topn", "batch top-N, seen items excluded in the block", t["topk_with_seen_s"],
            "`recommendForAllUsers` (no exclusion)", t["recommendForAllUsers_s"])  # fmt: skip
        add("bench_topn", "batch top-N vs the roofline floor, in CPU-seconds (robust to other load)",
            t["topk_cpu_s"], "floor: one thread's GEMM + selection rates", t["floor_cpu_s"], "<= 2",
            f"with seen items excluded {t['ratio_to_floor_cpu_with_seen']:.2f}x")  # fmt: skip
        add("bench_topn", "batch top-N vs the roofline floor, wall", t["topk_s"],
            "floor: GEMM at the measured BLAS rate + top-K selection rate", t["floor_s"], "<= 2",
            f"{t['gemm_gflops_single_thread']:.0f} GFLOP/s/thread, "
            f"{t['selection_cells_per_s_single'] / 1e9:.2f} G cells/s/thread; "
            f"CPU-s ratio {t['ratio_to_floor_cpu']:.2f}")  # fmt: skip
    if s := res.get("bench_similarity"):
        lsh = s.get("lsh_runs", [])
        for target in (0.9, 0.8):
            ok = [r for r in lsh if r["recall"] >= target]
            if ok:
                b = min(ok, key=lambda r: r["seconds"])
                add("bench_similarity", f"item-item top-{s['k']}, blocked exact ({s['items']:,} items)",
                    s["exact_s"], f"`approxSimilarityJoin` (LSH b={b['bucket']}, L={b['tables']}, "
                    f"recall {b['recall']:.3f})", b["seconds"], "<= 0.33 (>= 3x faster)",
                    f"fastest LSH with recall >= {target}; exact has recall 1.0")  # fmt: skip
                break
        else:
            if lsh:
                b = max(lsh, key=lambda r: r["recall"])
                add("bench_similarity", f"item-item top-{s['k']}, blocked exact ({s['items']:,} items)",
                    s["exact_s"], f"`approxSimilarityJoin` (best recall {b['recall']:.3f})", b["seconds"],
                    "<= 0.33")  # fmt: skip
        add("bench_similarity", f"item-item top-{s['k']}, blocked exact ({s['naive_items']:,} items)",
            s["exact_on_naive_items_s"], "naive `crossJoin` + window", s["naive_s"])  # fmt: skip
    if c := res.get("bench_cooccurrence"):
        what = f"user-user co-occurrence top-{c['k']}, blocked sparse ({c['users']:,} users)"
        add("bench_cooccurrence", what, c["blocked_s"], "self-join on the item + `groupBy` + window",
            c["self_join_s"], "", f"identical output; self-join rows {c['self_join_rows']:,}")  # fmt: skip
    if a := res.get("bench_als"):
        add("bench_als", f"ALS s/iteration, rank {a['rank']} ({a['ratings']:,} ratings), Spark MLlib",
            a["spark_s_per_iter"], "`implicit` ALS, exact solves", a["implicit_exact_s_per_iter"],
            "", f"vs implicit's CG: {a['spark_over_implicit_cg_per_iter']:.0f}x")  # fmt: skip
    if n := res.get("bench_ncf"):
        by = {r["num_proc"]: r for r in n["results"]}
        if 1 in by:
            for k, r in sorted(by.items()):
                if k == 1:
                    continue
                add("bench_ncf", f"NCF training, {k} Horovod ranks ({r['device']})", r["train_seconds"],
                    "1 rank, same data and epochs", by[1]["train_seconds"], "<= 1.2",
                    f"{r['samples_per_second']:,} vs {by[1]['samples_per_second']:,} samples/s; "
                    f"whole run {r['run_ratio']:.2f}x")  # fmt: skip
    if d := res.get("bench_delta_write"):
        add("bench_delta_write", f"Delta write, new table ({d['rows']:,} rows, `tables.overwrite_run_date`)",
            d["delta_first_write_s"], "`df.write.parquet`, same frame", d["parquet_s"])  # fmt: skip
        add("bench_delta_write", "Delta write, re-run of the date (`replaceWhere`)", d["delta_rerun_s"],
            "`df.write.parquet`, same frame", d["parquet_s"])  # fmt: skip
    if v := res.get("bench_serving"):
        add("bench_serving", f"serving lookup p50, one user's top-{v['k']} ({v['users']:,} users)",
            v["api"]["p50_ms"] / 1e3, "Spark `read.delta.where(user).collect()`",
            v["spark"]["p50_ms"] / 1e3, "", f"p99 {v['api']['p99_ms']:.1f} ms")  # fmt: skip
    if g := res.get("bench_synthetic"):
        add("bench_synthetic", f"synthetic generator ({g['interactions']:,} rows to noop)", g["drain_s"],
            "Spark-only rows of the same shape", g["spark_only_s"], "",
            f"{g['rows_per_s']:,.0f} rows/s")  # fmt: skip
    if b := res.get("bench_blend"):
        add("bench_blend", f"candidate pool to capped top-10 ({b['candidate_rows']:,} rows, "
            f"{b['users']:,} users), `rank_candidates`", b["ours_s"],
            "Spark windows + `groupBy(user, item)` (the code before)", b["reference_s"], "",
            f"{b['differing_rows']} of {b['top_rows']:,} top-N rows differ")  # fmt: skip
    return out


def _fmt_s(x: float) -> str:
    return f"{x * 1e3:.1f} ms" if x < 0.1 else f"{x:.2f} s"


def markdown(table: list[dict[str, Any]], mach: dict[str, Any], vers: dict[str, str | None],
             runs: dict[str, dict[str, Any]], when: str) -> str:  # fmt: skip
    lines = [
        f"Measured {when} on {mach['cores']} cores ({mach.get('memory_gib', '?')} GiB), load average "
        f"{mach['loadavg'][0]:.1f} at the end; {mach.get('java') or 'java ?'}; Python {mach['python']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items() if v) + ".",
        "",
        "| figure | ours | reference | reference time | ours / reference | target | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table:
        ratio = f"**{r['ratio']:.3g}x**" if r["ratio"] is not None else "-"
        if r["ratio"] and r["ratio"] < 1:
            ratio += f" ({1 / r['ratio']:.1f}x faster)"
        lines.append(
            f"| {r['figure']} | {_fmt_s(r['ours_s'])} | {r['reference']} | {_fmt_s(r['reference_s'])} | "
            f"{ratio} | {r['target']} | {r['note']} |"
        )
    failed = [f"{k}: {v['status']}" for k, v in runs.items() if v.get("status") != "ok"]
    if failed:
        lines += ["", "Failed: " + "; ".join(failed)]
    if runs:
        lines += ["", "Bench wall times: " + ", ".join(f"{k} {v['wall_s']:.0f} s" for k, v in runs.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="each bench's smallest sizes (a smoke run)")
    p.add_argument("--only", help="comma-separated benches, run in that order (e.g. topn,als); default all")
    p.add_argument("--skip", default="", help="comma-separated benches to leave out")
    p.add_argument("--collect-only", action="store_true", help="only rebuild the table from the JSONs")
    args = p.parse_args(argv)

    def norm(names: str) -> set[str]:
        return {n if n.startswith("bench_") else f"bench_{n}" for n in names.split(",") if n}

    names = list(SIZES)
    if args.only:
        unknown = norm(args.only) - set(names)
        if unknown:
            p.error(f"unknown benches {sorted(unknown)}; known: {', '.join(names)}")
        names = [n if n.startswith("bench_") else f"bench_{n}" for n in args.only.split(",") if n]
    names = [n for n in names if n not in norm(args.skip)]
    missing = sorted(f.stem for f in (REPO / "benchmarks").glob("bench_*.py") if f.stem not in SIZES)
    if missing:
        print(f"warning: no sizes for {missing} in run_all.SIZES: not run", file=sys.stderr)

    RESULTS.mkdir(parents=True, exist_ok=True)
    logs = RESULTS / "logs"
    logs.mkdir(exist_ok=True)
    env_note = "quick" if args.quick else "full"
    runs: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    previous = RESULTS / "bench.json"
    if args.collect_only and previous.exists():  # keep the wall times of the run that made the JSONs
        runs = {k: v for k, v in json.loads(previous.read_text()).get("runs", {}).items() if k in names}
    if not args.collect_only:
        for name in names:
            full, quick = SIZES[name]
            runs[name] = run_bench(name, quick if args.quick else full, logs)
    res = {name: _load(name) for name in names}
    table = rows(res)
    mach, vers = machine(), versions()
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    md = markdown(table, mach, vers, runs, when)
    (RESULTS / "BENCH.md").write_text(md)
    (RESULTS / "bench.json").write_text(
        json.dumps(
            {
                "measured": when,
                "sizes": env_note,
                "machine": mach,
                "versions": vers,
                "total_s": time.perf_counter() - t0,
                "runs": runs,
                "rows": table,
                "benches": res,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print("\n" + md)
    print(
        f"total {time.perf_counter() - t0:.0f} s; wrote {RESULTS / 'BENCH.md'} and {RESULTS / 'bench.json'}"
    )
    return 1 if any(v["status"] != "ok" for v in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
