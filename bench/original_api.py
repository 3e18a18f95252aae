"""The original Go server's API on this server: what an ``Execute`` costs
beside our own calls, and the original's test_load.py figures through it.

Usage::

    python -m bench.original_api [--workers 2] [--calls 4000] [--in-flight 200]

Starts a pool-server with ``--serve-original-api --auth none`` and, on it:

- no-op calls, ``--in-flight`` at a time: ``Execute`` as the original's
  clients send it (one unary RPC each, the function marshalled with every
  call), against ``distribute_client``'s ``async_run`` (our Calls stream);
- the original's load test through ``Execute``: 1x, 2x, 5x and 10x the
  worker count of calls sleeping a random 0-1 s, all at once, and its
  "effectiveness of parallelization" (minimal time / real time).
"""

from __future__ import annotations

import argparse
import asyncio
import marshal
import os
import pickle
import random
import time
from collections.abc import Callable
from typing import Any

import grpc

from bench._server import pool_server
from bench.pool_policies import rate
from pool_proto import challenge_pb2, challenge_pb2_grpc


def noop(x: int) -> int:
    return x


def sleepy(x: float) -> tuple[float, int]:
    time.sleep(x)
    return x * x, os.getpid()


def request(func: Callable[..., Any], depmodules: list[str], *args: Any) -> bytes:
    """As the original's client encodes a call."""
    return pickle.dumps((marshal.dumps(func.__code__), depmodules, args, {}))


async def execute_all(address: str, calls: list[bytes], in_flight: int) -> tuple[list[Any], float]:
    """Every request through Execute, ``in_flight`` at a time; values and seconds."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = challenge_pb2_grpc.RemoteExecuteAPIStub(channel)
        limit = asyncio.Semaphore(in_flight)

        async def one(body: bytes) -> Any:
            async with limit:
                reply = await stub.Execute(challenge_pb2.RequestExecute(request=body))
            if reply.error:
                raise RuntimeError(reply.error)
            value, _, _, exception = pickle.loads(reply.result)
            if exception is not None:
                raise exception
            return value

        await asyncio.gather(*(one(body) for body in calls[:50]))  # warm: channel up
        start = time.perf_counter()
        values = await asyncio.gather(*(one(body) for body in calls))
        return values, time.perf_counter() - start


def load_test(address: str, workers: int, factor: int) -> None:
    """One round of the original's test_load.py, printed as it prints it."""
    numbers = [random.random() for _ in range(workers * factor)]
    calls = [request(sleepy, ["os", "time"], x) for x in numbers]
    values, elapsed = asyncio.run(execute_all(address, calls, len(calls)))
    assert [square for square, _ in values] == [x * x for x in numbers]
    minimal = max(max(numbers), sum(numbers) / workers)
    served = len({pid for _, pid in values})
    print(
        f"  {len(calls):4d} calls: minimal {minimal:6.3f} s, real {elapsed:6.3f} s, "
        f"effectiveness {100 * minimal / elapsed:6.2f}%, {served} workers served"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--calls", type=int, default=4000)
    parser.add_argument("--in-flight", type=int, default=200)
    args = parser.parse_args()
    flags = ("--serve-original-api", "--auth", "none")
    with pool_server(args.workers, *flags) as server:
        bodies = [request(noop, [], i) for i in range(args.calls)]
        values, elapsed = asyncio.run(execute_all(server.address, bodies, args.in_flight))
        assert values == list(range(args.calls))
        execute = args.calls / elapsed
        ours = rate(server.address, args.calls, args.in_flight)
        print(f"no-op calls, {args.in_flight} in flight, {args.workers} workers:")
        print(f"  Execute (the original's API): {execute:8.0f} calls/s")
        print(f"  distribute_client async_run:  {ours:8.0f} calls/s ({ours / execute:.2f}x)")
        print("the original's test_load.py through Execute:")
        for factor in (1, 2, 5, 10):
            load_test(server.address, args.workers, factor)


if __name__ == "__main__":
    main()
