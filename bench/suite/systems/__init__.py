"""One adapter per system, each a ``bench.suite.adapter.System``.

``REGISTRY`` maps the command-line name to (module, class) and is imported
lazily by ``create``: a peer whose library is not installed fails there, with
an ``ImportError`` the session reports as "skipped: ...".
"""

from __future__ import annotations

import importlib
from typing import NamedTuple, cast

from bench.suite.adapter import System


class Entry(NamedTuple):
    module: str  # in this package
    cls: str
    label: str  # the adapter's ``name``, known here too for systems that never start


# Order is the order of the tables: ours, the floors, then the peers.
REGISTRY: dict[str, Entry] = {
    "pool-server": Entry("ours", "PoolServerSystem", "pool-server"),
    "grpc-floor": Entry("grpc_floor", "GrpcEchoFloor", "grpc.aio echo (floor)"),
    "pipe-floor": Entry("pipe_floor", "PipeEchoFloor", "pipe echo (floor)"),
    "processpool": Entry("process_pool", "ProcessPoolSystem", "ProcessPoolExecutor"),
    "mp-pool": Entry("mp_pool", "MultiprocessingPoolSystem", "multiprocessing.Pool"),
    "loky": Entry("loky_pool", "LokySystem", "loky"),
    "dask": Entry("dask_cluster", "DaskSystem", "Dask distributed"),
    "ray": Entry("ray_local", "RaySystem", "Ray"),
    "celery": Entry("celery_redis", "CelerySystem", "Celery + Redis"),
}

FLOORS = ("grpc-floor", "pipe-floor")


def create(key: str) -> System:
    """The adapter for ``key``; ImportError when its library is missing."""
    entry = REGISTRY[key]
    loaded = importlib.import_module(f"bench.suite.systems.{entry.module}")
    return cast(System, getattr(loaded, entry.cls)())
