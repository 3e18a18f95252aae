"""Peer: the standard library's ``multiprocessing.Pool``, whose ``map`` chunks by itself.

It is here for its bulk path: ``Pool.map`` cuts the items into about four
chunks per worker (the rule ``f.map`` follows), so its batch row shows that
default and its bulk row the suite's shared chunk size.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.pool
import platform
from collections.abc import Callable, Sequence
from typing import Any

from bench.suite.adapter import Kind


class MultiprocessingPoolSystem:
    """The platform's default start method (fork on Linux before 3.14), as the executor's."""

    name = "multiprocessing.Pool"
    kind: Kind = "peer"
    call_how = "`pool.apply(f, (x,))`"
    many_how = "`pool.apply_async` each, then `.get()` each (no asyncio API)"
    batch_how: str | None = "`pool.map(f, xs)` (its default chunksize: ~4 chunks per worker)"
    bulk_how: str | None = "`pool.map(f, xs, chunksize=c)`"

    def __init__(self) -> None:
        self._pool: multiprocessing.pool.Pool | None = None

    def version(self) -> str:
        return f"CPython {platform.python_version()}"

    def start(self, workers: int) -> None:
        self._pool = multiprocessing.Pool(workers)  # its workers start at once

    def stop(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()

    @property
    def pool(self) -> multiprocessing.pool.Pool:
        assert self._pool is not None, "not started"
        return self._pool

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.pool.apply(fn, args)

    def many(self, fn: Callable[..., Any], argslist: Sequence[tuple[Any, ...]]) -> list[Any]:
        results = [self.pool.apply_async(fn, args) for args in argslist]
        return [result.get() for result in results]

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        return self.pool.map(fn, items)

    def bulk_map(self, fn: Callable[..., Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        return self.pool.map(fn, items, chunksize=chunksize)

    def server_rss_mib(self) -> float | None:
        return None
