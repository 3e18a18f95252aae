"""Peer: Dask distributed on a ``LocalCluster`` of worker processes, one thread each."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import distributed

from bench.suite.adapter import Kind

READY_TIMEOUT_S = 60.0


class DaskSystem:
    """Every submit says ``pure=False``: Dask would otherwise run identical calls once
    and share the result, which is not the work being measured."""

    name = "Dask distributed"
    kind: Kind = "peer"
    call_how = "`client.submit(f, x).result()`"
    # The sync client: submit() does not block, so every call is in flight at once,
    # and Client(asynchronous=True) would drive the same scheduler the same way.
    many_how = "`client.submit` each, then `client.gather` (non-blocking submits)"
    batch_how: str | None = "`client.gather(client.map(f, xs))`"
    # batch_size groups the submissions to the scheduler; each item is still a task.
    bulk_how: str | None = "`client.gather(client.map(f, xs, batch_size=c))` (a task per item)"

    def __init__(self) -> None:
        self._cluster: Any = None
        self._client: Any = None

    def version(self) -> str:
        return str(distributed.__version__)

    def start(self, workers: int) -> None:
        self._cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self._client = distributed.Client(self._cluster)
        self._client.wait_for_workers(workers, timeout=READY_TIMEOUT_S)

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._client.submit(fn, *args, pure=False).result()

    def many(self, fn: Callable[..., Any], argslist: Sequence[tuple[Any, ...]]) -> list[Any]:
        futures = [self._client.submit(fn, *args, pure=False) for args in argslist]
        return list(self._client.gather(futures))

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        return list(self._client.gather(self._client.map(fn, items, pure=False)))

    def bulk_map(self, fn: Callable[..., Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        futures = self._client.map(fn, items, pure=False, batch_size=chunksize)
        return list(self._client.gather(futures))

    def server_rss_mib(self) -> float | None:
        return None
