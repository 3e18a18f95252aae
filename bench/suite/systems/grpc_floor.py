"""Floor: a bare grpc.aio unary echo, server in a subprocess, same concurrency as ours.

The arguments are pickled and echoed; the function is never run, so only the
identity workloads (latency, throughput, payloads) apply. Whatever pool-server
costs above this floor is its own (queueing, the worker pipe, pickling the
function), below it nothing gRPC-based can go.
"""

from __future__ import annotations

import asyncio
import pickle
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import version
from typing import Any

import grpc

from bench.suite.adapter import Kind, Unsupported, new_loop, rss_mib
from bench.suite.systems.grpc_echo_server import MESSAGE_OPTIONS, METHOD, SERVICE
from bench.suite.workloads import identity

STOP_TIMEOUT_S = 10.0


class GrpcEchoFloor:
    name = "grpc.aio echo (floor)"
    kind: Kind = "floor"
    call_how = "one unary call, awaited"
    many_how = "`asyncio.gather` of unary calls on one channel"
    batch_how: str | None = None
    bulk_how: str | None = None

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._loop = new_loop()
        self._echo: Any = None

    def version(self) -> str:
        return f"grpcio {version('grpcio')}"

    def start(self, workers: int) -> None:
        command = [sys.executable, "-m", "bench.suite.systems.grpc_echo_server"]
        self._proc = subprocess.Popen(command, stdout=subprocess.PIPE)
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().decode()
        if not line.startswith("port "):
            raise RuntimeError(f"echo server did not start: {line!r}")
        port = int(line.split()[1])

        async def connect() -> Any:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=MESSAGE_OPTIONS)
            await channel.channel_ready()
            return channel.unary_unary(f"/{SERVICE}/{METHOD}")

        self._echo = self._loop.run_until_complete(connect())

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    async def _one(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        if fn is not identity:
            raise Unsupported("a transport floor only echoes")
        return pickle.loads(await self._echo(pickle.dumps(args, protocol=5)))[0]

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._loop.run_until_complete(self._one(fn, args))

    def many(self, fn: Callable[..., Any], argslist: Sequence[tuple[Any, ...]]) -> list[Any]:
        async def gather() -> list[Any]:
            return list(await asyncio.gather(*(self._one(fn, args) for args in argslist)))

        return self._loop.run_until_complete(gather())

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        raise Unsupported("no batch path")

    def bulk_map(self, fn: Callable[..., Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        raise Unsupported("no batch path")

    def server_rss_mib(self) -> float | None:
        return rss_mib(self._proc.pid) if self._proc is not None else None
