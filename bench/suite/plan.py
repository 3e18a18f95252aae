"""How much of each workload a run does, and which worker counts each system gets.

The plan is a pure function of ``--quick`` and ``--workers``: the parent and
each session child compute it from the same flags instead of passing it around.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB

MAIN_WORKLOADS = ("latency", "throughput", "batch", "bulk", "series", "payloads")
FLOOR_WORKLOADS = ("latency", "throughput", "payloads")


@dataclass(frozen=True)
class Plan:
    quick: bool
    workers: int  # the main worker count (--workers)
    repetitions: int  # timed repetitions per figure; the median is reported
    warmup_calls: int
    latency_calls: int  # sequential round trips per repetition
    concurrent_calls: int  # calls in flight at once (throughput and batch)
    efficiency_calls: int
    efficiency_sleep_s: float
    efficiency_workers: tuple[int, ...]
    series_factors: tuple[int, ...]  # calls per series as multiples of the workers
    series_sleep_scale: float  # random sleeps are uniform in [0, scale) seconds
    seed: int
    payload_sizes: tuple[int, ...]
    scaling_workers: tuple[int, ...]
    scaling_calls: int
    stall_timeout_s: float  # a session that reports nothing for this long is killed


def make_plan(quick: bool, workers: int) -> Plan:
    if quick:
        return Plan(
            quick=True,
            workers=workers,
            repetitions=1,
            warmup_calls=20,
            latency_calls=200,
            concurrent_calls=2_000,
            efficiency_calls=40,
            efficiency_sleep_s=0.05,
            efficiency_workers=(2,),
            series_factors=(1, 2),
            series_sleep_scale=0.1,
            seed=20240601,
            payload_sizes=(KIB, MIB),
            scaling_workers=(1, 2),
            scaling_calls=200,
            stall_timeout_s=90.0,
        )
    return Plan(
        quick=False,
        workers=workers,
        repetitions=3,
        warmup_calls=100,
        latency_calls=2_000,
        concurrent_calls=20_000,
        efficiency_calls=40,
        efficiency_sleep_s=0.25,
        efficiency_workers=(2, 8),
        series_factors=(1, 2, 5, 10),
        series_sleep_scale=1.0,
        seed=20240601,
        payload_sizes=(KIB, MIB, 32 * MIB, 128 * MIB),
        scaling_workers=tuple(range(1, 9)),
        scaling_calls=2_000,
        stall_timeout_s=420.0,
    )


def sessions(
    plan: Plan, floor: bool, only: tuple[str, ...] | None = None
) -> list[tuple[int, tuple[str, ...]]]:
    """(worker count, workloads) for each start of a system, the main count first;
    with ``only``, just those workloads (and no session left without any).

    A system is started once per distinct worker count rather than once per
    workload: starting Ray or a Dask cluster takes seconds.
    """
    if only is not None:
        kept = [(n, tuple(w for w in names if w in only)) for n, names in sessions(plan, floor)]
        return [(n, names) for n, names in kept if names]
    if floor:  # one process, no workers: only what a transport can do
        return [(1, FLOOR_WORKLOADS)]
    by_count: dict[int, list[str]] = {plan.workers: list(MAIN_WORKLOADS)}
    for count in plan.efficiency_workers:
        by_count.setdefault(count, []).append("efficiency")
    for count in plan.scaling_workers:
        by_count.setdefault(count, []).append("scaling")
    order = [plan.workers, *sorted(c for c in by_count if c != plan.workers)]
    return [(count, tuple(by_count[count])) for count in order]
