"""Durable jobs against plain calls, and the server's memory with many queued jobs.

Usage::

    python -m bench.jobs_throughput [--workers 2] [--jobs 5000] [--queued 100000]

In one run, on one server with a journal: (a) ``--jobs`` concurrent no-op
``async_run`` calls (no journal); (b) the same number of no-op jobs through
``f.async_map(durable=True)`` (submitted in chunks, journaled, results fetched per job);
(c) the same through one ``async_submit`` + ``async_result`` per job. The
ratios to (a) are printed. Then (d), with every worker busy, ``--queued``
jobs are submitted and the server's resident memory is read before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench._server import pool_server
from distribute_client import Client, RemoteFunction, compute_this
from distribute_client._submit import submit


def noop(x: int) -> int:
    return x


def wait_for_file(path: str) -> None:
    while not os.path.exists(path):
        time.sleep(0.05)


async def plain_calls(remote: RemoteFunction[[int], int], n: int) -> float:
    start = time.perf_counter()
    results = await asyncio.gather(*(remote.async_run(i) for i in range(n)))
    assert results == list(range(n))
    return time.perf_counter() - start


async def mapped_jobs(remote: RemoteFunction[[int], int], n: int) -> float:
    start = time.perf_counter()
    results = [value async for value in remote.async_map(range(n), durable=True)]
    assert results == list(range(n))
    return time.perf_counter() - start


async def single_jobs(remote: RemoteFunction[[int], int], n: int) -> float:
    async def one(i: int) -> int:
        job = await remote.async_submit(i)
        return await job.async_result()

    start = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(n)))
    assert results == list(range(n))
    return time.perf_counter() - start


async def queue_many(remote: RemoteFunction[[int], int], n: int) -> float:
    start = time.perf_counter()
    for first in range(0, n, 1000):
        payloads = [remote(i).payload() for i in range(first, min(first + 1000, n))]
        await submit(remote, payloads, [1] * len(payloads), batch_id="q")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2, help="(default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=5000, help="(default: %(default)s)")
    parser.add_argument("--queued", type=int, default=100_000, help="(default: %(default)s)")
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()} on {platform.platform()}"
    )
    with pool_server(args.workers, "--queue-size", str(args.queued + 10)) as server:
        remote = compute_this(server.address)(noop)
        asyncio.run(plain_calls(remote, 100))  # warm up workers and channel
        plain = asyncio.run(plain_calls(remote, args.jobs))
        mapped = asyncio.run(mapped_jobs(remote, args.jobs))
        single = asyncio.run(single_jobs(remote, args.jobs))
        print(f"server: {server.address} with {args.workers} workers, journal on")
        print(f"(a) {args.jobs} concurrent async_run:        {args.jobs / plain:8,.0f} calls/s")
        print(
            f"(b) {args.jobs} calls via durable async_map: {args.jobs / mapped:8,.0f} calls/s"
            f"   ratio to (a) {plain / mapped:.2f}"
        )
        print(
            f"(c) {args.jobs} async_submit + async_result: {args.jobs / single:8,.0f} jobs/s"
            f"   ratio to (a) {plain / single:.2f}"
        )

        with tempfile.TemporaryDirectory() as tmp:
            go = Path(tmp) / "go"
            blocker = compute_this(server.address)(wait_for_file)
            busy = [blocker.submit(str(go)) for _ in range(args.workers)]
            while Client(server.address).status().queue_length:
                time.sleep(0.05)
            before = server.rss_mib()
            seconds = asyncio.run(queue_many(remote, args.queued))
            after = server.rss_mib()
            queued = Client(server.address).status().queue_length
            print(
                f"(d) {queued:,} queued jobs: server RSS {before:.0f} MiB -> {after:.0f} MiB "
                f"(+{(after - before) * 1024 * 1024 / queued:,.0f} bytes per job); "
                f"submitted in {seconds:.1f} s ({queued / seconds:,.0f} jobs/s)"
            )
            go.touch()
            for job in busy:
                job.result(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
