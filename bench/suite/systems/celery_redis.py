"""Peer: Celery, a prefork worker started as a subprocess, Redis as broker and backend."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import celery
from celery import group

from bench.suite.adapter import Kind
from bench.suite.systems import celery_app
from bench.suite.systems.redis_server import RedisServer
from bench.suite.workloads import sleep

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
RESULT_TIMEOUT_S = 900.0  # a bound, not an expectation: a stuck get() must end
WARMUP_SLEEP_S = 0.05


class CelerySystem:
    """Celery as its docs start it: ``celery -A app worker --concurrency N``, with the
    default prefetching; gossip, mingle and heartbeats off (one worker, nothing to meet)."""

    name = "Celery + Redis"
    kind: Kind = "peer"
    call_how = "`task.delay(x).get()`"
    many_how = "`task.delay` each, then `.get()` each (no asyncio API)"
    batch_how: str | None = "`group(task.s(x) for x in xs)().get()`"
    bulk_how: str | None = "`task.chunks(zip(xs), c)().get()` (a starmap task per chunk)"

    def __init__(self) -> None:
        self._redis = RedisServer()
        self._worker: subprocess.Popen[bytes] | None = None

    def version(self) -> str:
        return str(celery.__version__)

    def start(self, workers: int) -> None:
        url = self._redis.start()
        celery_app.configure(url)
        command = [sys.executable, "-m", "celery", "-A", "bench.suite.systems.celery_app"]
        command += ["worker", "--pool", "prefork", "--concurrency", str(workers)]
        command += ["--loglevel", "WARNING", "--hostname", "bench@localhost"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        env = {**os.environ, celery_app.URL_ENV: url}
        if os.geteuid() == 0:  # Celery refuses pickle as root; this Redis is private to us
            env["C_FORCE_ROOT"] = "1"
        self._worker = subprocess.Popen(command, env=env)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not celery_app.app.control.ping(timeout=0.5):
            if self._worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the celery worker did not start (exit {self._worker.poll()})")
        self.many(sleep, [(WARMUP_SLEEP_S,)] * workers)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.terminate()  # a warm shutdown
            try:
                self._worker.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._worker.kill()
                self._worker.wait()
        self._redis.stop()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return celery_app.TASKS[fn].delay(*args).get(timeout=RESULT_TIMEOUT_S)

    def many(self, fn: Callable[..., Any], argslist: Sequence[tuple[Any, ...]]) -> list[Any]:
        # Not ResultSet.get(): its native join polls every 0.5 s, so a handful of
        # short calls would take half a second; get() each is both the common idiom
        # and faster here.
        task = celery_app.TASKS[fn]
        results = [task.delay(*args) for args in argslist]
        return [result.get(timeout=RESULT_TIMEOUT_S) for result in results]

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        task = celery_app.TASKS[fn]
        return list(group(task.s(item) for item in items)().get(timeout=RESULT_TIMEOUT_S))

    def bulk_map(self, fn: Callable[..., Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        task = celery_app.TASKS[fn]
        parts = task.chunks(zip(items), chunksize)().get(timeout=RESULT_TIMEOUT_S)
        return [value for part in parts for value in part]

    def server_rss_mib(self) -> float | None:
        return self._redis.rss_mib()
