"""The Dask backend: calls run as tasks of a Dask cluster you already have
(``server="dask://scheduler:8786"``, or ``tcp://scheduler:8786``, Dask's own
form of the address; ``POOL_SERVER`` likewise).

Each call or job is one ``distributed.Client.submit`` of :func:`_run_on_worker`
(``pure=False``: the same payload twice is two calls), which runs the payload
a pool-server would get with the worker's own runner (``run_checked``, with a
per-process cache of unpickled functions by key) and answers with the outcome
bytes, so output replay, remote tracebacks, map chunks and ``retry_on`` are
the server's by construction::

    run(request) / submit(request) ──(run_coroutine_threadsafe)──> the backend's loop
        _Job (QUEUED) ──> client.submit(_run_on_worker, payload, ..., key, topic)
                                  │ on a Dask worker: log_event(topic, started),
                                  │ progress() as log_event(topic, progress), run_checked
        _watch: await future ──> (status, outcome bytes, pid) ──> _Job DONE / FAILED
        the topic's events ──> RUNNING, progress;  the scheduler's "all" topic ──> crashes

Who owns what: one thread of this backend runs one event loop, which owns the
one ``distributed.Client(asynchronous=True)`` and every ``_Job``; the RPC
methods, called from any loop (each ``asyncio.run()``, the blocking API's
own), only hand coroutines to it and await them. A Dask asynchronous client
is bound to the loop that made it, and jobs must outlive the loop that
submitted them, so neither a client per caller's loop (its futures would go
with its loop) nor the blocking client (waiting on its futures from asyncio
takes a thread per call) would do.

Choices:

- **States** come from events, not ``future.status``, which reads "pending"
  both while a task is queued and while it runs: the task logs a ``started``
  event on this client's topic (with its worker and pid) before it runs the
  payload, so QUEUED → RUNNING is exact; the future's end gives DONE (FAILED
  when the function raised: the outcome carries it), and cancelling gives
  CANCELLED. ``progress(fraction, message)`` is a ``progress`` event there.
  The start is an RPC to the scheduler, not a batched ``log_event``: a call
  that killed its worker within the batching interval would otherwise die
  unseen, and Dask's reruns of it would not count against its ``retries``.
  It costs throughput (the scheduler handles one more message per call):
  see the README's figures.
- **Timeouts and cancels do not stop the work**: Dask cannot stop a running
  task. At a call's deadline the call fails with ``CallTimeoutError`` and its
  task is cancelled (``client.cancel(force=True)``); a queued one never runs,
  a running one runs on to its end on its worker and its result is dropped.
  A job's ``time_limit_s`` (TIMED_OUT) and ``job.cancel()`` are the same.
- **One call at a time per worker process**: the runner captures output by
  swapping ``sys.stdout`` and ``sys.stderr``, which are the process's, so the
  calls of a worker with several threads take turns (a lock). Start workers
  with ``--nthreads 1`` and as many ``--nworkers`` as calls should run.
- **Crashes**: a worker that dies running a call is seen in the scheduler's
  ``remove-worker`` event; Dask itself runs the task again on another worker.
  Within the call's ``retries`` that rerun is the next attempt; past them the
  call fails with ``WorkerCrashedError`` at once and the rerun is cancelled
  (a task finds out whether it was, after logging its start, and one that
  learns too late runs on). Dask's own limit
  (``distributed.scheduler.allowed-failures``, 3) ends in ``KilledWorker``,
  also ``WorkerCrashedError``.
- **Jobs live in this process's memory** (Dask has no durable jobs): ListJobs,
  GetBatch and job lookups answer for the jobs submitted here, and they go
  with the process. GetWorkers has one row per Dask worker (BUSY while the
  scheduler has tasks processing there; ``jobs_done`` counts this client's).
- Not here: tokens, exit codes of crashed workers (the scheduler does not
  know them), restarts (a restarted worker is a new worker).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures as cf
import contextlib
import copy
import itertools
import math
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tblib import pickling_support

from distribute_client.errors import (
    CallTimeoutError,
    InvalidRequestError,
    JobCancelledError,
    JobNotFoundError,
    JobTimedOutError,
    PoolError,
    QueueFullError,
    ServerError,
    ServerShuttingDownError,
    ServerUnavailableError,
    WorkerCrashedError,
)
from pool_proto import pool_pb2
from pool_server.functions import FunctionNeeded, FunctionStore
from pool_server.jobs import TRANSITIONS, IllegalJobTransition, new_call_id, new_job_id
from pool_wire import limits
from pool_wire.limits import brief
from pool_wire.names import FINISHED_STATES, JobState, WorkerState
from pool_wire.protocol import Progress, ResultStatus
from worker_proc.reporting import reporting
from worker_proc.runner import CachedFunction, Functions, run_checked

T = TypeVar("T")

SCHEMES = ("dask", "tcp")
# A live scheduler answers in milliseconds; one that has not within this is
# down or unreachable, and the caller hears so rather than waiting on.
CONNECT_TIMEOUT_S = 3.0
CLOSE_TIMEOUT_S = 5.0
# As the server's defaults (--queue-size, ListJobs without a limit); the
# bound is on this client's tasks in flight.
QUEUE_CAPACITY = 100_000
DEFAULT_LIST_LIMIT = 100
CLUSTER_TOPIC = "all"  # where the scheduler logs workers coming and going
# A worker gives up on logging a call's start after this (and runs it anyway).
EVENT_TIMEOUT_S = 10.0


@dataclass(eq=False)
class _Job:
    """One call or submitted job; touched only on the backend's loop."""

    id: str
    payload: bytes
    function_hash: str = ""
    function: bytes = b""
    durable: bool = False
    max_attempts: int = 1
    time_limit: float | None = None
    batch_id: str = ""
    name: str = ""
    items: int = 1
    state: JobState = JobState.QUEUED
    attempts: int = 0
    sent: int = 0  # tasks made for it: a retry_on answer makes another
    key: str = ""  # its current task's
    future: Any = None  # its current distributed.Future
    worker: str = ""  # the Dask worker of its current or last attempt
    worker_id: int = 0
    worker_pid: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float = 0.0
    finished_at: float = 0.0
    progress: float | None = None
    message: str = ""
    outcome: bytes | None = None
    error: PoolError | None = None
    timer: asyncio.TimerHandle | None = None
    done: asyncio.Future[None] = field(default_factory=lambda: _loop_future())
    changed: asyncio.Future[None] = field(default_factory=lambda: _loop_future())

    def move(self, new: JobState, error: PoolError | None = None) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalJobTransition(f"job {self.id}: {self.state.value} -> {new.value}")
        self.state = new
        if new is JobState.RUNNING:
            self.attempts += 1
            self.started_at = time.time()
            self.progress, self.message = None, ""
        elif new.finished:
            self.error, self.finished_at = error, time.time()
            self.payload = self.function = b""  # it never runs again
            if self.timer is not None:
                self.timer.cancel()
            self.done.set_result(None)
        self.notify()

    def again(self) -> None:
        """Back to QUEUED for its next attempt."""
        if self.timer is not None:
            self.timer.cancel()
        self.move(JobState.INTERRUPTED)
        self.move(JobState.QUEUED)

    def notify(self) -> None:
        self.changed.set_result(None)
        self.changed = _loop_future()

    def status(self) -> pool_pb2.JobStatus:
        status = pool_pb2.JobStatus(
            id=self.id,
            state=self.state.to_proto(),
            message=self.message,
            attempts=self.attempts,
            max_attempts=self.max_attempts,
            worker_id=self.worker_id,
            created_at=self.created_at,
            started_at=self.started_at,
            finished_at=self.finished_at,
            error=str(self.error) if self.error is not None else "",
            batch_id=self.batch_id,
            name=self.name,
        )
        if self.progress is not None:
            status.progress = self.progress
        return status


class DaskBackend:
    """The Pool service's RPCs answered by a Dask cluster; safe from any
    thread and any event loop."""

    def __init__(self, url: str, scheduler: str) -> None:
        self.url, self.scheduler = url, scheduler
        self._distributed = _import_distributed(url)
        self._loop = asyncio.new_event_loop()
        self._client: Any = None  # distributed.Client(asynchronous=True), made on first use
        self._connecting: asyncio.Lock | None = None
        self._jobs: dict[str, _Job] = {}  # submitted, oldest first
        self._by_key: dict[str, _Job] = {}  # tasks in flight
        self._topic = f"distribute-client-{uuid.uuid4().hex}"
        self._worker_ids: dict[str, int] = {}  # Dask worker address: our id for it
        self._pids: dict[str, int] = {}
        self._jobs_done: collections.Counter[str] = collections.Counter()
        self._functions = FunctionStore()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"dask {url}")
        self._thread.daemon = True
        self._thread.start()

    def __repr__(self) -> str:
        return f"<DaskBackend {self.scheduler} in flight={len(self._by_key)}>"

    # The RPCs: each runs its coroutine on the backend's loop.

    async def run(
        self, request: pool_pb2.RunRequest, deadline_s: float | None, function: bytes
    ) -> tuple[bytes, int, int]:
        return await self._here(self._run(request, deadline_s, function or request.function))

    async def get_workers(self, request: pool_pb2.GetWorkersRequest) -> pool_pb2.GetWorkersReply:
        return await self._here(self._get_workers())

    async def submit(self, request: pool_pb2.SubmitRequest) -> pool_pb2.SubmitReply:
        return await self._here(self._submit(request))

    async def get_job(self, request: pool_pb2.JobRef) -> pool_pb2.JobStatus:
        return (await self._here(self._snapshot(request.job_id)))[0]

    async def watch_job(self, request: pool_pb2.JobRef) -> AsyncIterator[pool_pb2.JobStatus]:
        """The job's status now, then after every change, until it is finished."""
        while True:
            status, changed = await self._here(self._snapshot(request.job_id))
            yield status
            if JobState.from_proto(status.state).finished:
                return
            await self._here(_changed(changed))

    async def get_result(
        self, request: pool_pb2.JobRef, deadline_s: float | None
    ) -> pool_pb2.JobResult:
        return await self._here(self._get_result(request.job_id, deadline_s))

    async def cancel_job(self, request: pool_pb2.JobRef) -> pool_pb2.JobStatus:
        return await self._here(self._cancel_job(request.job_id))

    async def list_jobs(self, request: pool_pb2.ListJobsRequest) -> pool_pb2.ListJobsReply:
        return await self._here(self._list_jobs(request))

    async def get_batch(self, request: pool_pb2.BatchRef) -> pool_pb2.BatchStatus:
        return await self._here(self._get_batch(request.batch_id))

    def close(self) -> None:
        """Unfinished calls and jobs fail (ServerShuttingDownError), their tasks
        are cancelled, and the client leaves the scheduler."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(CLOSE_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CLOSE_TIMEOUT_S)

    async def _here(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """``coroutine``'s result, run on the backend's loop; cancelling the
        wait cancels it there."""
        if self._closed:
            coroutine.close()
            raise ServerShuttingDownError(f"the {self.url} backend is closed (the process exits)")
        running = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        return await asyncio.wrap_future(running)

    # On the backend's loop from here on.

    async def _run(
        self, request: pool_pb2.RunRequest, deadline_s: float | None, function: bytes
    ) -> tuple[bytes, int, int]:
        _check_sizes([request.payload])
        job = _Job(new_call_id(), request.payload, max_attempts=_retries(request.retries) + 1)
        if request.function_hash:
            job.function_hash = request.function_hash
            job.function = self._resolve(request.function_hash, function)
        await self._send(job)
        try:
            async with asyncio.timeout(deadline_s):
                await asyncio.shield(job.done)
        except TimeoutError:
            if not job.done.done():
                raise CallTimeoutError(self._past_deadline(job, deadline_s)) from None
        finally:  # the caller is gone, or past its deadline: a no-op once finished
            self._stop(job, JobState.CANCELLED, JobCancelledError(f"call {job.id} was cancelled"))
        if job.outcome is None:
            raise _fresh(job.error)
        return job.outcome, job.worker_id, job.worker_pid

    async def _submit(self, request: pool_pb2.SubmitRequest) -> pool_pb2.SubmitReply:
        """One job per payload, all sent or none (QueueFullError)."""
        payloads = list(request.payloads)
        if not payloads:
            raise _invalid("Submit needs at least one payload")
        _check_sizes(payloads)
        counts = _item_counts(list(request.item_counts), len(payloads))
        jobs = [
            _Job(
                new_job_id(),
                payload,
                durable=True,
                max_attempts=_retries(request.retries) + 1,
                time_limit=_time_limit(request.time_limit_s),
                batch_id=_text("batch_id", request.batch_id, limits.MAX_BATCH_ID_CHARS),
                name=_text("name", request.name, limits.MAX_NAME_CHARS),
                items=items,
            )
            for payload, items in zip(payloads, counts, strict=True)
        ]
        if len(jobs) > QUEUE_CAPACITY - len(self._by_key):
            raise QueueFullError(
                f"{len(jobs)} jobs do not fit: this client has {len(self._by_key)} tasks of "
                f"at most {QUEUE_CAPACITY} in flight on {self.url}; submit fewer at a time"
            )
        await self._connected()  # before any record: an unreachable scheduler sends none
        for job in jobs:
            self._jobs[job.id] = job
            await self._send(job)
        return pool_pb2.SubmitReply(job_ids=[job.id for job in jobs])

    async def _snapshot(self, job_id: str) -> tuple[pool_pb2.JobStatus, asyncio.Future[None]]:
        job = self._job(job_id)
        return job.status(), job.changed

    async def _get_result(self, job_id: str, deadline_s: float | None) -> pool_pb2.JobResult:
        """The job once finished, or as it stands at ``deadline_s``; raises
        the error of a job that finished without an outcome."""
        job = self._job(job_id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await asyncio.shield(job.done)
        if job.state.finished and job.outcome is None:
            raise _fresh(job.error)
        return pool_pb2.JobResult(status=job.status(), outcome=job.outcome or b"")

    async def _cancel_job(self, job_id: str) -> pool_pb2.JobStatus:
        job = self._job(job_id)
        self._stop(job, JobState.CANCELLED, JobCancelledError(f"job {job.id} was cancelled"))
        return job.status()

    async def _list_jobs(self, request: pool_pb2.ListJobsRequest) -> pool_pb2.ListJobsReply:
        """Submitted jobs, newest first."""
        state = _state(request.state) if request.state else None
        batch_id = _text("batch_id", request.batch_id, limits.MAX_BATCH_ID_CHARS)
        limit = min(request.limit or DEFAULT_LIST_LIMIT, limits.MAX_LIST_LIMIT)
        chosen = (
            job
            for job in reversed(self._jobs.values())
            if (state is None or job.state is state) and batch_id in ("", job.batch_id)
        )
        listed = [job.status() for job in itertools.islice(chosen, limit)]
        return pool_pb2.ListJobsReply(jobs=listed)

    async def _get_batch(self, batch_id: str) -> pool_pb2.BatchStatus:
        """Calls per state of the jobs in the batch (a job carries ``items`` calls)."""
        states: collections.Counter[str] = collections.Counter()
        for job in self._jobs.values():
            if job.batch_id == batch_id:
                states[job.state.value] += job.items
        total = sum(states.values())
        if not batch_id or not total:
            raise JobNotFoundError(f"no batch {brief(batch_id)} submitted from this process")
        finished = sum(states[s.value] for s in FINISHED_STATES)
        return pool_pb2.BatchStatus(
            batch_id=batch_id, total=total, states=dict(states), percent_done=100 * finished / total
        )

    async def _get_workers(self) -> pool_pb2.GetWorkersReply:
        """One row per Dask worker; BUSY while the scheduler has tasks processing there."""
        client = await self._connected()
        try:
            identity = await client.scheduler.identity(n_workers=-1)
            processing = await client.processing()
            addresses = sorted(identity["workers"], key=self._worker_id)
            unknown = [a for a in addresses if a not in self._pids]
            if unknown:
                self._pids.update(await client.run(os.getpid, workers=unknown, on_error="ignore"))
        except OSError as e:  # TimeoutError among them
            raise self._unavailable(e) from None
        busy, idle = WorkerState.BUSY, WorkerState.IDLE
        rows = [
            pool_pb2.WorkerInfo(
                id=self._worker_id(address),
                pid=self._pids.get(address, 0),
                state=(busy if processing.get(address) else idle).to_proto(),
                jobs_done=self._jobs_done[address],
            )
            for address in addresses
        ]
        queued = sum(job.state is JobState.QUEUED for job in self._by_key.values())
        return pool_pb2.GetWorkersReply(
            workers=rows, queue_length=queued, queue_capacity=QUEUE_CAPACITY
        )

    async def _connected(self) -> Any:
        """The Dask client, connected (again) if need be."""
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._client is not None and self._client.status in ("running", "connecting"):
                return self._client
            if self._client is not None:  # it gave up on a scheduler that went away
                with contextlib.suppress(Exception):
                    await self._client.close()
            try:
                client = await self._distributed.Client(
                    self.scheduler,
                    asynchronous=True,
                    timeout=CONNECT_TIMEOUT_S,
                    set_as_default=False,
                )
            except OSError as e:  # TimeoutError among them
                raise self._unavailable(e) from None
            client.subscribe_topic(self._topic, self._on_event)
            client.subscribe_topic(CLUSTER_TOPIC, self._on_cluster_event)
            self._client = client
            return client

    async def _send(self, job: _Job) -> None:
        """Make a task of the job's next attempt."""
        client = await self._connected()
        job.sent += 1
        job.key = f"pool-{job.id}-{job.sent}"
        try:
            future = client.submit(
                _run_on_worker,
                *(job.payload, job.function_hash, job.function, job.key, self._topic),
                key=job.key,
                pure=False,
            )
        except Exception as e:  # the client is closing: the scheduler went away
            raise self._unavailable(e) from None
        job.future = future
        self._by_key[job.key] = job
        self._spawn(self._watch(job, future))

    async def _watch(self, job: _Job, future: Any) -> None:
        """Wait for the task's end, and settle the job by it."""
        try:
            status, outcome, pid = await future
        except self._distributed.KilledWorker as e:
            message = (
                f"{self.url}: every Dask worker that ran job {job.id} died while running it ({e})"
            )
            self._stop(job, JobState.FAILED, WorkerCrashedError(message, worker_id=job.worker_id))
        except Exception as e:  # cancelled (by us, or the client lost the scheduler)
            if not job.state.finished:
                self._stop(job, JobState.FAILED, self._lost(job, e))
        else:
            await self._answered(job, status, outcome, pid)
        finally:
            self._by_key.pop(future.key, None)
            future.release()

    async def _answered(self, job: _Job, status: ResultStatus, outcome: bytes, pid: int) -> None:
        if job.state.finished:  # cancelled or timed out just as its answer came
            return
        if job.state is JobState.QUEUED:  # its started event has not come: it did start
            self._started(job, job.worker, pid)
        self._jobs_done[job.worker] += 1
        if status is ResultStatus.RETRY and job.attempts < job.max_attempts:
            job.again()
            try:
                await self._send(job)
            except PoolError as e:
                job.move(JobState.FAILED, e)
            return
        job.outcome = outcome
        job.move(JobState.DONE if status is ResultStatus.OK else JobState.FAILED)

    def _on_event(self, event: tuple[float, dict[str, Any]]) -> None:
        """A task's ``started`` or ``progress`` event."""
        _, message = event
        job = self._by_key.get(message.get("key", ""))
        if job is None or job.state.finished:
            return
        if message.get("what") == "started":
            self._started(job, message["worker"], message["pid"])
        elif job.state is JobState.RUNNING:
            job.progress, job.message = message.get("fraction"), message.get("message", "")
            job.notify()

    def _on_cluster_event(self, event: tuple[float, dict[str, Any]]) -> None:
        """The scheduler's: a worker that left while running our tasks."""
        _, message = event
        if not isinstance(message, dict) or message.get("action") != "remove-worker":
            return
        worker = message.get("worker", "")
        for key in message.get("processing-tasks", ()):
            job = self._by_key.get(key)
            if job is not None and job.state is JobState.RUNNING and job.worker == worker:
                self._crashed(job, expected=bool(message.get("expected")))

    def _started(self, job: _Job, worker: str, pid: int) -> None:
        if job.state is JobState.RUNNING:  # a rerun whose first run's end we did not hear of
            self._crashed(job, expected=False)
            if job.state.finished:
                return
        job.worker, job.worker_pid = worker, pid
        if worker:
            job.worker_id, self._pids[worker] = self._worker_id(worker), pid
        job.move(JobState.RUNNING)
        if job.time_limit is not None:
            job.timer = self._loop.call_later(job.time_limit, self._time_up, job, job.attempts)

    def _crashed(self, job: _Job, expected: bool) -> None:
        """Its worker left while it ran; Dask runs it again elsewhere."""
        if expected or job.attempts < job.max_attempts:
            job.again()  # the rerun's started event makes it RUNNING again
            return
        message = (
            f"Dask worker {job.worker} (pid {job.worker_pid}) of {self.url} died while running "
            f"job {job.id}; the call did not finish (Dask's rerun of it was cancelled)"
        )
        self._stop(job, JobState.FAILED, WorkerCrashedError(message, worker_id=job.worker_id))

    def _time_up(self, job: _Job, attempt: int) -> None:
        if job.state is JobState.RUNNING and job.attempts == attempt:
            message = (
                f"job {job.id} ran past its {job.time_limit or 0:.3g} s time limit on Dask worker "
                f"{job.worker}; Dask cannot stop a running task: it runs on, its result dropped"
            )
            self._stop(job, JobState.TIMED_OUT, JobTimedOutError(message))

    def _stop(self, job: _Job, state: JobState, error: PoolError) -> None:
        """Finish the job, unless it is finished, and cancel its task."""
        if job.state.finished:
            return
        job.move(state, error)
        if job.future is not None and self._client is not None:
            self._spawn(_cancel(self._client, job.future))

    async def _shutdown(self) -> None:
        for job in [*self._by_key.values(), *self._jobs.values()]:
            gone = ServerShuttingDownError(f"{self.url}: the process exits; the call was dropped")
            self._stop(job, JobState.CANCELLED, gone)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Not while it reconnects to a scheduler that went away: cancelling
        # that logs a traceback, and the process is exiting anyway.
        if self._client is not None and self._client.status == "running":
            with contextlib.suppress(Exception):
                await self._client.close(timeout=CLOSE_TIMEOUT_S)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _job(self, job_id: str) -> _Job:
        job = self._jobs.get(_text("job_id", job_id, limits.MAX_ID_CHARS))
        if job is None:
            raise JobNotFoundError(
                f"no job {brief(job_id)} submitted to {self.url} from this process (Dask has no "
                "durable jobs: they live in the process that submitted them)"
            )
        return job

    def _resolve(self, key: str, function: bytes) -> bytes:
        try:
            return self._functions.resolve(key, function)
        except FunctionNeeded:
            raise _invalid(f"no function {key} is known here: send its pickled bytes") from None
        except ValueError as e:
            raise _invalid(str(e)) from None

    def _worker_id(self, address: str) -> int:
        return self._worker_ids.setdefault(address, len(self._worker_ids) + 1)

    def _past_deadline(self, job: _Job, seconds: float | None) -> str:
        if job.attempts == 0:
            return f"the call waited for a Dask worker for its whole {seconds:.3g} s deadline"
        return (
            f"the call ran past its {seconds:.3g} s deadline on Dask worker {job.worker} "
            f"(pid {job.worker_pid}); Dask cannot stop a running task: it runs on there, "
            "its result dropped"
        )

    def _unavailable(self, error: BaseException) -> ServerUnavailableError:
        return ServerUnavailableError(
            f"no Dask scheduler answered at {self.url} within {CONNECT_TIMEOUT_S:.3g} s "
            f"({error}); is it running? Start one with `dask scheduler` and workers with "
            f"`dask worker {self.scheduler}`"
        )

    def _lost(self, job: _Job, error: BaseException) -> PoolError:
        if isinstance(error, cf.CancelledError):
            return ServerUnavailableError(
                f"{self.url}: the Dask scheduler dropped job {job.id} ({error}); "
                "it may have gone away"
            )
        return ServerError(
            f"{self.url}: the Dask worker could not run job {job.id}: {error!r} (is pool-server "
            "installed on the workers, in the same Python version as this client?)"
        )


_backends: dict[str, DaskBackend] = {}
_backends_lock = threading.Lock()


def check(url: str) -> None:
    """``dask://host:port`` or ``tcp://host:port``."""
    _scheduler(url)


def connect(url: str) -> DaskBackend:
    """The backend of the scheduler at ``url``, one per scheduler (``dask://``
    and ``tcp://`` for the same one share it), closed at exit."""
    scheduler = _scheduler(url)
    with _backends_lock:
        backend = _backends.get(scheduler)
        if backend is None:
            backend = _backends[scheduler] = DaskBackend(url, scheduler)
            atexit.register(backend.close)
        return backend


def _scheduler(url: str) -> str:
    """The ``tcp://host:port`` address of the scheduler ``url`` names."""
    scheme, _, rest = url.partition("://")
    host, sep, port = rest.rpartition(":")
    if scheme not in SCHEMES or not sep or not host or "/" in rest or not port.isdigit():
        raise ValueError(f"{url!r} is not dask://host:port (or tcp://host:port, Dask's own form)")
    if not 0 < int(port) < 65536:
        raise ValueError(f"{url!r}: port {port} is not from 1 to 65535")
    return f"tcp://{rest}"


def _import_distributed(url: str) -> Any:
    """Dask's ``distributed`` (the engine's: imports are absolute, so not
    this module); ImportError saying what to install without it."""
    try:
        import distributed
    except ImportError as e:
        raise ImportError(
            f"{url} needs Dask on the client: pip install 'pool-server[dask]' ({e})"
        ) from e
    return distributed


def _loop_future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


async def _changed(changed: asyncio.Future[None]) -> None:
    await asyncio.shield(changed)


async def _cancel(client: Any, future: Any) -> None:
    with contextlib.suppress(Exception):  # a client that lost its scheduler has no task to cancel
        await client.cancel([future], force=True)


def _fresh(error: PoolError | None) -> PoolError:
    """A copy of a job's error to raise: each raise gets its own traceback."""
    if error is None:
        return ServerError("the Dask backend: internal error: a call finished without an outcome")
    return copy.copy(error)


# Checks of a request's fields, as the server's service makes them.


def _invalid(message: str) -> InvalidRequestError:
    return InvalidRequestError(f"the Dask backend rejected the call: {message}")


def _check_sizes(payloads: Iterable[bytes]) -> None:
    for payload in payloads:
        if not payload:
            raise _invalid("empty payload: a request must carry a pickled or JSON call")
        if len(payload) > limits.MAX_PAYLOAD_BYTES:
            raise _invalid(f"payload of {len(payload)} bytes is over {limits.MAX_PAYLOAD_BYTES}")


def _retries(retries: int) -> int:
    if retries > limits.MAX_RETRIES:
        raise _invalid(f"retries is at most {limits.MAX_RETRIES}, got {retries}")
    return retries


def _time_limit(seconds: float) -> float | None:
    if not (math.isfinite(seconds) and 0.0 <= seconds <= limits.MAX_TIME_LIMIT_S):
        raise _invalid(f"time_limit_s must be 0 (none) or up to a year, got {seconds!r}")
    return seconds or None


def _text(name: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise _invalid(f"{name} is at most {limit} characters, got {len(value)}: {brief(value)}")
    return value


def _item_counts(counts: list[int], payloads: int) -> list[int]:
    if not counts:
        return [1] * payloads
    if len(counts) != payloads or min(counts) < 1 or max(counts) > limits.MAX_ITEMS_PER_JOB:
        raise _invalid(
            f"item_counts needs one count of 1 to {limits.MAX_ITEMS_PER_JOB} per payload"
        )
    return counts


def _state(value: int) -> JobState:
    try:
        return JobState.from_proto(value)
    except ValueError:
        raise _invalid(f"state {value} is not a job state this backend knows") from None


# What runs on the Dask workers.

_worker_lock = threading.Lock()  # one call at a time per process: see the module's docstring
_worker_functions = Functions()  # unpickled functions, by key
_worker_ready = False


def _run_on_worker(
    payload: bytes, function_hash: str, function: bytes, key: str, topic: str
) -> tuple[ResultStatus, bytes, int]:
    """One call or map chunk, run as a pool-server's worker runs it; its
    start and progress() reports are events on the client's ``topic``."""
    global _worker_ready
    import distributed
    from distributed.utils import sync

    worker = distributed.get_worker()

    def send(report: Progress) -> None:
        message = {"fraction": report.fraction, "message": report.message}
        worker.log_event(topic, {"key": key, "what": "progress", **message})

    with _worker_lock:
        if not _worker_ready:  # exceptions pickle with their tracebacks, as on a server
            pickling_support.install()
            _worker_ready = True
        # Logged on the scheduler before the call runs, not batched as
        # log_event() would be: a call that kills its worker at once must
        # still have been seen to start, or its crash is not counted.
        started = {"key": key, "what": "started", "worker": worker.address, "pid": os.getpid()}
        with contextlib.suppress(Exception):  # the call matters more than its event
            log = worker.scheduler.log_event
            sync(worker.loop, log, topic=topic, msg=started, callback_timeout=EVENT_TIMEOUT_S)
        task = worker.state.tasks.get(key)
        if task is None or task.state != "executing":  # cancelled as it started
            return ResultStatus.ERROR, b"", os.getpid()
        functions = None
        if function_hash:
            if function_hash not in _worker_functions:
                _worker_functions.put(function_hash, CachedFunction(function), len(function))
            functions = _worker_functions
        with reporting(key, send):
            status, outcome, _ = run_checked(payload, _nothing, functions)
    return status, outcome, os.getpid()


def _nothing() -> None:
    return None
