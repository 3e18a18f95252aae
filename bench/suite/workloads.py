"""The functions every system runs.

Module-level and free of heavy imports, so each peer can import them by name
in its workers (ProcessPoolExecutor, loky, Dask, Ray, Celery) and pool-server
can pickle this module by value cheaply.
"""

from __future__ import annotations

import time
from typing import TypeVar

T = TypeVar("T")

# About 1 ms of CPU in CPython 3.11 on a 2020s core: enough work per call that
# adding workers can help, little enough that per-call overhead still shows.
SPIN_ITERATIONS = 50_000


def identity(x: T) -> T:
    """The no-op: returns its argument, so results can be checked (and payloads echoed)."""
    return x


def sleep(seconds: float) -> float:
    """Hold a worker without using a CPU, as the seed's load test does."""
    time.sleep(seconds)
    return seconds


def spin(iterations: int = SPIN_ITERATIONS) -> tuple[int, float]:
    """A fixed amount of CPU work, the same on every system, for the scaling curve.

    Returns the sum (to be checked) and the CPU seconds the loop took in the
    worker: the scaling curve's ideal comes from the work as it ran there, not
    as it runs in another process on a machine whose speed drifts.
    """
    started = time.process_time()
    total = 0
    for i in range(iterations):
        total += i
    return total, time.process_time() - started
