"""Round-trip latency and throughput of no-op calls through a pool-server.

Usage::

    python -m bench.latency_throughput [--workers 2] [--calls 2000] [--concurrent 20000]

Starts its own ``pool-server --workers N --port 0`` and stops it at the end,
then measures (a) sequential blocking ``f().compute()`` calls, (b) sequential
``await f.async_run()`` calls on one event loop, and (c) many concurrent
``async_run`` calls gathered at once.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable

from bench._server import pool_server
from distribute_client import RemoteFunction, compute_this

WARMUP_CALLS = 100
STOP_TIMEOUT_S = 30.0


def noop() -> None:
    return None


def summary(seconds: list[float]) -> str:
    micros = sorted(s * 1e6 for s in seconds)
    p99 = micros[min(len(micros) - 1, round(0.99 * (len(micros) - 1)))]
    return (
        f"p50 {statistics.median(micros):8.1f} us   p99 {p99:8.1f} us   "
        f"mean {statistics.fmean(micros):8.1f} us   ({len(micros)} calls)"
    )


def time_each(call: Callable[[], object], n: int) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return samples


async def async_latency(remote: RemoteFunction[[], None], calls: int) -> list[float]:
    for _ in range(WARMUP_CALLS):
        await remote.async_run()
    samples = []
    for _ in range(calls):
        start = time.perf_counter()
        await remote.async_run()
        samples.append(time.perf_counter() - start)
    return samples


async def throughput(remote: RemoteFunction[[], None], calls: int) -> tuple[float, list[str]]:
    """Seconds for ``calls`` concurrent calls, and the errors of those that failed."""
    await remote.async_run()  # connect first
    start = time.perf_counter()
    outcomes = await asyncio.gather(
        *(remote.async_run() for _ in range(calls)), return_exceptions=True
    )
    seconds = time.perf_counter() - start
    return seconds, [f"{type(o).__name__}: {o}" for o in outcomes if isinstance(o, BaseException)]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2, help="(default: %(default)s)")
    parser.add_argument(
        "--calls",
        type=int,
        default=2000,
        help="sequential calls per latency run (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrent",
        type=int,
        default=20000,
        help="calls in the throughput run (default: %(default)s)",
    )
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()} on {platform.platform()}"
    )
    with pool_server(args.workers) as server:
        print(f"server: {server.address} with {args.workers} workers")
        remote = compute_this(server.address)(noop)

        time_each(lambda: remote().compute(), WARMUP_CALLS)
        samples = time_each(lambda: remote().compute(), args.calls)
        print(f"(a) sequential f().compute():       {summary(samples)}")

        samples = asyncio.run(async_latency(remote, args.calls))
        print(f"(b) sequential await f.async_run(): {summary(samples)}")

        seconds, errors = asyncio.run(throughput(remote, args.concurrent))
        answered = args.concurrent - len(errors)
        print(
            f"(c) {args.concurrent} concurrent async_run on {args.workers} workers: "
            f"{answered / seconds:,.0f} calls/s, {seconds:.2f} s in total"
        )
        for error, count in Counter(errors).most_common():
            print(f"    FAILED {count} of {args.concurrent} calls: {error}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
