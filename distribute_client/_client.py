"""``Client``: questions about a pool-server and its jobs, rather than calls."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from distribute_client import _transport
from distribute_client._jobs import LOOKUP_TIMEOUT_S, BatchStatus, Job, JobStatus, batch_status
from distribute_client._sync import run_sync
from pool_proto import pool_pb2
from pool_wire.names import JobState, WorkerState


@dataclass(frozen=True)
class WorkerInfo:
    """One worker slot as the server reports it."""

    id: int
    pid: int  # 0 while the slot has no process
    state: WorkerState  # a str: "starting", "idle", "busy", "stopping" or "dead"
    jobs_done: int
    restarts: int


@dataclass(frozen=True)
class PoolStatus:
    workers: tuple[WorkerInfo, ...]
    queue_length: int
    queue_capacity: int


class Client:
    """A handle on one pool-server (``host:port``, ``grpc://`` or ``grpcs://``;
    default ``$POOL_SERVER``, else ``127.0.0.1:50051``)."""

    def __init__(self, server: str | None = None) -> None:
        self.address = _transport.Address.parse(server)

    def __repr__(self) -> str:
        return f"Client({str(self.address)!r})"

    async def _call(self, method: str, request: Any) -> Any:
        return await _transport.call(self.address, method, request, LOOKUP_TIMEOUT_S)

    async def async_status(self) -> PoolStatus:
        reply = await self._call("GetWorkers", pool_pb2.GetWorkersRequest())
        return PoolStatus(
            workers=tuple(
                WorkerInfo(w.id, w.pid, WorkerState.from_proto(w.state), w.jobs_done, w.restarts)
                for w in reply.workers
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

    def job(self, job_id: str) -> Job[Any]:
        """Re-attach to a submitted job by its id (from any process)."""
        return Job(self.address, job_id)

    async def async_jobs(
        self, state: str | None = None, batch_id: str | None = None, limit: int = 100
    ) -> list[JobStatus]:
        request = pool_pb2.ListJobsRequest(
            state=_job_state(state).to_proto() if state else "JOB_STATE_UNSPECIFIED",
            batch_id=batch_id or "",
            limit=limit,
        )
        reply = await self._call("ListJobs", request)
        return [JobStatus.from_proto(status) for status in reply.jobs]

    def jobs(
        self, state: str | None = None, batch_id: str | None = None, limit: int = 100
    ) -> list[JobStatus]:
        """Submitted jobs, newest first, optionally only those in ``state`` or a batch."""
        return run_sync(self.async_jobs(state, batch_id, limit))

    async def async_batch(self, batch_id: str) -> BatchStatus:
        return batch_status(await self._call("GetBatch", pool_pb2.BatchRef(batch_id=batch_id)))

    def batch(self, batch_id: str) -> BatchStatus:
        """A batch's jobs per state and its completion percentage (done / total)."""
        return run_sync(self.async_batch(batch_id))


def _job_state(name: str) -> JobState:
    try:
        return JobState(name)
    except ValueError:
        known = ", ".join(JobState)
        raise ValueError(f"unknown job state {name!r}; one of {known}") from None
