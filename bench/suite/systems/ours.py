"""pool-server through ``distribute_client``, the way its README says to use it."""

from __future__ import annotations

import asyncio
import importlib.metadata
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import Any

from bench._server import Server, pool_server
from bench.suite.adapter import Kind, new_loop
from distribute_client import RemoteFunction, compute_this


class PoolServerSystem:
    """A throwaway ``pool-server --workers N --port 0`` (bench._server) and its client.

    The benchmark functions live in a module that is not installed, so the
    client pickles them by value, as it would a user's script.
    """

    name = "pool-server"
    kind: Kind = "ours"
    call_how = "`f(x).compute()`"
    many_how = "`asyncio.gather` of `f.async_run(x)`"
    batch_how: str | None = "`f.map(xs)` (plain calls, each a chunk of calls)"
    # f.map chunks by itself: its bulk row is its batch path with the chunk size
    # spelled out (the same one), next to the peers' chunked APIs.
    bulk_how: str | None = "`f.map(xs, chunk_size=c)` (its default c)"

    def __init__(self) -> None:
        self._stack = ExitStack()
        self._server: Server | None = None
        self._loop = new_loop()
        self._remotes: dict[Callable[..., Any], RemoteFunction[..., Any]] = {}

    def version(self) -> str:
        return importlib.metadata.version("pool-server")

    def start(self, workers: int) -> None:
        self._server = self._stack.enter_context(pool_server(workers))

    def stop(self) -> None:
        self._stack.close()  # the loop stays open: its gRPC channel closes with the process

    def _remote(self, fn: Callable[..., Any]) -> RemoteFunction[..., Any]:
        if fn not in self._remotes:
            assert self._server is not None, "not started"
            self._remotes[fn] = compute_this(self._server.address)(fn)
        return self._remotes[fn]

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._remote(fn)(*args).compute()

    def many(self, fn: Callable[..., Any], argslist: Sequence[tuple[Any, ...]]) -> list[Any]:
        remote = self._remote(fn)

        async def gather() -> list[Any]:
            return list(await asyncio.gather(*(remote.async_run(*args) for args in argslist)))

        return self._loop.run_until_complete(gather())

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        with self._remote(fn).map(items) as results:
            return list(results)

    def bulk_map(self, fn: Callable[..., Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        with self._remote(fn).map(items, chunk_size=chunksize) as results:
            return list(results)

    def server_rss_mib(self) -> float | None:
        return self._server.rss_mib() if self._server is not None else None
