"""Peer: loky's ``ProcessPoolExecutor`` (the robust pool behind joblib)."""

from __future__ import annotations

from concurrent.futures import Executor

import loky

from bench.suite.systems._futures import ExecutorSystem


class LokySystem(ExecutorSystem):
    """A fresh ``loky.ProcessPoolExecutor`` rather than the reusable singleton, so its
    worker count is exactly the one asked for and it stops with the run."""

    name = "loky"

    def version(self) -> str:
        return str(loky.__version__)

    def make_executor(self, workers: int) -> Executor:
        executor: Executor = loky.ProcessPoolExecutor(max_workers=workers)
        return executor
