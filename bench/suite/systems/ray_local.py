"""Peer: Ray, a local cluster started by ``ray.init`` and shut down with the session."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from typing import Any

import ray

from bench.suite.adapter import Kind, Unsupported, new_loop
from bench.suite.workloads import sleep

WARMUP_SLEEP_S = 0.05


class RaySystem:
    """``num_cpus=N`` makes N one-CPU tasks run at once, Ray's notion of N workers."""

    name = "Ray"
    kind: Kind = "peer"
    call_how = "`ray.get(f.remote(x))`"
    many_how = "`asyncio.gather` of awaited `f.remote(x)` refs"
    batch_how: str | None = "`ray.get([f.remote(x) for x in xs])`"
    # Ray's chunked map is ray.util.multiprocessing.Pool: an actor pool beside the
    # tasks measured here, a different system, so Ray has no bulk row.
    bulk_how: str | None = None

    def __init__(self) -> None:
        self._loop = new_loop()
        self._remotes: dict[Callable[..., Any], Any] = {}

    def version(self) -> str:
        return str(ray.__version__)

    def start(self, workers: int) -> None:
        os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
        ray.init(
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
        # Ray starts worker processes on demand; one sleep per CPU starts them all.
        self.many(sleep, [(WARMUP_SLEEP_S,)] * workers)

    def stop(self) -> None:
        ray.shutdown()

    def _remote(self, fn: Callable[..., Any]) -> Any:
        if fn not in self._remotes:
            self._remotes[fn] = ray.remote(fn)
        return self._remotes[fn]

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return ray.get(self._remote(fn).remote(*args))

    def many(self, fn: Callable[..., Any], argslist: Sequence[tuple[Any, ...]]) -> list[Any]:
        remote = self._remote(fn)

        async def gather() -> list[Any]:
            return list(await asyncio.gather(*(remote.remote(*args) for args in argslist)))

        return self._loop.run_until_complete(gather())

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        remote = self._remote(fn)
        return list(ray.get([remote.remote(item) for item in items]))

    def bulk_map(self, fn: Callable[..., Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        raise Unsupported("no chunked bulk API")

    def server_rss_mib(self) -> float | None:
        return None
