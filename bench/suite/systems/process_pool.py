"""Peer: the standard library's ``concurrent.futures.ProcessPoolExecutor``."""

from __future__ import annotations

import platform
from concurrent.futures import Executor, ProcessPoolExecutor

from bench.suite.systems._futures import ExecutorSystem


class ProcessPoolSystem(ExecutorSystem):
    """The platform's default start method (fork on Linux before 3.14)."""

    name = "ProcessPoolExecutor"

    def version(self) -> str:
        return f"CPython {platform.python_version()}"

    def make_executor(self, workers: int) -> Executor:
        return ProcessPoolExecutor(max_workers=workers)
