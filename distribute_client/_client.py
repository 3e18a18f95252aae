"""``Client``: questions about a pool-server itself, rather than calls."""

from __future__ import annotations

from dataclasses import dataclass

from distribute_client import _transport
from distribute_client._sync import run_sync

# GetWorkers is cheap; a server that takes longer than this is unwell.
STATUS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class WorkerInfo:
    """One worker slot as the server reports it."""

    id: int
    pid: int  # 0 while the slot has no process
    state: str  # "starting", "idle", "busy", "stopping" or "dead"
    jobs_done: int
    restarts: int


@dataclass(frozen=True)
class PoolStatus:
    workers: tuple[WorkerInfo, ...]
    queue_length: int
    queue_capacity: int


class Client:
    """A handle on one pool-server (``host:port``, ``grpc://`` or ``grpcs://``)."""

    def __init__(self, server: str | None = None) -> None:
        self.address = _transport.Address.parse(server)

    def __repr__(self) -> str:
        return f"Client({str(self.address)!r})"

    async def async_status(self) -> PoolStatus:
        reply = await _transport.get_workers(self.address, STATUS_TIMEOUT_S)
        return PoolStatus(
            workers=tuple(
                WorkerInfo(w.id, w.pid, w.state, w.jobs_done, w.restarts) for w in reply.workers
            ),
            queue_length=reply.queue_length,
            queue_capacity=reply.queue_capacity,
        )

    def status(self) -> PoolStatus:
        """Every worker slot plus the queue's length and capacity."""
        return run_sync(self.async_status())

    def workers(self) -> list[WorkerInfo]:
        """Every worker slot: id, pid, state, jobs done and restarts."""
        return list(self.status().workers)
