"""``Job``: a handle on a submitted job, from this process or any other."""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from distribute_client import _codec, _transport
from distribute_client._sync import iterate_sync, run_sync
from distribute_client._tracebacks import user_frames
from distribute_client.errors import (
    CallTimeoutError,
    JobCancelledError,
    JobInterruptedError,
    JobTimedOutError,
    PoolError,
    SerializationError,
    WorkerCrashedError,
)
from pool_proto import pool_pb2
from pool_wire.names import JobState
from pool_wire.payload import is_json

R = TypeVar("R")

# Job lookups are cheap; a server that takes longer than this is unwell.
LOOKUP_TIMEOUT_S = 10.0

# Between the server and the server's own id, in the id of a job of a client
# with several servers.
SERVER_SEPARATOR = "/"


@dataclass(frozen=True)
class JobStatus:
    """Where a job stands. Times are Unix seconds, 0.0 until they happen."""

    id: str
    state: JobState  # a str: "QUEUED", "RUNNING", "DONE", "FAILED", ...
    progress: float | None  # the last progress(fraction) the function reported
    message: str  # the last progress message
    attempts: int
    max_attempts: int
    worker_id: int  # the worker running it, or that ran it last; 0 for none
    created_at: float
    started_at: float
    finished_at: float
    error: str  # why it finished without a result (crash, time limit, cancel)
    batch_id: str
    name: str
    server: str  # the server that holds it
    items: int = 1  # calls it carries (a map chunk carries many)
    item_offset: int = 0  # where its first call stands in its batch's input

    @property
    def finished(self) -> bool:
        return self.state.finished

    @classmethod
    def from_proto(
        cls, status: pool_pb2.JobStatus, server: _transport.Address, job_id: str | None = None
    ) -> JobStatus:
        """``job_id``: the id as the client shows it (default: the server's)."""
        return cls(
            id=status.id if job_id is None else job_id,
            state=JobState.from_proto(status.state),
            progress=status.progress if status.HasField("progress") else None,
            message=status.message,
            attempts=status.attempts,
            max_attempts=status.max_attempts,
            worker_id=status.worker_id,
            created_at=status.created_at,
            started_at=status.started_at,
            finished_at=status.finished_at,
            error=status.error,
            batch_id=status.batch_id,
            name=status.name,
            server=str(server),
            items=status.items or 1,
            item_offset=status.item_offset,
        )


@dataclass(frozen=True)
class BatchStatus:
    """How far a batch (one ``map``) has got: jobs per state, and done/total."""

    batch_id: str
    total: int
    states: dict[str, int]
    percent_done: float


class Job(Generic[R]):
    """A submitted job. ``result()`` blocks until it finishes; the ``async_``
    twins do the same from asyncio code.

    ``id`` is the server's id for it, or, for a client of several servers,
    ``server/id`` (say ``10.0.0.7:50051/j1b2...``), so that any client with
    the same servers finds it: see ``Client.job``.
    """

    def __init__(
        self,
        address: _transport.Address,
        job_id: str,
        name: str = "",
        *,
        server_in_id: bool = False,
    ) -> None:
        self.address = address
        self.server_job_id = job_id
        self.id = f"{address}{SERVER_SEPARATOR}{job_id}" if server_in_id else job_id
        self.name = name or self.id

    def __repr__(self) -> str:
        return f"<Job {self.id} ({self.name}) on {self.address}>"

    async def async_status(self) -> JobStatus:
        reply = await _transport.get_job(self.address, self._ref(), LOOKUP_TIMEOUT_S)
        return self._status(reply)

    def status(self) -> JobStatus:
        """State, progress and message, attempts, worker, and times."""
        return run_sync(self.async_status())

    async def async_result(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - as result()
        *,
        unpickle: bool = True,
    ) -> R:
        with user_frames:
            status, outcome = await self.async_outcome(timeout)
            self._check_unpicklable(outcome, unpickle)
            value: R = _codec.decode_outcome(outcome, self.name, self.where(status))
            return value

    async def async_results(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - as result()
        *,
        unpickle: bool = True,
    ) -> list[Any]:
        try:
            status, outcome = await self.async_outcome(timeout)
        except PoolError as error:
            if not _finished_without_outcome(error):
                raise
            return [error] * (await self.async_status()).items
        self._check_unpicklable(outcome, unpickle)
        return _codec.decode_items(outcome, self.name, self.where(status))

    def results(self, timeout: float | None = None, *, unpickle: bool = True) -> list[Any]:
        """Wait for the job and return the values of every call it carries
        (one for a submitted call, each of a map chunk's in order), with the
        exception in place of each call that raised, or of every call when
        the job itself failed (a crash, its time limit, a cancel);
        CallTimeoutError if ``timeout`` passes first."""
        return run_sync(self.async_results(timeout, unpickle=unpickle))

    def _check_unpicklable(self, outcome: bytes, unpickle: bool) -> None:
        if not unpickle and not is_json(outcome):
            raise SerializationError(
                f"the result of job {self.id} is a pickle (the job was submitted from Python); "
                "unpickling it runs whatever code its submitter chose, so it was not unpickled "
                "(pass unpickle=True, or pool-client result --unpickle, if you trust them)"
            )

    async def async_outcome(self, timeout: float | None = None) -> tuple[JobStatus, bytes]:  # noqa: ASYNC109 - as result()
        """Wait for the job; its final status and the worker's undecoded outcome.

        Raises the job's error when it finished without an outcome (crash,
        time limit, cancel), and CallTimeoutError if ``timeout`` passes first.
        """
        reply = await _transport.get_result(self.address, self._ref(), timeout)
        status = self._status(reply.status)
        if not status.finished:
            raise CallTimeoutError(
                f"job {self.id} is still {status.state} after {timeout:.3g} s"
                if timeout is not None
                else f"job {self.id} is still {status.state}"
            )
        return status, reply.outcome

    def where(self, status: JobStatus) -> str:
        return f"worker {status.worker_id} of {self.address} (job {self.id})"

    def result(self, timeout: float | None = None, *, unpickle: bool = True) -> R:
        """Wait for the job and return its value, or raise its error as
        ``compute()`` would; CallTimeoutError if ``timeout`` passes first.

        A JSON call's result is read as JSON, never unpickled. With
        ``unpickle=False`` a pickled result (a Python submitter's) raises
        SerializationError instead of running the submitter's ``__reduce__``:
        for reading results you did not submit yourself.
        """
        with user_frames:
            return run_sync(self.async_result(timeout, unpickle=unpickle))

    async def async_cancel(self) -> JobStatus:
        reply = await _transport.cancel_job(self.address, self._ref(), LOOKUP_TIMEOUT_S)
        return self._status(reply)

    def cancel(self) -> JobStatus:
        """Cancel the job: dropped if queued, its worker stopped if running."""
        return run_sync(self.async_cancel())

    async def watch(self) -> AsyncIterator[JobStatus]:
        """Its status now and after every change, until it finishes."""
        async for status in _transport.watch_job(self.address, self._ref()):
            yield self._status(status)

    async def async_logs(
        self, follow: bool = False, *, unpickle: bool = True
    ) -> AsyncGenerator[str, None]:
        """As :meth:`logs`, from asyncio code."""
        request = pool_pb2.LogsRequest(job_id=self.server_job_id, follow=follow)
        first = True
        async for chunk in _transport.stream_logs(self.address, request):
            if first and chunk.finished:  # finished before we asked: its output is its outcome's
                text = await self._captured_output(unpickle)
                if text:
                    yield text
                return
            first = False
            if chunk.skipped:
                yield f"[{chunk.skipped} characters of output not kept here]\n"
            if chunk.text:
                yield chunk.text
            if chunk.finished:
                return

    def logs(self, follow: bool = False, *, unpickle: bool = True) -> Iterator[str]:
        """What the job prints, in pieces of text as they come (stdout and
        stderr interleaved as printed): of a running job, the last 64 KiB
        the server keeps, and with ``follow`` everything it prints after,
        as it prints it, until it finishes; of a finished job, its whole
        captured output (read from its result: ``unpickle=False`` refuses a
        pickled one, as :meth:`result` does). A gap the server or worker
        left out (a flood of output) shows as a line saying how much.

        >>> for text in job.logs(follow=True):   # doctest: +SKIP
        ...     print(text, end="")
        """
        return iterate_sync(self.async_logs(follow, unpickle=unpickle))

    async def _captured_output(self, unpickle: bool) -> str:
        try:
            status, outcome = await self.async_outcome(LOOKUP_TIMEOUT_S)
        except PoolError as error:
            if not _finished_without_outcome(error):
                raise
            return ""  # crashed, cancelled, out of time: no outcome holds its output
        self._check_unpicklable(outcome, unpickle)
        return _codec.captured_output(outcome, self.name, self.where(status))

    def _ref(self) -> pool_pb2.JobRef:
        return pool_pb2.JobRef(job_id=self.server_job_id)

    def _status(self, status: pool_pb2.JobStatus) -> JobStatus:
        return JobStatus.from_proto(status, self.address, self.id)


def _finished_without_outcome(error: PoolError) -> bool:
    """The server's answer for a job that ended without an outcome (as
    opposed to one that could not be asked, or is not finished yet)."""
    if isinstance(error, JobTimedOutError):
        return True
    return isinstance(error, WorkerCrashedError | JobInterruptedError | JobCancelledError)


def batch_status(reply: pool_pb2.BatchStatus) -> BatchStatus:
    return BatchStatus(
        batch_id=reply.batch_id,
        total=reply.total,
        states=dict(reply.states),
        percent_done=reply.percent_done if math.isfinite(reply.percent_done) else 0.0,
    )
