"""The PNGs next to ``results.md``: one per workload, Agg backend (no display needed).

matplotlib is in the ``bench`` extra only; without it the table is still
written and says why there are no plots.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.suite.plan import Plan
from bench.suite.report import payload_mibps, size_name
from bench.suite.results import Results

DPI = 110


def _bars(ax: Any, labels: list[str], series: dict[str, list[float]]) -> None:
    """Grouped bars, one group per system, one bar per series (NaN: no bar)."""
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        positions = [x + (i - (len(series) - 1) / 2) * width for x in range(len(labels))]
        bars = ax.bar(positions, values, width, label=name)
        ax.bar_label(bars, fmt="{:,.3g}", fontsize=6)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
    _legend(ax)
    ax.grid(axis="y", alpha=0.3)


def _legend(ax: Any) -> None:
    if ax.get_legend_handles_labels()[0]:  # none when every system was skipped
        ax.legend(fontsize=8)


def _value(x: float | None) -> float:
    return float("nan") if x is None else x


def write(results: Results, plan: Plan, out_dir: Path) -> tuple[list[str], str]:
    """Write the plots; their file names, and a note when there are none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return [], "No plots: matplotlib is not installed (`pip install -e '.[bench]'`)."
    systems = [s for s in results.systems if results.skipped(s) is None]
    labels = [results.label(s) for s in systems]
    written = []

    def save(fig: Any, name: str, title: str) -> None:
        fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=DPI)
        plt.close(fig)
        written.append(name)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    _bars(
        ax,
        labels,
        {
            p: [_value(results.figure(s, "latency", f"{p}_ms")) for s in systems]
            for p in ("p50", "p99")
        },
    )
    ax.set_ylabel("ms per round trip (lower is better)")
    ax.set_yscale("log")
    save(fig, "latency.png", f"Sequential no-op round trips, {plan.workers} workers")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    _bars(
        ax,
        labels,
        {
            "in flight at once": [
                _value(results.figure(s, "throughput", "calls_per_s")) for s in systems
            ],
            "batch path": [_value(results.figure(s, "batch", "calls_per_s")) for s in systems],
        },
    )
    ax.set_ylabel("no-op calls/s (higher is better)")
    ax.set_yscale("log")
    save(fig, "throughput.png", f"{plan.concurrent_calls:,} no-op calls, {plan.workers} workers")

    workers_systems = [s for s in systems if results.kind(s) != "floor"]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    _bars(
        ax,
        [results.label(s) for s in workers_systems],
        {
            f"{w} workers": [
                _value(results.figure(s, "efficiency", "effectiveness", w)) for s in workers_systems
            ]
            for w in plan.efficiency_workers
        },
    )
    ax.set_ylabel("ideal time / real time")
    ax.set_ylim(0, 1.05)
    save(
        fig,
        "efficiency.png",
        f"{plan.efficiency_calls} calls sleeping {plan.efficiency_sleep_s} s",
    )

    fig, ax = plt.subplots(figsize=(8, 4.5))
    sizes = list(plan.payload_sizes)
    for system, label in zip(systems, labels, strict=True):
        ax.plot(
            sizes, [_value(payload_mibps(results, system, n)) for n in sizes], "o-", label=label
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(sizes, [size_name(n) for n in sizes])
    ax.set_ylabel("MiB/s, both directions (higher is better)")
    _legend(ax)
    ax.grid(alpha=0.3)
    save(fig, "payloads.png", "Bytes argument returned as the result")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    counts = list(plan.scaling_workers)
    for system in workers_systems:
        values = [_value(results.figure(system, "scaling", "calls_per_s", w)) for w in counts]
        ax.plot(counts, values, "o-", label=results.label(system))
    work_s = results.work_s()
    if work_s:
        cpus = os.cpu_count() or 1
        ideal = [min(w, cpus) / work_s for w in counts]
        ax.plot(counts, ideal, "k--", label=f"ideal ({cpus} CPUs)")
    ax.set_xticks(counts)
    ax.set_xlabel("workers")
    ax.set_ylabel("calls/s (higher is better)")
    _legend(ax)
    ax.grid(alpha=0.3)
    work = f"{work_s * 1e3:.2f} ms" if work_s else "about 1 ms"
    save(fig, "scaling.png", f"{plan.scaling_calls:,} calls in flight of {work} of CPU work")
    return written, ""
