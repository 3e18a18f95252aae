"""Where a pool-server call's time goes: the server under cProfile, and the floors.

Usage::

    python -m bench.profile_server [--calls 2000] [--concurrent 20000]

1. Latency floors in one run: a bare grpc.aio echo, and the same echo
   relaying each request through one pipe round trip to a Python child (the
   least any gRPC-to-worker design pays), against pool-server's ``compute()``.
2. ``pool-server --workers 2`` run under cProfile while it serves
   ``--concurrent`` no-op calls in flight; prints the functions with the most
   own time, and how much of the total is this project's code.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import uvloop

from bench._server import echo_median_s, pool_server
from distribute_client import compute_this

OUR_MODULES = ("pool_server/", "pool_wire/", "worker_proc/")


WARM_UP_CALLS = 100


def noop() -> None:
    return None


def ours_p50(calls: int) -> float:
    with pool_server(2) as server:
        remote = compute_this(server.address)(noop)
        for _ in range(WARM_UP_CALLS):
            remote().compute()
        samples = []
        for _ in range(calls):
            start = time.perf_counter()
            remote().compute()
            samples.append(time.perf_counter() - start)
    return statistics.median(samples)


async def many_calls(address: str, count: int) -> float:
    remote = compute_this(address)(noop)
    await asyncio.gather(*(remote.async_run() for _ in range(500)))
    start = time.perf_counter()
    await asyncio.gather(*(remote.async_run() for _ in range(count)))
    return count / (time.perf_counter() - start)


def profile_server(concurrent: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stats_file = Path(tmp) / "server.prof"
        command = [sys.executable, "-m", "cProfile", "-o", str(stats_file), "-m", "pool_server"]
        command += ["--workers", "2", "--port", "0", "--state-dir", tmp, "--log-level", "warning"]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        address = line.split("serving on ", 1)[1].split()[0]
        rate = uvloop.run(many_calls(address, concurrent))
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        proc.stdout.close()
        stats = pstats.Stats(str(stats_file))
        raw = stats.stats  # type: ignore[attr-defined]
        total = sum(entry[2] for entry in raw.values())  # entry[2]: own time
        ours = sum(
            entry[2] for (path, _, _), entry in raw.items() if any(m in path for m in OUR_MODULES)
        )
        print(f"\n{concurrent} no-op calls in flight, server under cProfile: {rate:,.0f} calls/s")
        print(
            f"server time seen by cProfile: {total:.2f} s, {total / concurrent * 1e6:.0f} us "
            f"per call; own time in this project's code: {ours / total:.0%}; the rest is "
            "gRPC, asyncio and the event loop (the own time of runners.py:run is C code: "
            "uvloop and gRPC's core)"
        )
        stats.sort_stats("tottime").print_stats(15)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=2000, help="(default: %(default)s)")
    parser.add_argument("--concurrent", type=int, default=20000, help="(default: %(default)s)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    echo = echo_median_s(b"x" * 300, args.calls, WARM_UP_CALLS)
    hop = echo_median_s(b"x" * 300, args.calls, WARM_UP_CALLS, "--pipe")
    ours = ours_p50(args.calls)
    print(f"grpc.aio echo p50:                      {echo * 1e6:7.0f} us")
    print(f"grpc.aio echo + one pipe round trip p50: {hop * 1e6:7.0f} us  ({hop / echo:.2f}x echo)")
    print(
        f"pool-server compute() p50:              {ours * 1e6:7.0f} us  ({ours / echo:.2f}x echo)"
    )
    profile_server(args.concurrent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
