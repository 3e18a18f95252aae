"""The server's memory while many separate clients each have a call waiting.

Usage::

    python -m bench.many_clients [--clients 1000] [--processes 10] [--workers 2] [--rounds 2]

``--processes`` client processes open ``--clients`` gRPC channels between
them, each its own TCP connection (a local subchannel pool, as separate
machines would have). Once every channel is connected they all send one
``Run`` at once: a call sleeping ``--sleep`` seconds, so that nearly all of
them wait in the server's queue together. The server's resident memory and
open file descriptors are read idle, peak while the calls are held, and again
once every client has gone. Each of ``--rounds`` rounds brings a new set of
clients to the same server: a peak that does not grow from round to round is
memory that is reused, not leaked.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import platform
import sys
import time
from multiprocessing.synchronize import Barrier

import grpc

from bench._server import Server, pool_server
from bench.suite.measure import PeakSampler
from distribute_client import compute_this
from pool_proto import pool_pb2, pool_pb2_grpc
from pool_wire.tokens import TOKEN_ENV, bearer

CONNECT_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 600.0


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


async def _clients(address: str, count: int, payload: bytes, barrier: Barrier) -> None:
    # Channels with identical arguments share one connection unless each has
    # its own subchannel pool.
    options = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.aio.insecure_channel(address, options=options) for _ in range(count)]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(c.channel_ready() for c in channels)), CONNECT_TIMEOUT_S
        )
        await asyncio.to_thread(barrier.wait)
        request = pool_pb2.RunRequest(payload=payload)
        metadata = (("authorization", bearer(os.environ[TOKEN_ENV])),)  # set by pool_server()
        replies = await asyncio.gather(
            *(
                pool_pb2_grpc.PoolStub(c).Run(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
                for c in channels
            )
        )
        assert all(reply.outcome for reply in replies)
    finally:
        await asyncio.gather(*(c.close() for c in channels))


def _client_process(address: str, count: int, payload: bytes, barrier: Barrier) -> None:
    asyncio.run(_clients(address, count, payload, barrier))


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def one_round(
    server: Server, clients: int, processes: int, seconds: float, idle_rss: float
) -> None:
    """Bring ``clients`` in, hold a call each, let them go; RSS against ``idle_rss``."""
    payload = compute_this(server.address)(nap)(seconds).payload()
    idle_fds = _open_fds(server.pid)
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes + 1)
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    children = [
        context.Process(target=_client_process, args=(server.address, n, payload, barrier))
        for n in shares
    ]
    start = time.perf_counter()
    for child in children:
        child.start()
    barrier.wait(CONNECT_TIMEOUT_S)
    connected_fds = _open_fds(server.pid)
    with PeakSampler(server.rss_mib) as sampler:
        for child in children:
            child.join()
    elapsed = time.perf_counter() - start
    if any(child.exitcode for child in children):
        raise RuntimeError(f"client processes failed: {[c.exitcode for c in children]}")
    time.sleep(1.0)  # let the server close the connections
    after_rss, after_fds = server.rss_mib(), _open_fds(server.pid)
    peak = sampler.peak or idle_rss
    print(
        f" {connected_fds - idle_fds:+,} fds while connected; server RSS peak {peak:4.0f} MiB "
        f"(+{(peak - idle_rss) * 1024 / clients:,.1f} KiB per client over idle), "
        f"{after_rss:4.0f} MiB and {after_fds - idle_fds:+,} fds once they left; "
        f"all {clients:,} calls answered in {elapsed:.1f} s"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=1000, help="(default: %(default)s)")
    parser.add_argument("--processes", type=int, default=10, help="(default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="(default: %(default)s)")
    parser.add_argument(
        "--sleep", type=float, default=0.005, help="each call's sleep (default: %(default)s)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="(default: %(default)s)")
    args = parser.parse_args()
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()} on {platform.platform()}"
    )
    with pool_server(args.workers) as server:
        compute_this(server.address)(nap)(0).compute()  # workers and their first job warmed up
        print(
            f"{args.clients:,} clients in {args.processes} processes, "
            f"one {args.sleep} s call each, {args.workers} workers"
        )
        idle_rss = server.rss_mib()
        print(f"idle: server RSS {idle_rss:.0f} MiB")
        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number}:", end="")
            one_round(server, args.clients, args.processes, args.sleep, idle_rss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
