"""What recycling and autoscaling cost on the path of a call.

Usage::

    python -m bench.pool_policies [--calls 4000] [--in-flight 200]

Runs ``--calls`` no-op calls, ``--in-flight`` at a time, through a 2-worker
pool-server under each policy: a fixed pool (the baseline), recycling
after 1,000, 100 and 10 calls (each recycle costs a worker start), the soft
memory check after every call, the hard limit's 250 ms sampling, and an
autoscaled pool of 1 to 2 workers that starts cold at 1. Prints calls/s,
the ratio to the fixed pool, and the workers' restarts and recycles after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from bench._server import pool_server
from distribute_client import Client, compute_this

POLICIES: list[tuple[str, int | None, tuple[str, ...]]] = [
    ("fixed, 2 workers", 2, ()),
    ("recycle after 1000 calls", 2, ("--max-tasks-per-worker", "1000")),
    ("recycle after 100 calls", 2, ("--max-tasks-per-worker", "100")),
    ("recycle after 10 calls", 2, ("--max-tasks-per-worker", "10")),
    ("soft RSS check after each call", 2, ("--worker-max-rss", "1G")),
    ("hard RSS limit, sampled", 2, ("--worker-rss-limit", "2G")),
    ("autoscaled 1..2, from 1", None, ("--min-workers", "1", "--max-workers", "2")),
]


def noop(x: int) -> int:
    return x


def rate(address: str, calls: int, in_flight: int) -> float:
    remote = compute_this(address)(noop)

    async def run() -> float:
        limit = asyncio.Semaphore(in_flight)

        async def one(i: int) -> int:
            async with limit:
                return await remote.async_run(i)

        await asyncio.gather(*(one(i) for i in range(50)))  # warm: functions sent, channel up
        start = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(calls)))
        assert results == list(range(calls))
        return calls / (time.perf_counter() - start)

    return asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--in-flight", type=int, default=200)
    args = parser.parse_args()
    print(f"{args.calls} no-op calls, {args.in_flight} in flight, {os.cpu_count()} CPUs")
    print(f"{'policy':34} {'calls/s':>9} {'vs fixed':>9} {'restarts':>9} {'recycles':>9}")
    baseline = 0.0
    for name, workers, flags in POLICIES:
        with pool_server(workers, *flags) as server:
            calls_per_s = rate(server.address, args.calls, args.in_flight)
            status = Client(server.address).workers()
        baseline = baseline or calls_per_s
        restarts = sum(w.restarts for w in status)
        recycles = sum(w.recycles for w in status)
        print(
            f"{name:34} {calls_per_s:9.0f} {calls_per_s / baseline:8.2f}x "
            f"{restarts:9d} {recycles:9d}"
        )


if __name__ == "__main__":
    main()
