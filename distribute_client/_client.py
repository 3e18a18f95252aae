"""``Client``: questions about pool-servers and their jobs, rather than calls.

With several servers each question goes to all of them at once and the
answers are merged; every entry says which server it is from (``server``).
A server that does not answer is left out of the merged answer (and named in
``PoolStatus.unreachable``); when none answers, the error is raised.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from distribute_client import _balancer, _codec, _transport
from distribute_client._jobs import (
    LOOKUP_TIMEOUT_S,
    SERVER_SEPARATOR,
    BatchStatus,
    Job,
    JobStatus,
    batch_status,
)
from distribute_client._results import Batch
from distribute_client._servers import Servers, ServerSpec, TokenSpec
from distribute_client._submit import submit_payloads
from distribute_client._sync import run_sync
from distribute_client.errors import JobNotFoundError, PoolError
from pool_proto import pool_pb2
from pool_wire.names import FINISHED_STATES, JobState, WorkerState
from pool_wire.refs import Ref

T = TypeVar("T")

# A stored object may be large: its upload gets minutes, not a lookup's seconds.
PUT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class WorkerInfo:
    """One worker slot as the server reports it."""

    id: int
    pid: int  # 0 while the slot has no process
    state: WorkerState  # a str: "starting", "idle", "busy", "stopping" or "dead"
    jobs_done: int
    restarts: int  # processes replaced for anything but recycling
    server: str  # the server it belongs to
    recycles: int = 0  # processes replaced by the server's recycling policy
    rss_bytes: int = 0  # the live process's resident memory; 0 while none
    last_exit_reason: str = ""  # why its last process went, e.g. "crash", "recycled-tasks"


@dataclass(frozen=True)
class PoolStatus:
    """Every worker slot, and the queues' length and capacity, summed over
    the servers that answered; ``unreachable`` names those that did not."""

    workers: tuple[WorkerInfo, ...]
    queue_length: int
    queue_capacity: int
    unreachable: tuple[str, ...] = ()
    # How few and how many workers the pools may have (summed over servers).
    min_workers: int = 0
    max_workers: int = 0


class Client:
    """A handle on pool-servers: one (``host:port``, ``grpc://`` or
    ``grpcs://``), several (a comma list or a list), every address of
    ``dns:///name:port``, or ``local`` (this process's pool); default
    ``$POOL_SERVER``, else ``127.0.0.1:50051``. ``policy`` and ``weights``
    choose the server for a submit, as for :func:`compute_this`.

    ``token`` (one for all servers, or a dict by server as listed) defaults
    to ``$POOL_TOKEN``, the first line of ``$POOL_TOKEN_FILE``, else the
    token of a server of this user with the default state dir. For
    ``grpcs://``, ``tls_ca`` is the CA to trust (default ``$POOL_TLS_CA``,
    else the system's roots), and ``tls_cert`` and ``tls_key`` a client
    certificate for servers that ask for one (default ``$POOL_TLS_CERT``
    and ``$POOL_TLS_KEY``).
    """

    def __init__(
        self,
        server: ServerSpec | Servers = None,
        *,
        token: TokenSpec = None,
        tls_ca: str | os.PathLike[str] | None = None,
        tls_cert: str | os.PathLike[str] | None = None,
        tls_key: str | os.PathLike[str] | None = None,
        policy: str | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> None:
        if isinstance(server, Servers):
            self.servers = server
        else:
            self.servers = Servers.parse(
                server,
                token=token,
                tls_ca=tls_ca,
                tls_cert=tls_cert,
                tls_key=tls_key,
                policy=policy,
                weights=weights,
            )

    def __repr__(self) -> str:
        return f"Client({str(self.servers)!r})"

    async def _ask_each(
        self, ask: Callable[[_transport.Address], Awaitable[T]]
    ) -> tuple[list[tuple[_transport.Address, T]], list[tuple[_transport.Address, PoolError]]]:
        """``ask`` every server: the answers, and the errors of those that
        failed; raises the first error when none answered."""
        answered: list[tuple[_transport.Address, T]] = []
        failed: list[tuple[_transport.Address, PoolError]] = []
        for address, answer in await _balancer.on_each(self.servers, ask):
            if isinstance(answer, PoolError):
                failed.append((address, answer))
            else:
                answered.append((address, answer))
        if not answered:
            raise failed[0][1]
        return answered, failed

    async def async_status(self) -> PoolStatus:
        request = pool_pb2.GetWorkersRequest()
        answered, failed = await self._ask_each(
            lambda address: _transport.get_workers(address, request, LOOKUP_TIMEOUT_S)
        )
        return PoolStatus(
            workers=tuple(
                WorkerInfo(
                    w.id,
                    w.pid,
                    WorkerState.from_proto(w.state),
                    w.jobs_done,
                    w.restarts,
                    str(address),
                    w.recycles,
                    w.rss_bytes,
                    w.last_exit_reason,
                )
                for address, reply in answered
                for w in reply.workers
            ),
            queue_length=sum(reply.queue_length for _, reply in answered),
            queue_capacity=sum(reply.queue_capacity for _, reply in answered),
            unreachable=tuple(str(address) for address, _ in failed),
            min_workers=sum(reply.limits.min_workers for _, reply in answered),
            max_workers=sum(reply.limits.max_workers for _, reply in answered),
        )

    def status(self) -> PoolStatus:
        """Every worker slot plus the queue's length and capacity (summed over servers)."""
        return run_sync(self.async_status())

    async def async_set_worker_limits(self, min_workers: int, max_workers: int) -> None:
        request = pool_pb2.WorkerLimits(min_workers=min_workers, max_workers=max_workers)
        _, failed = await self._ask_each(
            lambda address: _transport.set_worker_limits(address, request, LOOKUP_TIMEOUT_S)
        )
        if failed:  # every server must have taken them
            raise failed[0][1]

    def set_worker_limits(self, min_workers: int, max_workers: int) -> None:
        """Let each server's pool have ``min_workers`` to ``max_workers``
        workers from now on (an admin token): it sizes itself to the work
        between them, as under ``pool-server --min-workers --max-workers``.
        Raises ``InvalidRequestError`` for limits the server refuses."""
        run_sync(self.async_set_worker_limits(min_workers, max_workers))

    def workers(self) -> list[WorkerInfo]:
        """Every worker slot: id, pid, state, jobs done, restarts and server."""
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
            self.servers,
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
        """Re-attach to a submitted job by its id (from any process). With
        several servers the id names its server (``server/id``), which need
        not be one of this client's: it is reached with this client's
        credentials."""
        single = self.servers.single
        if single is not None:
            return Job(single, job_id)
        server, sep, server_job_id = job_id.rpartition(SERVER_SEPARATOR)
        if not sep or not server:
            raise JobNotFoundError(
                f"job id {job_id!r} does not say which of the servers {self.servers} holds it "
                f"(a client of several servers gives ids as server{SERVER_SEPARATOR}id)"
            )
        return Job(self._address_of(server), server_job_id, server_in_id=True)

    def _address_of(self, server: str) -> _transport.Address:
        for address in self.servers.addresses:
            if str(address) == server:
                return address
        dns = self.servers.dns
        credentials = dns.credentials if dns else self.servers.addresses[0].credentials
        return _transport.Address.parse(server, credentials, keepalive=True)

    async def async_jobs(
        self, state: str | None = None, batch_id: str | None = None, limit: int = 100
    ) -> list[JobStatus]:
        request = pool_pb2.ListJobsRequest(
            state=_job_state(state).to_proto() if state else "JOB_STATE_UNSPECIFIED",
            batch_id=batch_id or "",
            limit=limit,
        )
        answered, _ = await self._ask_each(
            lambda address: _transport.list_jobs(address, request, LOOKUP_TIMEOUT_S)
        )
        named = self.servers.single is None
        statuses = [
            JobStatus.from_proto(
                status, address, f"{address}{SERVER_SEPARATOR}{status.id}" if named else None
            )
            for address, reply in answered
            for status in reply.jobs
        ]
        statuses.sort(key=lambda status: status.created_at, reverse=True)
        return statuses[:limit]

    def jobs(
        self, state: str | None = None, batch_id: str | None = None, limit: int = 100
    ) -> list[JobStatus]:
        """Submitted jobs, newest first, optionally only those in ``state`` or
        a batch: at most ``limit``, of all servers together."""
        return run_sync(self.async_jobs(state, batch_id, limit))

    async def async_batch(self, batch_id: str) -> Batch:
        return Batch(await self._batch_status(batch_id), self)

    async def _batch_status(self, batch_id: str) -> BatchStatus:
        request = pool_pb2.BatchRef(batch_id=batch_id)
        single = self.servers.single
        if single is not None:
            return batch_status(await _transport.get_batch(single, request, LOOKUP_TIMEOUT_S))
        answered, failed = await self._ask_each(lambda a: self._batch_on(a, request))
        parts = [reply for _, reply in answered if reply is not None]
        if not parts:
            if failed:
                raise failed[0][1]
            raise JobNotFoundError(f"no batch {batch_id!r} on any of {self.servers}")
        return _merged(batch_id, parts)

    async def _batch_on(
        self, address: _transport.Address, request: pool_pb2.BatchRef
    ) -> BatchStatus | None:
        """One server's part of a batch; None if it holds none of it."""
        try:
            return batch_status(await _transport.get_batch(address, request, LOOKUP_TIMEOUT_S))
        except JobNotFoundError:
            return None

    async def async_put(self, value: Any) -> Ref:
        """:meth:`put` from asyncio code."""
        pickled = _codec.pickle_object(value)
        request = pool_pb2.ObjectData(pickled=pickled)
        answered, failed = await self._ask_each(
            lambda address: _transport.put_object(address, request, PUT_TIMEOUT_S)
        )
        if failed:  # a call may go to any of them: each must hold it
            raise failed[0][1]
        reply = answered[0][1]
        return Ref(reply.key, reply.size)

    def put(self, value: Any) -> Ref:
        """Store ``value`` on the server (on each of several) once, for calls
        to use by reference: pass the Ref in its place, as an argument or a
        global, and the function gets the value. Each call then carries only
        the key, and each worker unpickles the value once. It stays in the
        server's memory until :meth:`delete` or the server stops, so a
        durable job cannot refer to one."""
        return run_sync(self.async_put(value))

    async def async_delete(self, ref: Ref) -> None:
        request = pool_pb2.ObjectRef(key=ref.key)
        await self._ask_each(
            lambda address: _transport.delete_object(address, request, LOOKUP_TIMEOUT_S)
        )

    def delete(self, ref: Ref) -> None:
        """Forget a stored object (calls already sent with it still have it)."""
        run_sync(self.async_delete(ref))

    def batch(self, batch_id: str) -> Batch:
        """A batch's jobs per state and its completion percentage (done /
        total), over every server that holds some of it; its ``results()``
        are the values of the map's calls, in input order, from any process."""
        return run_sync(self.async_batch(batch_id))

    async def async_cancel_batch(self, batch_id: str) -> BatchStatus:
        request = pool_pb2.BatchRef(batch_id=batch_id)
        single = self.servers.single
        if single is not None:
            return batch_status(await _transport.cancel_batch(single, request, LOOKUP_TIMEOUT_S))
        answered, failed = await self._ask_each(lambda a: self._cancel_batch_on(a, request))
        parts = [reply for _, reply in answered if reply is not None]
        if failed:  # every server must have cancelled its part
            raise failed[0][1]
        if not parts:
            raise JobNotFoundError(f"no batch {batch_id!r} on any of {self.servers}")
        return _merged(batch_id, parts)

    async def _cancel_batch_on(
        self, address: _transport.Address, request: pool_pb2.BatchRef
    ) -> BatchStatus | None:
        try:
            reply = await _transport.cancel_batch(address, request, LOOKUP_TIMEOUT_S)
        except JobNotFoundError:
            return None
        return batch_status(reply)

    def cancel_batch(self, batch_id: str) -> BatchStatus:
        """Cancel every unfinished job of a batch (a durable map's), on every
        server that holds some of it: queued ones are dropped, running ones
        have their workers stopped. The batch as it stands after;
        ``JobNotFoundError`` if no server holds it."""
        return run_sync(self.async_cancel_batch(batch_id))


def _merged(batch_id: str, parts: list[BatchStatus]) -> BatchStatus:
    """One batch from the parts several servers hold."""
    states: dict[str, int] = {}
    for part in parts:
        for state, count in part.states.items():
            states[state] = states.get(state, 0) + count
    total = sum(part.total for part in parts)
    done = sum(count for state, count in states.items() if state in FINISHED_STATES)
    return BatchStatus(batch_id, total, states, 100.0 * done / total if total else 0.0)


def _job_state(name: str) -> JobState:
    try:
        return JobState(name)
    except ValueError:
        known = ", ".join(JobState)
        raise ValueError(f"unknown job state {name!r}; one of {known}") from None
