"""Does a large durable job stall everyone else's calls? (issue 8)

Usage::

    python -m bench.journal_stall [--workers 2] [--mib 256] [--interval-ms 10] [--plain]

One server with a journal. A second process makes a no-op ``compute()``
call every ``--interval-ms`` and records each call's latency; meanwhile
this process submits one durable job with a ``--mib`` MiB argument, waits
for its result, and then stops the prober. Printed: p50, p99 and max of
the prober's latencies while the big job was submitted and run, and how
long the big job took. A server whose event loop waits on the disk shows
it in the max. ``--plain`` sends the same argument as a plain ``compute()``
call instead (no journal), to tell the journal's share of a stall from the
transport's.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import statistics
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

from bench._server import pool_server
from distribute_client import compute_this


def noop() -> None:
    return None


def size_of(data: bytes) -> int:
    return len(data)


def probe(address: str, interval_s: float, ready: Event, stop: Event, out: Connection) -> None:
    """No-op calls every ``interval_s`` until ``stop``; sends back their latencies."""
    remote = compute_this(address)(noop)
    for _ in range(20):  # warm the channel and both workers
        remote().compute()
    ready.set()
    samples: list[tuple[float, float]] = []  # (when it started, how long it took)
    next_at = time.perf_counter()
    while not stop.is_set():
        start = time.perf_counter()
        remote().compute()
        samples.append((time.time(), time.perf_counter() - start))
        next_at = max(next_at + interval_s, time.perf_counter())
        time.sleep(max(0.0, next_at - time.perf_counter()))
    out.send(samples)


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=2, help="(default: %(default)s)")
    parser.add_argument("--mib", type=int, default=256, help="(default: %(default)s)")
    parser.add_argument("--interval-ms", type=float, default=10.0, help="(default: %(default)s)")
    parser.add_argument("--plain", action="store_true", help="a compute() call, not a job")
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()} on {platform.platform()}"
    )
    context = multiprocessing.get_context("spawn")  # gRPC is not fork-safe
    with pool_server(args.workers) as server:
        ready, stop = context.Event(), context.Event()
        receive, send = context.Pipe(duplex=False)
        prober = context.Process(
            target=probe, args=(server.address, args.interval_ms / 1000, ready, stop, send)
        )
        prober.start()
        if not ready.wait(60):
            raise RuntimeError("the prober never got going")
        data = os.urandom(args.mib * 1024 * 1024)
        started_at = time.time()
        start = time.perf_counter()
        remote = compute_this(server.address)(size_of)
        if args.plain:
            assert remote(data).compute() == len(data)
            submitted = time.perf_counter() - start
        else:
            job = remote.submit(data)
            submitted = time.perf_counter() - start
            assert job.result(timeout=600) == len(data)
        took = time.perf_counter() - start
        stop.set()
        samples = receive.recv()
        prober.join()
    ms = [seconds * 1000 for _, seconds in samples]
    what = "plain compute() call" if args.plain else "durable job"
    print(f"server: {server.address}, {args.workers} workers, journal on")
    print(f"{what} of {args.mib} MiB: sent in {submitted:.2f} s, result after {took:.2f} s")
    print(
        f"prober: {len(ms)} no-op compute() calls, one every {args.interval_ms:g} ms: "
        f"p50 {statistics.median(ms):.1f} ms, p99 {percentile(ms, 0.99):.1f} ms, "
        f"max {max(ms):.1f} ms"
    )
    worst = sorted(samples, key=lambda sample: -sample[1])[:3]
    print(
        "slowest: "
        + ", ".join(f"{s * 1000:.0f} ms at +{at - started_at:.2f} s" for at, s in worst)
        + f" (sent by +{submitted:.2f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
