"""``python -m bench``: run every system's workloads, then write the table and the plots."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.suite import plots, report
from bench.suite.measure import WORKLOADS
from bench.suite.plan import Plan, make_plan
from bench.suite.results import Record, Results
from bench.suite.runner import REPO_ROOT, run_all
from bench.suite.systems import REGISTRY


def progress(record: Record) -> None:
    """One line per record as it arrives, so a long run shows it is alive."""
    where = f"{record['system']} w={record['workers']}"
    if "event" in record:
        extra = record.get("reason") or (
            f"{record['start_s']:.1f} s" if "start_s" in record else ""
        )
        print(f"{where}: {record['event']} {extra}", flush=True)
        return
    shown = {
        k: (f"{v:.4g}" if isinstance(v, float) else v)
        for k, v in record.items()
        if k not in ("system", "workers", "workload", "rows", "how")
    }
    print(f"{where}: {record['workload']} {shown}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run the same workloads on pool-server, its peers and two floors; "
        "write results.md and PNG plots.",
    )
    parser.add_argument("--workers", type=int, default=2, help="(default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="small counts: seconds per system")
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results", help="(default: %(default)s)"
    )
    parser.add_argument(
        "--only",
        help=f"comma-separated systems to run (default: all of {', '.join(REGISTRY)})",
    )
    parser.add_argument(
        "--workloads",
        help=f"comma-separated workloads to run (default: all of {', '.join(WORKLOADS)})",
    )
    parser.add_argument(
        "--rerender",
        action="store_true",
        help="run nothing: write results.md and the plots again from OUT/results.json",
    )
    args = parser.parse_args(argv)
    if args.rerender:
        results = Results.load(args.out / "results.json")
        render(results, make_plan(results.quick, results.plan_workers), args.out)
        return 0
    systems = args.only.split(",") if args.only else list(REGISTRY)
    only = tuple(args.workloads.split(",")) if args.workloads else None
    unknown = [s for s in systems if s not in REGISTRY]
    unknown += [w for w in only or () if w not in WORKLOADS]
    if unknown or args.workers < 1:
        parser.error(f"unknown names {unknown}" if unknown else "--workers must be at least 1")
    plan = make_plan(args.quick, args.workers)
    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    started, revision = time.monotonic(), report.revision()
    results = run_all(plan, systems, out_dir, progress, only)
    results.elapsed_s = time.monotonic() - started
    results.machine, results.revision = report.machine(), revision
    if report.revision() != revision:  # sessions start fresh processes: they saw both
        results.revision += f", then {report.revision()} (the code changed during the run)"
    results.save(out_dir / "results.json")
    render(results, plan, out_dir)
    print(f"took {results.elapsed_s:.0f} s")
    return 0


def render(results: Results, plan: Plan, out_dir: Path) -> None:
    """results.md and the plots; a run of some workloads only (``--workloads``)
    has too few figures to plot."""
    every = {r["workload"] for r in results.records if "workload" in r} >= set(WORKLOADS)
    written, note = (
        plots.write(results, plan, out_dir)
        if every
        else ([], "No plots: a run of some workloads only (--workloads).")
    )
    report.write(results, plan, out_dir / "results.md", written, note)
    print(f"wrote {out_dir / 'results.md'} and {len(written)} plots")
