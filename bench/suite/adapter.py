"""What the suite needs from a system, and small helpers the adapters share.

Every workload in ``measure`` is written against ``System`` only, so a figure
for pool-server and a figure for a peer come from the same timing code; an
adapter's job is just to express one call, many calls in flight, the batch
path, and the chunked bulk path where the system has one, in its system's own
idiom (and to say which idiom, in ``*_how``).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import uvloop

from distribute_client._batch import calls_per_job

Kind = Literal["ours", "floor", "peer"]


class Unsupported(Exception):
    """The system has no way to do this workload (a floor cannot sleep): shown as n/a."""


class System(Protocol):
    """One system under test; ``start`` before anything else, ``stop`` at the end."""

    name: str  # shown in the tables
    kind: Kind
    call_how: str  # how one blocking round trip is made
    many_how: str  # how many calls are put in flight at once
    batch_how: str | None  # the batch path, None where the system has none
    bulk_how: str | None  # the chunked bulk path, None where the system has none

    def version(self) -> str:
        """The system's version, for the table."""
        ...

    def start(self, workers: int) -> None:
        """Start it with ``workers`` worker processes; return once they can take work."""
        ...

    def stop(self) -> None:
        """Stop everything ``start`` started."""
        ...

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """One blocking round trip: ``fn(*args)`` run by a worker, its value back."""
        ...

    def many(self, fn: Callable[..., Any], argslist: Sequence[tuple[Any, ...]]) -> list[Any]:
        """All of ``fn(*args)`` in flight at once; their values in order."""
        ...

    def map(self, fn: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        """``fn(item)`` for each item through the system's batch path; values in order."""
        ...

    def bulk_map(self, fn: Callable[..., Any], items: Sequence[Any], chunksize: int) -> list[Any]:
        """``fn(item)`` for each item through the system's own chunked bulk API,
        ``chunksize`` items to a task (where it has tasks of many items); values in order."""
        ...

    def server_rss_mib(self) -> float | None:
        """Resident memory of the process that relays payloads, where there is one."""
        ...


def bulk_chunksize(total: int, workers: int) -> int:
    """The chunk size every bulk row uses: ``f.map``'s own default, which is
    ``multiprocessing.Pool.map``'s rule (about 4 chunks per worker) capped at
    256 calls, so the peers' chunked APIs get exactly the chunks pool-server makes."""
    return calls_per_job(total, workers)


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago (for servers that need one named)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def new_loop() -> asyncio.AbstractEventLoop:
    """One event loop kept for an adapter's life, so channels and connections are reused
    across workloads instead of being opened inside a timed section. uvloop, as
    pool-server's own client and daemon use."""
    return uvloop.new_event_loop()


def rss_mib(pid: int) -> float | None:
    """A process's resident memory from /proc; None once it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None
