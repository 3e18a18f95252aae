"""What ProcessPoolExecutor and loky share: the ``concurrent.futures.Executor`` idiom.

Neither has an async API; many calls in flight are ``submit`` each, then wait
on every future, and the batch path is ``executor.map`` with its default
chunksize of 1, as a user would write it; the bulk path is the same
``executor.map`` given a ``chunksize``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from bench.suite.adapter import Kind
from bench.suite.workloads import sleep

WARMUP_SLEEP_S = 0.05


class ExecutorSystem:
    name = "an Executor"
    kind: Kind = "peer"
    call_how = "`executor.submit(f, x).result()`"
    many_how = "`executor.submit` each, then `.result()` of each (no async API)"
    batch_how: str | None = "`executor.map(f, xs)` (chunksize 1, the default)"
    bulk_how: str | None = "`executor.map(f, xs, chunksize=c)`"

    def __init__(self) -> None:
        self._executor: Executor | None = None

    def make_executor(self, workers: int) -> Executor:
        raise NotImplementedError

    def start(self, workers: int) -> None:
        self._executor = self.make_executor(workers)
        # Executors spawn workers lazily; one sleep per worker makes them all exist.
        self.many(sleep, [(WARMUP_SLEEP_S,)] * workers)

    def stop(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    @property
    def executor(self) -> Executor:
        assert self._executor is not None, "not started"
        return self._executor

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.executor.submit(fn, *args).result()

    def many(self, fn: Callable[..., Any], argslist: Sequence[tuple[Any, ...]]) -> list[Any]:
        futures = [self.executor.submit(fn, *args) for args in argslist]
        return [future.result() for future in futures]

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        return list(self.executor.map(fn, items))

    def bulk_map(self, fn: Callable[..., Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        return list(self.executor.map(fn, items, chunksize=chunksize))

    def server_rss_mib(self) -> float | None:
        return None
