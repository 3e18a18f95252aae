#!/usr/bin/env python3
"""Load test of a running pool-server, as the original challenge's ``test_load.py``.

Usage::

    ./test_load.py [HOST:PORT] [--factors 1 2 5 10] [--equal SECONDS] [--seed N]

For each factor, runs factor * workers concurrent calls, each sleeping a
random 0-1 s (or ``--equal`` seconds) and returning its square and its
worker's pid, then prints how long that took against the best possible
(``minimal_execution_time``: the longest sleep, or all sleeps spread evenly
over the workers, whichever is more) and how many workers served how many
calls. For random sleeps it also prints the makespan of a greedy first-come
schedule of the same sleeps, the best a FIFO pool can do for that sequence,
which separates scheduling loss from the system's own overhead.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import os
import random
import sys
import time
from collections import Counter

from distribute_client import PoolError, RemoteFunction, compute_this

SEPARATOR = "-" * 80


def sleep_and_square(x: int, seconds: float) -> tuple[int, int]:
    time.sleep(seconds)
    return x * x, os.getpid()


def greedy_makespan(sleeps: list[float], workers: int) -> float:
    """Finish time of the sleeps taken in order, each by the earliest-free worker."""
    free_at = [0.0] * workers
    for seconds in sleeps:
        heapq.heapreplace(free_at, free_at[0] + seconds)
    return max(free_at)


async def run_series(
    remote: RemoteFunction[[int, float], tuple[int, int]], sleeps: list[float]
) -> tuple[float, list[tuple[int, int]]]:
    """Run one call per sleep concurrently; return the wall time and the results."""
    start = time.perf_counter()
    results = await asyncio.gather(*(remote.async_run(i, s) for i, s in enumerate(sleeps)))
    return time.perf_counter() - start, results


def report(workers: int, sleeps: list[float], real: float, pids: list[int], equal: bool) -> None:
    minimal = max(max(sleeps), sum(sleeps) / workers)
    print(SEPARATOR)
    print(f"workers: {workers}")
    print(f"calls: {len(sleeps)}")
    print(f"minimal_execution_time: {minimal:f}")
    print(f"real_execution_time: {real:f}")
    print(f"effectiveness of parallelization: {minimal / real * 100:.2f}%")
    if not equal:
        schedule = greedy_makespan(sleeps, workers)
        print(
            f"schedule_execution_time: {schedule:f} (greedy first-come schedule of these "
            f"sleeps on {workers} workers), effectiveness against schedule: "
            f"{schedule / real * 100:.2f}%"
        )
    print("num of calls: served by num of wokers")  # sic, as the original prints it
    calls_per_worker = Counter(pids)
    for calls, count in sorted(Counter(calls_per_worker.values()).items()):
        print(f"{calls}: {count}")


async def load_test(
    remote: RemoteFunction[[int, float], tuple[int, int]],
    workers: int,
    factors: list[int],
    equal: float | None,
    rng: random.Random,
) -> int:
    await remote.async_run(0, 0.0)  # connect the channel before timing anything
    for factor in factors:
        calls = factor * workers
        sleeps = [equal if equal is not None else rng.random() for _ in range(calls)]
        real, results = await run_series(remote, sleeps)
        wrong = [(i, r) for i, r in enumerate(results) if r[0] != i * i]
        if wrong:
            i, (got, _) = wrong[0]
            print(
                f"error: {len(wrong)} of {calls} results wrong; "
                f"call {i} returned {got} instead of {i * i}"
            )
            return 1
        report(workers, sleeps, real, [pid for _, pid in results], equal is not None)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "server", nargs="?", help="HOST:PORT (default: $POOL_SERVER, else 127.0.0.1:50051)"
    )
    parser.add_argument(
        "--factors",
        type=int,
        nargs="+",
        default=[1, 2, 5, 10],
        help="calls per series as multiples of the worker count (default: 1 2 5 10)",
    )
    parser.add_argument(
        "--equal", type=float, metavar="SECONDS", help="every call sleeps this long"
    )
    parser.add_argument("--seed", type=int, help="seed for the random sleeps")
    args = parser.parse_args()
    if min(args.factors) < 1 or (args.equal is not None and args.equal < 0):
        parser.error("factors must be at least 1 and --equal at least 0")
    try:
        remote = compute_this(args.server)(sleep_and_square)
        workers = remote.get_workers()
        return asyncio.run(
            load_test(remote, workers, args.factors, args.equal, random.Random(args.seed))
        )
    except (PoolError, ValueError) as e:  # ValueError: a malformed address
        print(f"error: {e}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
