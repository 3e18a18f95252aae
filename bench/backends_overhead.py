"""What the ``celery://`` and ``dask://`` backends cost over raw Celery and
raw Dask, on the same workloads.

Usage::

    python -m bench.backends_overhead [--engine celery|dask] [--workers 2]
        [--calls 300] [--concurrent 1000]

``--engine celery`` (the default) runs each system in turn, each with a
private ``redis-server`` (broker and results) and one prefork worker of
``--workers`` processes:

- **raw Celery**: ``bench.suite.systems.celery_redis``, the suite's peer: a
  task per workload function, pickle serialization, ``task.delay(x).get()``;
- **ours on Celery**: ``compute_this("celery://...")`` with workers of
  ``pool_celery`` (``OursOnCelery`` below): the function pickled by value in
  a payload, base64 in a JSON message, run by the pool's runner, its outcome
  waited for by the backend's watcher thread.

``--engine dask`` runs each on a ``LocalCluster`` of ``--workers`` one-thread
worker processes:

- **raw Dask**: ``bench.suite.systems.dask_cluster``, the suite's peer:
  ``client.submit(f, x, pure=False)``;
- **ours on Dask**: ``compute_this("tcp://...")`` on the cluster's
  scheduler (``OursOnDask`` below): a task that runs the call's payload with
  the pool's runner, driven by the backend's own asynchronous client.

Workloads: the p50 and p99 of one blocking no-op round trip (``--calls``
after a warm-up), the throughput of ``--concurrent`` no-op calls in flight
at once (raw: ``delay`` each then ``get`` each; ours: ``asyncio.gather`` of
``async_run``), and of ``--concurrent // 5`` calls that sleep 10 ms (how
well each keeps its workers busy). Overhead is ours / raw (time), raw / ours
(throughput): above 1 is slower than the raw engine.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.suite.adapter import new_loop
from bench.suite.systems.redis_server import RedisServer
from bench.suite.workloads import identity, sleep
from distribute_client import Client, RemoteFunction, compute_this

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
WARMUP_CALLS = 50
REPEATS = 3  # throughput: the median of this many runs
SLEEP_S = 0.01
REPO = Path(__file__).resolve().parent.parent


class OursOn:
    """``distribute_client`` on one engine's backend at ``self.address`` (the
    System shape of ``bench.suite.adapter``, for ``call`` and ``many``)."""

    def __init__(self) -> None:
        self._loop = new_loop()
        self._remotes: dict[Callable[..., Any], RemoteFunction[..., Any]] = {}
        self.address = ""

    def _remote(self, fn: Callable[..., Any]) -> RemoteFunction[..., Any]:
        if fn not in self._remotes:
            self._remotes[fn] = compute_this(self.address)(fn)
        return self._remotes[fn]

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self._remote(fn)(*args).compute()

    def many(self, fn: Callable[..., Any], argslist: Sequence[tuple[Any, ...]]) -> list[Any]:
        remote = self._remote(fn)

        async def gather() -> list[Any]:
            return list(await asyncio.gather(*(remote.async_run(*args) for args in argslist)))

        return self._loop.run_until_complete(gather())


class OursOnCelery(OursOn):
    """The ``celery://`` backend, with a private Redis and one
    ``celery -A pool_celery`` worker."""

    def __init__(self) -> None:
        super().__init__()
        self._redis = RedisServer()
        self._worker: subprocess.Popen[bytes] | None = None

    def start(self, workers: int) -> None:
        broker = self._redis.start()
        self.address = broker.replace("redis://", "celery://", 1)
        command = [sys.executable, "-m", "celery", "-A", "pool_celery", "-b", broker]
        command += ["--result-backend", broker, "worker", "--pool", "prefork"]
        command += ["--concurrency", str(workers), "--loglevel", "WARNING"]
        command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
        self._worker = subprocess.Popen(command, cwd=REPO)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(Client(self.address).workers()) < workers:
            if self._worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the pool_celery worker did not start ({self._worker.poll()})")
        self.many(sleep, [(0.05,)] * workers)

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.terminate()
            try:
                self._worker.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._worker.kill()
                self._worker.wait()
        self._redis.stop()


class OursOnDask(OursOn):
    """The ``dask://`` backend on a ``LocalCluster`` of one-thread worker
    processes, as the raw peer runs."""

    def __init__(self) -> None:
        super().__init__()
        self._cluster: Any = None

    def start(self, workers: int) -> None:
        import distributed

        self._cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        self.address = self._cluster.scheduler_address
        deadline = time.monotonic() + READY_TIMEOUT_S
        while len(Client(self.address).workers()) < workers:
            if time.monotonic() > deadline:
                raise RuntimeError("the Dask workers did not start")
            time.sleep(0.1)
        self.many(sleep, [(0.05,)] * workers)

    def stop(self) -> None:
        if self._cluster is not None:
            self._cluster.close()


def measure(system: Any, workers: int, calls: int, concurrent: int) -> dict[str, float]:
    try:
        system.start(workers)
        for i in range(WARMUP_CALLS):
            assert system.call(identity, i) == i
        latencies = []
        for i in range(calls):
            start = time.perf_counter()
            system.call(identity, i)
            latencies.append(time.perf_counter() - start)
        latencies.sort()

        def rate(fn: Callable[..., Any], argslist: list[tuple[Any, ...]]) -> float:
            runs = []
            for _ in range(REPEATS):
                start = time.perf_counter()
                system.many(fn, argslist)
                runs.append(len(argslist) / (time.perf_counter() - start))
            return statistics.median(runs)

        return {
            "p50": statistics.median(latencies),
            "p99": latencies[min(len(latencies) - 1, round(0.99 * (len(latencies) - 1)))],
            "noop": rate(identity, [(i,) for i in range(concurrent)]),
            "sleep": rate(sleep, [(SLEEP_S,)] * (concurrent // 5)),
        }
    finally:
        system.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", choices=["celery", "dask"], default="celery")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--concurrent", type=int, default=1000)
    args = parser.parse_args()
    raw_system: Any
    ours_system: OursOn
    if args.engine == "celery":
        import celery

        from bench.suite.systems.celery_redis import CelerySystem

        raw_system, ours_system, engine = CelerySystem(), OursOnCelery(), "Celery"
        setup = f"celery {celery.__version__}, {args.workers} prefork processes"
    else:
        import distributed

        from bench.suite.systems.dask_cluster import DaskSystem

        raw_system, ours_system, engine = DaskSystem(), OursOnDask(), "Dask"
        setup = f"distributed {distributed.__version__}, {args.workers} one-thread processes"
    raw = measure(raw_system, args.workers, args.calls, args.concurrent)
    ours = measure(ours_system, args.workers, args.calls, args.concurrent)
    print(f"{setup}, Python {platform.python_version()}, {os.cpu_count()} CPUs")
    print(f"{'':38} {'raw ' + engine:>12} {'ours on ' + engine:>15} {'overhead':>9}")
    rows = [
        ("no-op round trip p50 (ms)", "p50", 1e3, False),
        ("no-op round trip p99 (ms)", "p99", 1e3, False),
        (f"{args.concurrent} no-op calls in flight (calls/s)", "noop", 1.0, True),
        (f"{args.concurrent // 5} x 10 ms sleep in flight (calls/s)", "sleep", 1.0, True),
    ]
    for label, key, scale, higher_is_better in rows:
        ratio = raw[key] / ours[key] if higher_is_better else ours[key] / raw[key]
        print(f"{label:38} {raw[key] * scale:12.2f} {ours[key] * scale:15.2f} {ratio:8.2f}x")


if __name__ == "__main__":
    main()
