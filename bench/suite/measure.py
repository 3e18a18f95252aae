"""The workloads, written once against ``System`` so every system is timed alike.

Each takes (system, plan, workers) and returns the figures as a JSON-able
dict. Each warms up first (workers spawned, connections open, code imported),
then times ``plan.repetitions`` repetitions and reports medians; every result
is checked, so a system that drops or mixes up calls fails instead of looking
fast.
"""

from __future__ import annotations

import heapq
import random
import statistics
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

from bench.suite.adapter import System, Unsupported, bulk_chunksize
from bench.suite.plan import Plan
from bench.suite.workloads import SPIN_ITERATIONS, identity, sleep, spin

Figures = dict[str, Any]
RSS_SAMPLE_S = 0.01


class WrongResult(Exception):
    """A system returned something other than what the call computes."""


def percentile(samples: list[float], pct: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def check(got: object, expected: object, what: str) -> None:
    if got != expected:
        raise WrongResult(f"{what}: wrong result ({str(got)[:80]!r})")


def latency(system: System, plan: Plan, workers: int) -> Figures:
    """Sequential blocking round trips of the no-op; p50 and p99 per repetition."""
    for i in range(plan.warmup_calls):
        system.call(identity, i)
    p50s, p99s = [], []
    for _ in range(plan.repetitions):
        samples = []
        for i in range(plan.latency_calls):
            start = time.perf_counter()
            value = system.call(identity, i)
            samples.append(time.perf_counter() - start)
            check(value, i, "latency")
        p50s.append(percentile(samples, 50))
        p99s.append(percentile(samples, 99))
    return {
        "p50_ms": statistics.median(p50s) * 1e3,
        "p99_ms": statistics.median(p99s) * 1e3,
        "calls": plan.latency_calls,
        "how": system.call_how,
    }


def _rate(run: Callable[[list[int]], list[Any]], plan: Plan, count: int) -> float:
    """Median calls per second of ``run`` over ``count`` items."""
    items = list(range(count))
    check(run(items[: min(200, count)]), items[: min(200, count)], "warm-up")
    rates = []
    for _ in range(plan.repetitions):
        start = time.perf_counter()
        values = run(items)
        rates.append(count / (time.perf_counter() - start))
        check(values, items, f"{count} calls")
    return statistics.median(rates)


def throughput(system: System, plan: Plan, workers: int) -> Figures:
    """``plan.concurrent_calls`` no-op calls in flight at once."""
    rate = _rate(lambda xs: system.many(identity, [(x,) for x in xs]), plan, plan.concurrent_calls)
    return {"calls_per_s": rate, "calls": plan.concurrent_calls, "how": system.many_how}


def batch(system: System, plan: Plan, workers: int) -> Figures:
    """The same number of no-op calls through the system's batch path."""
    if system.batch_how is None:
        raise Unsupported("no batch path")
    rate = _rate(lambda xs: system.map(identity, xs), plan, plan.concurrent_calls)
    return {"calls_per_s": rate, "calls": plan.concurrent_calls, "how": system.batch_how}


def bulk(system: System, plan: Plan, workers: int) -> Figures:
    """The same no-op calls through the system's chunked bulk API, every system
    given the same chunk size (``bulk_chunksize``): the like-for-like batch row."""
    if system.bulk_how is None:
        raise Unsupported("no chunked bulk API")
    chunksize = bulk_chunksize(plan.concurrent_calls, workers)
    run = lambda xs: system.bulk_map(identity, xs, chunksize)  # noqa: E731
    rate = _rate(run, plan, plan.concurrent_calls)
    return {
        "calls_per_s": rate,
        "calls": plan.concurrent_calls,
        "chunksize": chunksize,
        "how": system.bulk_how,
    }


def efficiency(system: System, plan: Plan, workers: int) -> Figures:
    """Equal sleeps: effectiveness = ideal time (sleeps spread evenly) / real time."""
    system.many(sleep, [(0.01,)] * workers)
    seconds = plan.efficiency_sleep_s
    calls = plan.efficiency_calls
    ideal = max(seconds, calls * seconds / workers)
    reals = []
    for _ in range(plan.repetitions):
        start = time.perf_counter()
        values = system.many(sleep, [(seconds,)] * calls)
        reals.append(time.perf_counter() - start)
        check(values, [seconds] * calls, "sleeps")
    real = statistics.median(reals)
    return {
        "calls": calls,
        "sleep_s": seconds,
        "ideal_s": ideal,
        "real_s": real,
        "effectiveness": ideal / real,
    }


def greedy_makespan(sleeps: list[float], workers: int) -> float:
    """Finish time of the sleeps taken in order, each by the earliest-free worker:
    the best a first-come pool can do (the same as test_load.greedy_makespan)."""
    free_at = [0.0] * workers
    for seconds in sleeps:
        heapq.heapreplace(free_at, free_at[0] + seconds)
    return max(free_at)


def series(system: System, plan: Plan, workers: int) -> Figures:
    """The seed's load test: factor x workers random sleeps per series, fixed seed, so
    every system sleeps the same sequence. One pass per factor (the sleeps are long)."""
    system.many(sleep, [(0.01,)] * workers)
    rng = random.Random(plan.seed)
    rows = []
    for factor in plan.series_factors:
        sleeps = [rng.random() * plan.series_sleep_scale for _ in range(factor * workers)]
        start = time.perf_counter()
        values = system.many(sleep, [(s,) for s in sleeps])
        real = time.perf_counter() - start
        check(values, sleeps, "random sleeps")
        minimal = max(max(sleeps), sum(sleeps) / workers)
        schedule = greedy_makespan(sleeps, workers)
        rows.append(
            {
                "factor": factor,
                "calls": len(sleeps),
                "minimal_s": minimal,
                "schedule_s": schedule,
                "real_s": real,
                "effectiveness": minimal / real,
                "vs_schedule": schedule / real,
            }
        )
    return {"rows": rows}


class PeakSampler:
    """Samples a memory reading from a thread while a call runs; keeps the peak."""

    def __init__(self, read: Callable[[], float | None]) -> None:
        self._read = read
        self._stop = threading.Event()
        self.peak: float | None = read()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_S):
            value = self._read()
            if value is not None and (self.peak is None or value > self.peak):
                self.peak = value

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def payloads(system: System, plan: Plan, workers: int) -> Figures:
    """A bytes argument returned as the result; MiB/s counts both directions. The relay's
    memory is read just before the largest payload's first call and sampled during
    its calls, so the rise is that payload's."""
    rng = random.Random(plan.seed)  # random bytes: nothing on the way can compress them
    system.call(identity, rng.randbytes(64 * 1024))
    rows = []
    before_rss: float | None = None
    peak_rss: float | None = None
    for size in plan.payload_sizes:
        data = rng.randbytes(size)
        largest = size == max(plan.payload_sizes) and system.server_rss_mib() is not None
        if largest:
            before_rss = system.server_rss_mib()
        seconds = []
        for _ in range(plan.repetitions):
            with PeakSampler(system.server_rss_mib) if largest else nullcontext() as sampler:
                start = time.perf_counter()
                value = system.call(identity, data)
                seconds.append(time.perf_counter() - start)
            check(value, data, f"{size}-byte payload")
            del value
            if sampler is not None and sampler.peak is not None:
                peak_rss = max(peak_rss or 0.0, sampler.peak)
        median = statistics.median(seconds)
        rows.append({"bytes": size, "seconds": median, "mib_per_s": 2 * size / median / 2**20})
    return {"rows": rows, "before_rss_mib": before_rss, "peak_rss_mib": peak_rss}


def scaling(system: System, plan: Plan, workers: int) -> Figures:
    """Calls of a fixed ~1 ms of CPU work in flight at once, at this worker count; also
    the work's median CPU time in the workers, the unit of the ideal curve."""
    args = [(SPIN_ITERATIONS,)] * plan.scaling_calls
    expected = spin(SPIN_ITERATIONS)[0]
    system.many(spin, args[: workers * 4])
    rates, work = [], []
    for _ in range(plan.repetitions):
        start = time.perf_counter()
        values = system.many(spin, args)
        rates.append(plan.scaling_calls / (time.perf_counter() - start))
        check([total for total, _ in values], [expected] * plan.scaling_calls, "spin")
        work += [cpu_s for _, cpu_s in values]
    return {
        "calls": plan.scaling_calls,
        "calls_per_s": statistics.median(rates),
        "work_s": statistics.median(work),
    }


WORKLOADS: dict[str, Callable[[System, Plan, int], Figures]] = {
    "latency": latency,
    "throughput": throughput,
    "batch": batch,
    "bulk": bulk,
    "efficiency": efficiency,
    "series": series,
    "payloads": payloads,
    "scaling": scaling,
}
