"""``results.md``: the machine, a summary table with ratios, then one table per workload.

Every ratio is a figure divided by pool-server's figure from the same run, so
the comparison holds on whatever machine the run was made.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path

from bench.suite.plan import KIB, MIB, Plan
from bench.suite.results import Results
from bench.suite.systems import REGISTRY

OURS = "pool-server"
REPO_ROOT = Path(__file__).resolve().parents[2]


def machine() -> str:
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{os.cpu_count()} CPUs ({model}), {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.platform()}, {now}"
    )


NOT_CODE = (":(exclude)*.md", ":(exclude)bench/results")


def revision() -> str:
    """The commit measured, so figures can be matched to the code that made them."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
        ).stdout.strip()
        changes = subprocess.run(  # prose and results do not change the figures
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown commit"
    if not commit:
        return "unknown commit"
    return f"commit {commit}" + (" with uncommitted changes" if changes else "")


def ms(value: float) -> str:
    return f"{value:.3g} ms"


def rate(value: float) -> str:
    return f"{value:,.0f}/s"


def pct(value: float) -> str:
    return f"{value * 100:.1f}%"


def mibps(value: float) -> str:
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def ratio_text(ratio: float) -> str:
    return f"×{ratio:.0f}" if ratio >= 10 else f"×{ratio:.2g}"


def size_name(size: int) -> str:
    return f"{size // MIB} MiB" if size >= MIB else f"{size // KIB} KiB"


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def header(*cells: str) -> list[str]:
    return [row(*cells), row(*("---" for _ in cells))]


class Cell:
    """Formats one system's figure, with its ratio to pool-server's when both exist."""

    def __init__(self, results: Results, system: str) -> None:
        self.results = results
        self.system = system

    def __call__(
        self,
        workload: str,
        key: str,
        show: Callable[[float], str],
        workers: int | None = None,
        ratio: bool = True,
    ) -> str:
        record = self.results.workload(self.system, workload, workers)
        if record is None:
            return "n/a" if self.results.kind(self.system) == "floor" else "—"
        if "na" in record:
            return "n/a"
        if "error" in record:
            return "timed out" if record["error"].startswith("timed out") else "error"
        value = self.results.figure(self.system, workload, key, workers)
        if value is None:
            return "—"
        ours = self.results.figure(OURS, workload, key, workers)
        if ratio and self.system != OURS and ours:
            return f"{show(value)} ({ratio_text(value / ours)})"
        return show(value)


def payload_mibps(results: Results, system: str, size: int) -> float | None:
    record = results.workload(system, "payloads")
    if record is None or "rows" not in record:
        return None
    return next((float(r["mib_per_s"]) for r in record["rows"] if r["bytes"] == size), None)


def summary(results: Results, plan: Plan) -> list[str]:
    sizes = sorted({MIB, max(plan.payload_sizes)})
    eff = plan.efficiency_workers
    top = max(plan.scaling_workers)
    lines = header(
        "system",
        "version",
        "start",
        "latency p50",
        "latency p99",
        "in flight",
        "batch",
        "bulk map",
        *(f"sleep eff. {w} w" for w in eff),
        *(f"{size_name(size)} MiB/s" for size in sizes),
        f"CPU work at {top} w",
    )
    columns = 9 + len(eff) + len(sizes)
    for system in results.systems:
        skipped = results.skipped(system)
        if skipped is not None:
            blank = [""] * (columns - 3)
            lines.append(row(results.label(system), "", f"skipped: {skipped}", *blank))
            continue
        cell = Cell(results, system)
        started = results.started(system)
        assert started is not None
        lines.append(
            row(
                results.label(system),
                str(started["version"]),
                f"{started['start_s']:.1f} s",
                cell("latency", "p50_ms", ms),
                cell("latency", "p99_ms", ms),
                cell("throughput", "calls_per_s", rate),
                cell("batch", "calls_per_s", rate),
                cell("bulk", "calls_per_s", rate),
                *(cell("efficiency", "effectiveness", pct, w) for w in eff),
                *(payload_cell(results, system, size) for size in sizes),
                cell("scaling", "calls_per_s", rate, top),
            )
        )
    return lines


def payload_cell(results: Results, system: str, size: int) -> str:
    record = results.workload(system, "payloads")
    if record is not None and "rows" not in record:
        return "n/a" if "na" in record else "error"
    value = payload_mibps(results, system, size)
    if value is None:
        return "—"
    ours = payload_mibps(results, OURS, size)
    if system != OURS and ours:
        return f"{mibps(value)} ({ratio_text(value / ours)})"
    return mibps(value)


def measured(results: Results) -> list[str]:
    return [s for s in results.systems if results.skipped(s) is None]


def latency_section(results: Results, plan: Plan) -> list[str]:
    lines = ["## Latency", ""]
    lines.append(
        f"{plan.latency_calls:,} sequential no-op round trips after {plan.warmup_calls} "
        f"warm-up calls; the median over {plan.repetitions} repetition(s) of each "
        "repetition's p50 and p99. Lower is better.",
    )
    lines += ["", *header("system", "one call", "p50", "p99")]
    for system in measured(results):
        cell = Cell(results, system)
        record = results.workload(system, "latency")
        how = str(record.get("how", "")) if record else ""
        lines.append(
            row(
                results.label(system),
                how,
                cell("latency", "p50_ms", ms),
                cell("latency", "p99_ms", ms),
            )
        )
    return lines


def throughput_section(results: Results, plan: Plan) -> list[str]:
    lines = ["## Throughput", ""]
    lines.append(
        f"{plan.concurrent_calls:,} no-op calls put in flight at once on {plan.workers} "
        "workers, each in the system's own idiom (which one is said); then the same "
        f"calls through its batch path. Median of {plan.repetitions}. Higher is better."
    )
    lines += ["", *header("system", "in flight: how", "calls/s", "batch: how", "calls/s")]
    for system in measured(results):
        cell = Cell(results, system)
        many = results.workload(system, "throughput") or {}
        batch = results.workload(system, "batch") or {}
        lines.append(
            row(
                results.label(system),
                str(many.get("how", "")),
                cell("throughput", "calls_per_s", rate),
                str(batch.get("how", "")),
                cell("batch", "calls_per_s", rate),
            )
        )
    return lines


def bulk_section(results: Results, plan: Plan) -> list[str]:
    """The fair batch table: each system's one-task-per-item batch path beside
    its own chunked bulk API, every bulk row given the same chunk size."""
    lines = ["### Batch paths, like for like", ""]
    sizes = {
        int(record["chunksize"])
        for system in measured(results)
        if (record := results.workload(system, "bulk")) and "chunksize" in record
    }
    size = f"{', '.join(map(str, sorted(sizes)))} calls" if sizes else "the same size"
    lines.append(
        f"The same {plan.concurrent_calls:,} no-op calls on {plan.workers} workers: first "
        "through the batch path as a user writes it by default, then through the system's "
        f"own chunked bulk API, with chunks of {size} for everyone (c: `f.map`'s default, "
        "`multiprocessing.Pool.map`'s rule of about 4 chunks per worker, capped at 256). "
        f"Median of {plan.repetitions}; (×r) is against pool-server's bulk row. Higher is "
        "better; n/a is a system without a chunked API."
    )
    lines += ["", *header("system", "batch: how", "calls/s", "bulk map: how", "calls/s")]
    for system in measured(results):
        if results.kind(system) == "floor":
            continue
        cell = Cell(results, system)
        batch = results.workload(system, "batch") or {}
        bulk = results.workload(system, "bulk") or {}
        lines.append(
            row(
                results.label(system),
                str(batch.get("how", "")),
                cell("batch", "calls_per_s", rate, ratio=False),
                str(bulk.get("how", "")),
                cell("bulk", "calls_per_s", rate),
            )
        )
    return lines


def efficiency_section(results: Results, plan: Plan) -> list[str]:
    lines = ["## Efficiency", ""]
    lines.append(
        f"{plan.efficiency_calls} calls sleeping {plan.efficiency_sleep_s} s each, all in "
        "flight at once. Effectiveness = ideal time (the sleeps spread evenly over the "
        "workers) / real time; median of "
        f"{plan.repetitions}."
    )
    lines += ["", *header("system", "workers", "ideal", "real", "effectiveness")]
    for system in measured(results):
        for workers in plan.efficiency_workers:
            record = results.workload(system, "efficiency", workers)
            if record is None or "real_s" not in record:
                continue
            lines.append(
                row(
                    results.label(system),
                    str(workers),
                    f"{record['ideal_s']:.3f} s",
                    f"{record['real_s']:.3f} s",
                    pct(record["effectiveness"]),
                )
            )
    lines += ["", "### Random sleeps (the seed's load test)", ""]
    lines.append(
        f"For factors {', '.join(map(str, plan.series_factors))}: factor × {plan.workers} "
        f"calls in flight, each sleeping a random 0–{plan.series_sleep_scale:g} s (seed "
        f"{plan.seed}, the same sleeps for every system), one pass. Minimal = max(longest "
        "sleep, total / workers); first-come = the makespan of the best first-come "
        "schedule of those sleeps (test_load.py's greedy_makespan), the best any FIFO "
        "pool can do."
    )
    lines += [
        "",
        *header(
            "system", "calls", "minimal", "first-come", "real", "effectiveness", "vs first-come"
        ),
    ]
    for system in measured(results):
        record = results.workload(system, "series")
        for r in (record or {}).get("rows", []):
            lines.append(
                row(
                    results.label(system),
                    str(r["calls"]),
                    f"{r['minimal_s']:.3f} s",
                    f"{r['schedule_s']:.3f} s",
                    f"{r['real_s']:.3f} s",
                    pct(r["effectiveness"]),
                    pct(r["vs_schedule"]),
                )
            )
    return lines


def payload_section(results: Results, plan: Plan) -> list[str]:
    lines = ["## Payloads", ""]
    lines.append(
        "One call whose bytes argument (random, incompressible) is returned as its "
        "result; MiB/s = size × 2 / seconds, median of "
        f"{plan.repetitions}. RSS: the resident memory of the process that relays the "
        "payload (pool-server's server process, the gRPC echo server, Celery's Redis): "
        "read just before the largest payload's first call, and its peak sampled every "
        f"10 ms during that payload's {plan.repetitions} call(s)."
    )
    sizes = plan.payload_sizes
    rss_header = f"RSS before → peak, {size_name(max(sizes))}"
    lines += ["", *header("system", *(f"{size_name(s)} MiB/s" for s in sizes), rss_header)]
    for system in measured(results):
        record = results.workload(system, "payloads") or {}
        before, peak = record.get("before_rss_mib"), record.get("peak_rss_mib")
        rss = f"{before:.0f} → {peak:.0f} MiB" if before is not None and peak is not None else ""
        cells = (payload_cell(results, system, s) for s in sizes)
        lines.append(row(results.label(system), *cells, rss))
    return lines


def scaling_section(results: Results, plan: Plan) -> list[str]:
    lines = ["## Scaling", ""]
    work_s = results.work_s()
    work = f"{work_s * 1e3:.2f} ms" if work_s else "about 1 ms"
    lines.append(
        f"{plan.scaling_calls:,} calls in flight of a fixed piece of CPU work ({work}: the "
        "median CPU time it took in the workers, all systems), calls/s against the worker "
        f"count; median of {plan.repetitions}. The ideal row is min(workers, "
        f"{os.cpu_count()} CPUs) / that time: no overhead at all."
    )
    counts = plan.scaling_workers
    lines += ["", *header("system", *(f"{w} w" for w in counts))]
    for system in measured(results):
        if results.kind(system) == "floor":
            continue
        cell = Cell(results, system)
        lines.append(
            row(results.label(system), *(cell("scaling", "calls_per_s", rate, w) for w in counts))
        )
    if work_s:
        cpus = os.cpu_count() or 1
        lines.append(row("ideal", *(rate(min(w, cpus) / work_s) for w in counts)))
    return lines


def problems_section(results: Results) -> list[str]:
    lines = ["## Not measured", ""]
    entries = []
    for system in results.systems:
        reason = results.skipped(system)
        if reason is not None:
            entries.append(f"- {results.label(system)}: skipped: {reason}")
    for r in results.records:
        if r.get("event") == "stop-failed" or (
            r.get("event") == "skipped" and results.started(r["system"]) is not None
        ):
            entries.append(f"- {results.label(r['system'])}, {r['workers']} w: {r['reason']}")
        elif "error" in r:
            entries.append(
                f"- {results.label(r['system'])}, {r['workload']} at {r['workers']} w: {r['error']}"
            )
    lines += entries or ["Everything was measured."]
    return lines


def method(plan: Plan) -> list[str]:
    return [
        "## Method",
        "",
        "- Each system is started by the suite on loopback, once per worker count, in its "
        "own child process (so no system's threads, sockets or forks touch another's), and "
        "stopped before the next starts; only one system runs at a time.",
        "- Every workload warms up first (workers spawned, connections open), checks every "
        "result, and reports the median of its repetitions; ratios are taken within this "
        "run.",
        "- The called functions (`bench/suite/workloads.py`) are the same for everyone. "
        "pool-server pickles them by value (the module is not installed), as it does a "
        "user's script; the peers import them by name in their workers.",
        "- The floors only echo the pickled arguments: gRPC's cost, and a pipe's, with no "
        "queue, worker or function in between.",
        "- Batch paths run with their defaults: pool-server's `f.map` packs calls into "
        "chunks by itself (sent as plain calls, not journaled; `durable=True` journals "
        "them), `executor.map` sends one call per task unless given a `chunksize`, "
        "`multiprocessing.Pool.map` chunks by itself, and Dask, Ray and Celery send one "
        "task per item. The bulk rows give every chunked API the same chunk size: "
        "`executor.map(chunksize=c)` (ProcessPoolExecutor, loky), `Pool.map(chunksize=c)`, "
        "Celery's `task.chunks`, and Dask's `client.map(batch_size=c)`, which groups the "
        "submissions but still runs a task per item. Ray's chunked map "
        "(`ray.util.multiprocessing.Pool`) is an actor pool beside its tasks, so it has none.",
        "- Peers run as shipped: Dask `LocalCluster(processes=True, threads_per_worker=1)`, "
        "`ray.init(num_cpus=N, include_dashboard=False)`, Celery's prefork pool with "
        "pickle serialization and a private `redis-server` as broker and result backend "
        "(its pub/sub output-buffer limit lifted, without which results over 32 MiB are "
        "dropped by Redis).",
        "- A session that reports nothing for "
        f"{plan.stall_timeout_s:.0f} s is killed and what it had not reported is marked "
        "timed out; a peer that cannot be imported or started is listed as skipped.",
    ]


def write(results: Results, plan: Plan, path: Path, plots: list[str], plot_note: str) -> None:
    mode = "quick" if plan.quick else "full"
    only = f" --only {','.join(results.systems)}" if len(results.systems) < len(REGISTRY) else ""
    took = f", took {results.elapsed_s:.0f} s" if results.elapsed_s is not None else ""
    lines = [
        "# pool-server against its peers",
        "",
        f"Machine: {results.machine}.",
        f"Run: `python -m bench --workers {plan.workers}{' --quick' if plan.quick else ''}{only}` "
        f"({mode}{took}) on {results.revision}.",
        "",
        "## Summary",
        "",
        f"At {plan.workers} workers unless a column says otherwise. (×r) is the figure "
        "divided by pool-server's in this run: for latency above 1 is slower than "
        "pool-server, for everything else above 1 is better. Start: seconds from nothing "
        f"to {plan.workers} workers ready.",
        "",
        *summary(results, plan),
        "",
        *latency_section(results, plan),
        "",
        *throughput_section(results, plan),
        "",
        *bulk_section(results, plan),
        "",
        *efficiency_section(results, plan),
        "",
        *payload_section(results, plan),
        "",
        *scaling_section(results, plan),
        "",
        "## Plots",
        "",
        *(f"![{Path(p).stem}]({p})" for p in plots),
        *([plot_note] if plot_note else []),
        "",
        *problems_section(results),
        "",
        *method(plan),
        "",
    ]
    path.write_text("\n".join(lines))
