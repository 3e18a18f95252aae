"""The gRPC ``Pool`` service: the one place where requests become jobs and
server errors become gRPC statuses.

Every field a request carries is checked here before it reaches the
tracker or the pool: strings against their lengths, numbers against what
can be stored and answered (``pool_wire.limits``), so that no request can
make a later reply unencodable for everyone (issue 9). Who is calling comes
from the auth interceptor (:func:`current_caller`); the tracker shows each
caller only the jobs it may see.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TypeVar

import grpc

from pool_proto import pool_pb2, pool_pb2_grpc
from pool_server.auth import Caller, current_caller
from pool_server.call_stream import Aside, CallStream, failure
from pool_server.errors import CallError, DeadlineExceeded, InvalidCall, ShuttingDown
from pool_server.functions import FunctionNeeded, FunctionStore
from pool_server.jobs import Job
from pool_server.journal import BatchCounts
from pool_server.load import LoadReporter
from pool_server.objects import ObjectStore
from pool_server.procfs import rss_bytes
from pool_server.scaling import WorkerLimits
from pool_server.supervisor import WorkerPool
from pool_server.tracker import JobTracker
from pool_wire.limits import (
    CHUNK_BYTES,
    MAX_BATCH_ID_CHARS,
    MAX_ID_CHARS,
    MAX_LIST_LIMIT,
    MAX_NAME_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_RETRIES,
    MAX_TIME_LIMIT_S,
    brief,
)
from pool_wire.names import FINISHED_STATES, JobState

T = TypeVar("T")

_DRAINING = (
    "the server is draining: it takes no new calls or jobs while it stops (GetWorkers and "
    "job lookups still answer); retry on another server, or once it is back"
)
_CLOSED = "the server stopped; the job stays in its journal: ask again once the server is back"

_FUNCTION_NEEDED = (
    "this server does not hold the function named by function_hash; "
    "send its pickled bytes in RunRequest.function"
)

_SUBMIT_FUNCTION_NEEDED = (
    "this server does not hold the function named by function_hash; "
    "send its pickled bytes in SubmitRequest.function"
)

# The server gives up this much before the client's deadline, so that its
# reply (which says whether the call was queued or running) reaches the
# client before the client's own deadline fires with a bare status.
DEADLINE_MARGIN_S = 0.05


class PoolService(pool_pb2_grpc.PoolServicer):
    def __init__(self, pool: WorkerPool, tracker: JobTracker, max_object_bytes: int) -> None:
        self._pool = pool
        self._tracker = tracker
        self._functions = FunctionStore()
        self.objects = ObjectStore(max_object_bytes)
        self._streams: set[CallStream] = set()
        self._load = LoadReporter(pool)
        self._draining = False
        self._closed = asyncio.Event()  # set: end every wait on a job
        self.calls_answered = 0
        self.calls_failed = 0
        self.jobs_submitted = 0

    async def Run(
        self, request: pool_pb2.RunRequest, context: grpc.aio.ServicerContext
    ) -> pool_pb2.RunReply:
        job = await self._run_or_abort(request, context)
        context.set_trailing_metadata((self._load.orca_trailer(),))
        return pool_pb2.RunReply(
            outcome=job.outcome, worker_id=job.worker_id, worker_pid=job.worker_pid, job_id=job.id
        )

    async def Calls(
        self,
        messages: AsyncIterator[pool_pb2.CallMessages],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pool_pb2.CallEvents]:
        """Many Run calls multiplexed on one stream (see proto/pool.proto)."""
        stream = CallStream(self._stream_call, self._pool.queue.wait_for_room, self._load.load)
        self._streams.add(stream)
        try:
            async for event in stream.serve(messages):
                yield event
        finally:
            self._streams.discard(stream)

    def drain(self) -> None:
        """Refuse new calls and jobs (ShuttingDown, "draining"); everything
        else still answers, and the calls already taken run on."""
        self._draining = True

    def close(self) -> None:
        """The drain is over: end every Calls stream (each once its calls are
        answered) and answer every wait on a job, so that gRPC can stop."""
        self._closed.set()
        for stream in self._streams:
            stream.stop_reading()

    def _refuse_if_draining(self) -> None:
        if self._draining:
            raise ShuttingDown(_DRAINING)

    async def _unless_closed(self, awaitable: Awaitable[T]) -> T:
        """``awaitable``'s result, or ShuttingDown if the server closes first."""
        waiting = asyncio.ensure_future(awaitable)
        closing = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait((waiting, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not waiting.done():
                waiting.cancel()
                # Until it has unwound, an anext() it holds is still running,
                # and closing that generator would fail.
                await asyncio.gather(waiting, return_exceptions=True)
        if waiting.cancelled():
            raise ShuttingDown(_CLOSED)
        return waiting.result()

    async def _stream_call(self, message: pool_pb2.CallMessage, aside: Aside) -> pool_pb2.CallEvent:
        """One call of a Calls stream, answered as a Run would be; its
        progress reports go ahead of the answer as CallProgress events."""
        call_id = message.call_id

        def progressed(job: Job) -> None:
            report = pool_pb2.CallProgress(fraction=job.progress, message=job.message)
            aside(pool_pb2.CallEvent(call_id=call_id, progress=report))

        budget = max(message.deadline_s - DEADLINE_MARGIN_S, 0.0) if message.deadline_s else None
        try:
            if budget is not None and not math.isfinite(budget):
                raise InvalidCall(f"deadline_s must be a number of seconds, got {budget!r}")
            job = await self._run(
                message.start, budget, on_progress=progressed if message.progress else None
            )
        except FunctionNeeded:
            return pool_pb2.CallEvent(call_id=call_id, function_needed=pool_pb2.FunctionNeeded())
        except CallError as e:
            self.calls_failed += 1
            self._load.answered(ok=False)
            return failure(call_id, e)
        self.calls_answered += 1
        self._load.answered()
        reply = pool_pb2.RunReply(
            outcome=job.outcome, worker_id=job.worker_id, worker_pid=job.worker_pid, job_id=job.id
        )
        return pool_pb2.CallEvent(call_id=call_id, reply=reply)

    async def GetWorkers(
        self, request: pool_pb2.GetWorkersRequest, context: grpc.aio.ServicerContext
    ) -> pool_pb2.GetWorkersReply:
        return pool_pb2.GetWorkersReply(
            workers=[
                pool_pb2.WorkerInfo(
                    id=w.id,
                    pid=w.pid,
                    state=w.state.to_proto(),
                    jobs_done=w.jobs_done,
                    restarts=w.restarts,
                    recycles=w.recycles,
                    rss_bytes=(rss_bytes(w.pid) or 0) if w.pid else 0,
                    last_exit_reason=w.last_exit_reason or "",
                )
                for w in self._pool.workers
            ],
            queue_length=len(self._pool.queue),
            queue_capacity=self._pool.queue.maxsize,
            limits=_limits_message(self._pool.autoscaler.limits),
        )

    async def SetWorkerLimits(
        self, request: pool_pb2.WorkerLimits, context: grpc.aio.ServicerContext
    ) -> pool_pb2.WorkerLimits:
        if not _caller().admin:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                "changing the pool's worker limits needs an admin token (a token file line "
                "NAME:TOKEN:admin, or the server's default token)",
            )
        try:
            limits = WorkerLimits(request.min_workers, request.max_workers)
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        self._pool.autoscaler.set_limits(limits)
        return _limits_message(limits)

    async def Submit(
        self, request: pool_pb2.SubmitRequest, context: grpc.aio.ServicerContext
    ) -> pool_pb2.SubmitReply:
        async with _status_on_error(context):
            self._refuse_if_draining()
            payloads = list(request.payloads)  # each read of a protobuf bytes field is a copy
            _check_sizes(payloads)
            function = None
            if request.function_hash:
                try:
                    function = self._functions.resolve(request.function_hash, request.function)
                except FunctionNeeded:
                    raise InvalidCall(_SUBMIT_FUNCTION_NEEDED) from None
                except ValueError as e:
                    raise InvalidCall(str(e)) from None
            jobs = await self._tracker.submit(
                payloads,
                function=function,
                function_hash=request.function_hash,
                owner=_caller().name,
                retries=_retries(request.retries),
                time_limit=_time_limit(request.time_limit_s),
                batch_id=_text("batch_id", request.batch_id, MAX_BATCH_ID_CHARS),
                name=_text("name", request.name, MAX_NAME_CHARS),
                item_counts=list(request.item_counts),
                item_offsets=list(request.item_offsets),
            )
        self.jobs_submitted += len(jobs)
        return pool_pb2.SubmitReply(job_ids=[job.id for job in jobs])

    async def GetJob(
        self, request: pool_pb2.JobRef, context: grpc.aio.ServicerContext
    ) -> pool_pb2.JobStatus:
        async with _status_on_error(context):
            return _status(await self._tracker.get(_job_id(request), _caller()))

    async def WatchJob(
        self, request: pool_pb2.JobRef, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pool_pb2.JobStatus]:
        async with _status_on_error(context):
            updates = self._tracker.watch(_job_id(request), _caller())
            try:
                while (job := await self._unless_closed(anext(updates, None))) is not None:
                    yield _status(job)
            finally:
                await updates.aclose()

    async def StreamLogs(
        self, request: pool_pb2.LogsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pool_pb2.LogChunk]:
        """A running job's output tail, then (following) each new piece; a
        finished job's is in its outcome (see proto/pool.proto)."""
        async with _status_on_error(context):
            job_id = _text("job_id", request.job_id, MAX_ID_CHARS)
            job = await self._tracker.get(job_id, _caller())
            if job.state.finished:
                yield pool_pb2.LogChunk(finished=True)
                return
            log = job.output_log()
            follower = log.follow() if request.follow else None  # in the step that reads the tail
            try:
                yield pool_pb2.LogChunk(text=log.text, skipped=log.skipped)
                if follower is None:
                    return
                while (piece := await self._unless_closed(follower.next())) is not None:
                    text, skipped = piece
                    yield pool_pb2.LogChunk(text=text, skipped=skipped)
                yield pool_pb2.LogChunk(finished=True)
            finally:
                if follower is not None:
                    log.unfollow(follower)

    async def GetResult(
        self, request: pool_pb2.JobRef, context: grpc.aio.ServicerContext
    ) -> pool_pb2.JobResult:
        async with _status_on_error(context):
            job = await self._tracker.get(_job_id(request), _caller())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(call_budget(context)):
                    await self._unless_closed(asyncio.shield(job.done))
                    await self._tracker.settled(job)  # answered once journaled, if it can be
            if job.state.finished and job.outcome is None and job.error is not None:
                raise job.error
            return pool_pb2.JobResult(status=_status(job), outcome=job.outcome or b"")

    async def CancelJob(
        self, request: pool_pb2.JobRef, context: grpc.aio.ServicerContext
    ) -> pool_pb2.JobStatus:
        async with _status_on_error(context):
            return _status(await self._tracker.cancel(_job_id(request), _caller()))

    async def ListJobs(
        self, request: pool_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> pool_pb2.ListJobsReply:
        async with _status_on_error(context):
            state = _state(request.state) if request.state else None
            batch_id = _text("batch_id", request.batch_id, MAX_BATCH_ID_CHARS)
            limit = min(request.limit, MAX_LIST_LIMIT)  # more is clamped, as documented
            jobs = await self._tracker.list_jobs(state, batch_id, limit, _caller())
            return pool_pb2.ListJobsReply(jobs=[_status(job) for job in jobs])

    async def GetBatch(
        self, request: pool_pb2.BatchRef, context: grpc.aio.ServicerContext
    ) -> pool_pb2.BatchStatus:
        async with _status_on_error(context):
            batch_id = _text("batch_id", request.batch_id, MAX_BATCH_ID_CHARS)
            return _batch_status(batch_id, await self._tracker.batch(batch_id, _caller()))

    async def CancelBatch(
        self, request: pool_pb2.BatchRef, context: grpc.aio.ServicerContext
    ) -> pool_pb2.BatchStatus:
        async with _status_on_error(context):
            batch_id = _text("batch_id", request.batch_id, MAX_BATCH_ID_CHARS)
            return _batch_status(batch_id, await self._tracker.cancel_batch(batch_id, _caller()))

    async def PutObject(
        self, request: pool_pb2.ObjectData, context: grpc.aio.ServicerContext
    ) -> pool_pb2.ObjectRef:
        async with _status_on_error(context):
            pickled = request.pickled  # each read of a protobuf bytes field is a copy
            self._refuse_if_draining()
            key = self.objects.put(_caller().name, pickled)
            return pool_pb2.ObjectRef(key=key, size=len(pickled))

    async def DeleteObject(
        self, request: pool_pb2.ObjectRef, context: grpc.aio.ServicerContext
    ) -> pool_pb2.ObjectRef:
        async with _status_on_error(context):
            key = _text("key", request.key, MAX_ID_CHARS)
            return pool_pb2.ObjectRef(key=key, size=self.objects.delete(_caller().name, key))

    async def RunChunked(
        self, chunks: AsyncIterator[pool_pb2.Chunk], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pool_pb2.Chunk]:
        """Run for a large payload, in pieces both ways (see proto/pool.proto)."""
        async with _status_on_error(context):
            request, payload = await _gather_chunks(chunks)
        job = await self._run_or_abort(request, context, payload)
        context.set_trailing_metadata((self._load.orca_trailer(),))
        outcome = memoryview(job.outcome or b"")
        head = pool_pb2.RunReply(worker_id=job.worker_id, worker_pid=job.worker_pid, job_id=job.id)
        yield pool_pb2.Chunk(reply=head, total_bytes=len(outcome))
        for start in range(0, len(outcome), CHUNK_BYTES):
            yield pool_pb2.Chunk(data=bytes(outcome[start : start + CHUNK_BYTES]))

    async def _run_or_abort(
        self,
        request: pool_pb2.RunRequest,
        context: grpc.aio.ServicerContext,
        payload: bytes | bytearray | None = None,
    ) -> Job:
        """The finished job of a unary call, or the RPC aborted with why."""
        try:
            job = await self._run(request, call_budget(context), payload)
        except FunctionNeeded:
            self.calls_failed += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _FUNCTION_NEEDED)
        except CallError as e:  # as _status_on_error, inline on the hottest path
            self.calls_failed += 1
            self._load.answered(ok=False)
            context.set_trailing_metadata(e.metadata())
            await context.abort(e.code, str(e))
        self.calls_answered += 1
        self._load.answered()
        return job

    async def _run(
        self,
        request: pool_pb2.RunRequest,
        budget: float | None,
        payload: bytes | bytearray | None = None,
        on_progress: Callable[[Job], None] | None = None,
    ) -> Job:
        self._refuse_if_draining()
        if payload is None:
            payload = request.payload  # each read of a protobuf bytes field is a copy
        _check_sizes([payload])
        retries = _retries(request.retries)
        function = None
        if request.function_hash:
            try:
                function = self._functions.resolve(request.function_hash, request.function)
            except ValueError as e:
                raise InvalidCall(str(e)) from None
        job = Job(
            payload,
            max_attempts=retries + 1,
            listeners=self._pool.job_listeners,
            function=function,
            function_hash=request.function_hash,
            objects=self._objects_of(request.refs),
            on_progress=on_progress,
        )
        queued = False
        try:
            async with asyncio.timeout(budget):
                await self._pool.submit(job)
                queued = True
                await asyncio.shield(job.done)
        except TimeoutError:
            raise DeadlineExceeded(self._deadline_message(job, queued, budget)) from None
        finally:
            self._pool.cancel(job)  # the caller is gone: stop the job (no-op if finished)
        if job.outcome is None:
            assert job.error is not None, job
            raise job.error
        return job

    async def run_payload(self, payload: bytes, budget: float | None) -> Job:
        """Run one payload as a call of its own (no retries, no function sent
        apart), counted as ours are: for the original Go server's Execute."""
        try:
            job = await self._run(pool_pb2.RunRequest(), budget, payload)
        except CallError:
            self.calls_failed += 1
            self._load.answered(ok=False)
            raise
        self.calls_answered += 1
        self._load.answered()
        return job

    def _objects_of(self, keys: Iterable[str]) -> tuple[tuple[str, bytes], ...]:
        """The caller's stored objects of ``keys``, for a call that refers to them."""
        owner = _caller().name if keys else ""
        return tuple(
            (key, self.objects.get(owner, _text("ref", key, MAX_ID_CHARS))) for key in keys
        )

    def _deadline_message(self, job: Job, queued: bool, seconds: float | None) -> str:
        if not queued:
            queue = self._pool.queue
            return (
                f"the call's {seconds:.3g} s deadline passed while the job queue was full "
                f"({len(queue)} of {queue.maxsize} jobs waiting, {queue.bytes} bytes of payloads "
                f"of --max-queued-bytes {queue.max_bytes}); retry later, or start the server "
                "with more --workers, a larger --queue-size or --max-queued-bytes"
            )
        if not job.attempts:
            return f"the call waited in the queue for its whole {seconds:.3g} s deadline"
        return (
            f"the call ran past its {seconds:.3g} s deadline on worker {job.worker_id}; "
            "the worker was stopped and replaced"
        )


@contextlib.asynccontextmanager
async def _status_on_error(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Answer a CallError with its gRPC status, message and metadata."""
    try:
        yield
    except CallError as e:
        context.set_trailing_metadata(e.metadata())
        await context.abort(e.code, str(e))


def _batch_status(batch_id: str, counts: BatchCounts) -> pool_pb2.BatchStatus:
    finished = sum(counts.states.get(s, 0) for s in FINISHED_STATES)
    return pool_pb2.BatchStatus(
        batch_id=batch_id,
        total=counts.total,
        states=counts.states,
        percent_done=100.0 * finished / counts.total,
    )


def _limits_message(limits: WorkerLimits) -> pool_pb2.WorkerLimits:
    return pool_pb2.WorkerLimits(min_workers=limits.min, max_workers=limits.max)


def call_budget(context: grpc.aio.ServicerContext) -> float | None:
    """How long the call may take: the client's deadline, less the margin."""
    remaining: float | None = context.time_remaining()
    return None if remaining is None else max(remaining - DEADLINE_MARGIN_S, 0.0)


def _caller() -> Caller:
    """Who sent the RPC being handled; fails closed if nobody says."""
    try:
        return current_caller()
    except LookupError:  # the auth interceptor is missing: a bug, never "everyone"
        raise CallError("internal error: the call has no caller (no auth interceptor)") from None


def _text(field: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise InvalidCall(
            f"{field} is at most {limit} characters, got {len(value)}: {brief(value)}"
        )
    return value


def _job_id(request: pool_pb2.JobRef) -> str:
    return _text("job_id", request.job_id, MAX_ID_CHARS)


def _retries(retries: int) -> int:
    if retries > MAX_RETRIES:
        raise InvalidCall(f"retries is at most {MAX_RETRIES}, got {retries}")
    return retries


def _time_limit(seconds: float) -> float | None:
    """A job's time limit, ``None`` for 0 (none); NaN, infinite, negative and
    absurdly long ones are refused (NaN once killed the job's worker)."""
    if not (math.isfinite(seconds) and 0.0 <= seconds <= MAX_TIME_LIMIT_S):
        raise InvalidCall(
            f"time_limit_s must be 0 (none) or a number of seconds up to "
            f"{MAX_TIME_LIMIT_S:.0f} (a year), got {seconds!r}"
        )
    return seconds or None


def _state(value: int) -> JobState:
    try:
        return JobState.from_proto(value)
    except ValueError:
        raise InvalidCall(f"state {value} is not a job state this server knows") from None


async def _gather_chunks(
    chunks: AsyncIterator[pool_pb2.Chunk],
) -> tuple[pool_pb2.RunRequest, bytearray]:
    """The request of a RunChunked call and its payload, put together in one
    buffer of the announced size."""
    first = await anext(chunks, None)
    if first is None or first.WhichOneof("head") != "request":
        raise InvalidCall("a RunChunked call starts with a Chunk holding its request")
    total = first.total_bytes
    if total > MAX_PAYLOAD_BYTES:
        raise InvalidCall(f"payload of {total} bytes is over {MAX_PAYLOAD_BYTES}")
    payload = bytearray(total)
    filled = 0

    def add(data: bytes) -> None:
        nonlocal filled
        if filled + len(data) > total:
            raise InvalidCall(f"the pieces add up to more than the {total} bytes announced")
        payload[filled : filled + len(data)] = data
        filled += len(data)

    add(first.data)
    async for chunk in chunks:
        add(chunk.data)
    if filled != total:
        raise InvalidCall(f"the pieces add up to {filled} of the {total} bytes announced")
    return first.request, payload


def _check_sizes(payloads: Iterable[bytes | bytearray]) -> None:
    for payload in payloads:
        if not payload:
            raise InvalidCall("empty payload: a request must carry a pickled or JSON call")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise InvalidCall(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")


def _status(job: Job) -> pool_pb2.JobStatus:
    return pool_pb2.JobStatus(
        id=job.id,
        state=job.state.to_proto(),
        progress=job.progress,
        message=job.message,
        attempts=job.attempts,
        max_attempts=job.max_attempts,
        worker_id=job.worker_id,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=job.error_text,
        batch_id=job.batch_id,
        name=job.name,
        items=job.items,
        item_offset=job.item_offset,
    )
