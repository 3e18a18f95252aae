"""``Client``: questions about a pool-server and its jobs, rather than calls."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from distribute_client import _codec, _transport
from distribute_client._credentials import Credentials
from distribute_client._jobs import LOOKUP_TIMEOUT_S, BatchStatus, Job, JobStatus, batch_status
from distribute_client._submit import submit_payloads
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
    default ``$POOL_SERVER``, else ``127.0.0.1:50051``).

    ``token`` defaults to ``$POOL_TOKEN``, the first line of
    ``$POOL_TOKEN_FILE``, else the token of a server of this user with the
    default state dir. For ``grpcs://``, ``tls_ca`` is the CA to trust
    (default ``$POOL_TLS_CA``, else the system's roots), and ``tls_cert`` and
    ``tls_key`` a client certificate for servers that ask for one (default
    ``$POOL_TLS_CERT`` and ``$POOL_TLS_KEY``).
    """

    def __init__(
        self,
        server: str | None = None,
        *,
        token: str | None = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
    ) -> None:
        credentials = Credentials.resolve(token, tls_ca, tls_cert, tls_key)
        self.address = _transport.Address.parse(server, credentials)

    def __repr__(self) -> str:
        return f"Client({str(self.address)!r})"

    async def async_status(self) -> PoolStatus:
        request = pool_pb2.GetWorkersRequest()
        reply = await _transport.get_workers(self.address, request, LOOKUP_TIMEOUT_S)
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

    async def async_submit_json(
        self,
        function: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        retries: int = 0,
        timeout: float | None = None,  # noqa: ASYNC109 - the job's limit, not this call's
        name: str | None = None,
    ) -> Job[Any]:
        payload = _codec.encode_json_call(function, args, kwargs or {})
        (job,) = await submit_payloads(
            self.address,
            [payload],
            name=name or function,
            retries=retries,
            time_limit_s=timeout or 0.0,
        )
        return job

    def submit_json(
        self,
        function: str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        retries: int = 0,
        timeout: float | None = None,
        name: str | None = None,
    ) -> Job[Any]:
        """Submit ``function(*args, **kwargs)`` as a durable job, by name and
        with JSON arguments: nothing is pickled, the worker imports
        ``function`` (``"package.module:name"``) itself.

        ``retries`` more attempts follow a worker crash; ``timeout`` limits
        each attempt's running time; ``name`` labels the job in listings
        (default: ``function``). ``result()`` returns the value as JSON
        gives it back, and raises a failure as :class:`RemoteError`.
        ``ValueError`` if ``function`` is not ``module:name``,
        :class:`SerializationError` if an argument is not JSON.
        """
        call = self.async_submit_json(
            function, args, kwargs, retries=retries, timeout=timeout, name=name
        )
        return run_sync(call)

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
        reply = await _transport.list_jobs(self.address, request, LOOKUP_TIMEOUT_S)
        return [JobStatus.from_proto(status) for status in reply.jobs]

    def jobs(
        self, state: str | None = None, batch_id: str | None = None, limit: int = 100
    ) -> list[JobStatus]:
        """Submitted jobs, newest first, optionally only those in ``state`` or a batch."""
        return run_sync(self.async_jobs(state, batch_id, limit))

    async def async_batch(self, batch_id: str) -> BatchStatus:
        request = pool_pb2.BatchRef(batch_id=batch_id)
        return batch_status(await _transport.get_batch(self.address, request, LOOKUP_TIMEOUT_S))

    def batch(self, batch_id: str) -> BatchStatus:
        """A batch's jobs per state and its completion percentage (done / total)."""
        return run_sync(self.async_batch(batch_id))


def _job_state(name: str) -> JobState:
    try:
        return JobState(name)
    except ValueError:
        known = ", ".join(JobState)
        raise ValueError(f"unknown job state {name!r}; one of {known}") from None
