"""The local backend: the Pool service's RPCs answered in this process, on
worker processes of its own, with no server (``server="local"``,
``POOL_SERVER=local``; ``local:N`` for N workers). For tests and notebooks.

It serves the server's own messages (``RunRequest`` in, the worker's outcome
bytes out; ``SubmitRequest``, ``JobRef``, ... for jobs), so everything above
``_transport`` (Call, Job, map, outcome decoding, the error classes) is the
same code for both. A call still travels as the payload bytes a server would
get (its arguments bound and pickled by the client, its function by value),
and a worker runs it with ``worker_proc.runner.run_checked``, the worker's
own entry point: unpickling, captured output, remote tracebacks, map chunks
and ``retry_on`` are the server's by construction::

    run(request) / submit(request) ──> _Job (QUEUED) ──> the queue (a deque)
                                                            │
        one thread per worker slot takes a job when idle and hands it to its
        own ProcessPoolExecutor(max_workers=1) ──> child: _run_in_child ──> run_checked
                                                            │
    outcome bytes <── _Job.done (a concurrent.futures.Future) <── (status, outcome, pid)

Who owns what: :class:`_Job` a call's record and its life (the table of legal
moves is the server's, ``pool_server.jobs.TRANSITIONS``); the slot threads
(``_serve``) each slot's process, the only place it is started, killed or
replaced; the ``async`` methods the RPCs, which only read and change records
under the one lock and wait on ``concurrent.futures`` futures, never on
anything bound to an event loop, so the backend serves any number of loops
(each ``asyncio.run()``, the blocking API's own) one after another or at once.

Choices:

- **One single-process ProcessPoolExecutor per slot**, not one executor of N
  processes: when a process of an executor dies, the executor breaks and fails
  every task it holds (CPython's "broken pool"). With one process each, a
  crash fails only the call that caused it, the slot knows which process died
  and its exit code, and a call can be stopped by killing its process alone.
- **forkserver** where the platform has it, else spawn; never fork. The client
  process has threads (gRPC's, the blocking API's event loop, the executors'
  own), and fork copies their locks in whatever state they are in; gRPC's core
  is not fork-safe. The fork server is a fresh process that preloads this
  module (and so the worker's runner): a worker starts in milliseconds rather
  than spawn's fresh interpreter and imports. As with any start method but
  fork, each worker imports the script's main module again: a script must keep
  its top-level calls under ``if __name__ == "__main__":`` (a worker that
  fails there is reported as crashed, with a hint).
- **Functions by key**: the function's bytes go with every call to the worker
  (a local pipe, not a network), and each worker keeps an LRU of unpickled
  functions by key (``worker_proc.runner``'s own cache class), so a function
  is unpickled once per worker and keeps its module state between calls, as on
  a server. The backend keeps the server's store of functions, so a request
  with a key and no bytes is answered as a server would.
- **Deadlines and cancels stop the call**: ProcessPoolExecutor cannot cancel a
  running task, but a slot can kill its own process. At a call's deadline (or
  when its caller goes away, or a job is cancelled, or runs past its
  ``time_limit_s``) its process is killed and replaced, as the server kills
  its worker; the caller gets ``CallTimeoutError`` (``JobTimedOutError``,
  ``JobCancelledError``) at once.
- **Crashes**: a worker that dies (``os._exit``, a signal, a segfault) fails its
  call with ``WorkerCrashedError`` naming the exit code or signal, unless the
  request asked for retries: then the call runs again after the server's
  crash backoff. The slot starts a new process at once.
- **Workers never outlive the client**: at exit the backend kills them before
  concurrent.futures would wait for a running call to end, and each worker
  exits when the client does, even a killed one (a pidfd watchdog, as a
  server's workers have). They run in a session of their own, so a
  terminal's Ctrl-C reaches the caller only, as with a server.
- Not here: ``progress()`` reports (``JobStatus.progress`` stays unset), a
  queue bound for ``run()`` (``submit()`` has the server's default one),
  result expiry (jobs live as long as the process), tokens. Jobs live in this
  process's memory: another process cannot look them up.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import concurrent.futures as cf
import contextlib
import copy
import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import select
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

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
    WorkerCrashedError,
)
from pool_proto import pool_pb2
from pool_server.functions import FunctionNeeded, FunctionStore
from pool_server.jobs import (
    CRASH_BACKOFF_MAX_S,
    CRASH_BACKOFF_MIN_S,
    TRANSITIONS,
    IllegalJobTransition,
    new_call_id,
    new_job_id,
)
from pool_wire.limits import (
    MAX_BATCH_ID_CHARS,
    MAX_ID_CHARS,
    MAX_ITEMS_PER_JOB,
    MAX_LIST_LIMIT,
    MAX_NAME_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_RETRIES,
    MAX_TIME_LIMIT_S,
    brief,
)
from pool_wire.names import FINISHED_STATES, JobState, WorkerState
from pool_wire.protocol import ResultStatus
from worker_proc.runner import CachedFunction, Functions, run_checked

log = logging.getLogger("distribute_client.local")

# As the server's defaults (--queue-size, ListJobs without a limit).
QUEUE_CAPACITY = 100_000
DEFAULT_LIST_LIMIT = 100

# A new worker answers its first task within this, or is killed: it imports
# the script's main module first, which may be slow but must not hang.
START_TIMEOUT_S = 60.0

# A worker whose client process is gone exits with this (as a server's worker
# whose server is gone).
EXIT_CLIENT_GONE = 5

_WHERE = "the local backend"

_FUNCTION_NEEDED = (
    "the local backend does not hold the function named by function_hash; "
    "send its pickled bytes in RunRequest.function"
)

_MAIN_GUARD = (
    "the local backend was used while a worker process imported the script's main "
    "module: put the script's top-level code under `if __name__ == '__main__':`, as "
    "multiprocessing requires"
)

Answer = tuple[ResultStatus, bytes, int]  # what a worker returns: status, outcome, its pid


@dataclass(eq=False)
class _Job:
    """One call or submitted job. Its methods are called under the backend's
    lock; ``done`` resolves when it reaches a finished state."""

    payload: bytes
    id: str
    durable: bool = False  # submitted: listed and looked up, unlike a run() call
    max_attempts: int = 1
    time_limit: float | None = None  # per attempt, while running
    batch_id: str = ""
    name: str = ""
    items: int = 1  # calls it carries: a map chunk carries many
    function_hash: str = ""
    function: bytes = b""  # the pickled function of function_hash, if any
    state: JobState = JobState.QUEUED
    attempts: int = 0
    crashes: int = 0
    worker_id: int = 0
    worker_pid: int = 0
    created_at: float = field(default_factory=time.time)
    started_at: float = 0.0
    finished_at: float = 0.0
    outcome: bytes | None = None  # the worker's answer, when there is one
    error: PoolError | None = None  # why it finished without one
    done: cf.Future[None] = field(default_factory=cf.Future)
    _changed: cf.Future[None] | None = None  # made only while someone watches

    def __repr__(self) -> str:
        return f"<_Job {self.id} {self.state.value} attempt {self.attempts}>"

    @property
    def attempts_left(self) -> bool:
        return self.attempts < self.max_attempts

    @property
    def crash_backoff(self) -> float:
        """As the server's: 0.1 s after the first crash, doubling to 10 s."""
        return min(CRASH_BACKOFF_MIN_S * 2.0 ** max(self.crashes - 1, 0), CRASH_BACKOFF_MAX_S)

    def start(self, worker_id: int, worker_pid: int) -> None:
        self.worker_id, self.worker_pid = worker_id, worker_pid
        self._move(JobState.RUNNING)

    def answered(self, status: ResultStatus, outcome: bytes, pid: int) -> bool:
        """DONE, FAILED, or (a retry_on exception, attempts left) queued
        again; True: put it back at the head of the queue."""
        if self.state.finished:  # cancelled just as the answer came
            return False
        self.worker_pid = pid
        if status is ResultStatus.RETRY and self.attempts_left:
            return self._try_again()
        self.outcome = outcome
        self._move(JobState.DONE if status is ResultStatus.OK else JobState.FAILED)
        return False

    def crashed(self, error: WorkerCrashedError) -> bool:
        """Its worker died: True to queue it again after :attr:`crash_backoff`."""
        if self.state.finished:
            return False
        self.crashes += 1
        if self.attempts_left:
            return self._try_again()
        self._finish(JobState.FAILED, error)
        return False

    def timed_out(self) -> None:
        if not self.state.finished:
            message = (
                f"job {self.id} ran past its {self.time_limit or 0:.3g} s time limit on worker "
                f"{self.worker_id}; the worker was stopped and replaced"
            )
            self._finish(JobState.TIMED_OUT, JobTimedOutError(message))

    def cancel(self, error: PoolError | None = None) -> None:
        if not self.state.finished:
            error = error or JobCancelledError(f"job {self.id} was cancelled")
            self._finish(JobState.CANCELLED, error)

    def failed(self, error: PoolError) -> None:
        if not self.state.finished:
            self._finish(JobState.FAILED, error)

    def next_change(self) -> cf.Future[None]:
        """Resolved by the job's next change of state."""
        if self._changed is None:
            self._changed = cf.Future()
        return self._changed

    def status(self) -> pool_pb2.JobStatus:
        return pool_pb2.JobStatus(
            id=self.id,
            state=self.state.to_proto(),
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

    def _try_again(self) -> bool:
        self.outcome = self.error = None
        self._move(JobState.INTERRUPTED)
        self._move(JobState.QUEUED)
        return True

    def _finish(self, state: JobState, error: PoolError) -> None:
        self.error = error
        self._move(state)

    def _move(self, new: JobState) -> None:
        old = self.state
        if new not in TRANSITIONS[old]:
            raise IllegalJobTransition(f"{self!r}: {old.value} -> {new.value}")
        self.state = new
        if new is JobState.RUNNING:
            self.attempts += 1
            self.started_at = time.time()
        elif new.finished:
            self.finished_at = time.time()
            self.payload = self.function = b""  # it never runs again
            self.done.set_result(None)
        if self._changed is not None:
            self._changed.set_result(None)
            self._changed = None


@dataclass(eq=False)
class _Slot:
    """One worker slot; only its own thread starts, kills or replaces its process."""

    id: int
    state: WorkerState = WorkerState.STARTING
    executor: cf.ProcessPoolExecutor | None = None
    process: BaseProcess | None = None
    proven: bool = False  # its process has answered once (it got past importing)
    job: _Job | None = None
    jobs_done: int = 0
    restarts: int = 0

    @property
    def pid(self) -> int:
        process = self.process  # read once: its thread may replace it meanwhile
        return (process.pid or 0) if process is not None else 0

    def info(self) -> pool_pb2.WorkerInfo:
        return pool_pb2.WorkerInfo(
            id=self.id,
            pid=self.pid,
            state=self.state.to_proto(),
            jobs_done=self.jobs_done,
            restarts=self.restarts,
        )


class LocalBackend:
    """The Pool service's RPCs answered in this process, on a ProcessPoolExecutor
    per worker slot. Every method is safe from any thread and any event loop."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError(f"a local backend needs at least 1 worker, got {workers}")
        if getattr(multiprocessing.current_process(), "_inheriting", False):
            raise RuntimeError(_MAIN_GUARD)  # else the worker would wait on workers of its own
        self.workers = workers
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # a job was queued, or closing
        self._queue: collections.deque[_Job] = collections.deque()
        self._jobs: dict[str, _Job] = {}  # submitted, oldest first
        self._calls: set[_Job] = set()  # run() calls not yet answered
        self._functions = FunctionStore()
        self._closed = False
        self._closing: cf.Future[None] = cf.Future()
        self._context = _mp_context()
        self._slots = [_Slot(i) for i in range(1, workers + 1)]
        self._threads = [
            threading.Thread(
                target=self._serve, args=(s,), name=f"local-worker-{s.id}", daemon=True
            )
            for s in self._slots
        ]
        for thread in self._threads:
            thread.start()

    def __repr__(self) -> str:
        return f"<LocalBackend workers={self.workers} queued={len(self._queue)}>"

    # The RPCs.

    async def run(
        self, request: pool_pb2.RunRequest, deadline_s: float | None, function: bytes
    ) -> tuple[bytes, int, int]:
        """(outcome bytes as a worker writes them, worker_id, worker_pid).

        ``deadline_s`` covers queueing, running and retries; past it the call
        is stopped and CallTimeoutError raised. A payload naming its function
        by ``request.function_hash`` takes it from ``function`` (or
        ``request.function``), or from an earlier call's.
        """
        job = self._new_call(request, function or request.function)
        try:
            async with asyncio.timeout(deadline_s):
                await _until(job.done)
        except TimeoutError:
            if not job.done.done():
                raise CallTimeoutError(self._deadline_message(job, deadline_s)) from None
        finally:
            self._cancel(job)  # the caller is gone (or answered): a no-op once finished
            with self._lock:
                self._calls.discard(job)
        if job.outcome is None:
            raise _fresh(job.error)
        return job.outcome, job.worker_id, job.worker_pid

    async def get_workers(self, request: pool_pb2.GetWorkersRequest) -> pool_pb2.GetWorkersReply:
        with self._lock:
            return pool_pb2.GetWorkersReply(
                workers=[slot.info() for slot in self._slots],
                queue_length=len(self._queue),
                queue_capacity=QUEUE_CAPACITY,
            )

    async def submit(self, request: pool_pb2.SubmitRequest) -> pool_pb2.SubmitReply:
        """One job per payload, all queued or none (QueueFullError)."""
        payloads = list(request.payloads)
        if not payloads:
            raise _invalid("Submit needs at least one payload")
        _check_sizes(payloads)
        max_attempts = _retries(request.retries) + 1
        time_limit = _time_limit(request.time_limit_s)
        batch_id = _text("batch_id", request.batch_id, MAX_BATCH_ID_CHARS)
        name = _text("name", request.name, MAX_NAME_CHARS)
        counts = _item_counts(list(request.item_counts), len(payloads))
        jobs = [
            _Job(
                payload,
                new_job_id(),
                durable=True,
                max_attempts=max_attempts,
                time_limit=time_limit,
                batch_id=batch_id,
                name=name,
                items=items,
            )
            for payload, items in zip(payloads, counts, strict=True)
        ]
        with self._lock:
            if len(jobs) > QUEUE_CAPACITY - len(self._queue):
                raise QueueFullError(
                    f"{len(jobs)} jobs do not fit: the local backend's queue holds "
                    f"{len(self._queue)} of {QUEUE_CAPACITY}; submit fewer at a time"
                )
            self._jobs.update((job.id, job) for job in jobs)
            self._enqueue(jobs)
        return pool_pb2.SubmitReply(job_ids=[job.id for job in jobs])

    async def get_job(self, request: pool_pb2.JobRef) -> pool_pb2.JobStatus:
        job = self._job(request)
        with self._lock:
            return job.status()

    async def watch_job(self, request: pool_pb2.JobRef) -> AsyncIterator[pool_pb2.JobStatus]:
        """The job's status now, then after every change, until it is finished."""
        job = self._job(request)
        while True:
            with self._lock:
                status, changed, finished = job.status(), job.next_change(), job.state.finished
            yield status
            if finished:
                return
            await _until(changed)

    async def get_result(
        self, request: pool_pb2.JobRef, deadline_s: float | None
    ) -> pool_pb2.JobResult:
        """The job once finished, or as it stands when ``deadline_s`` passes;
        raises the error of a job that finished without an outcome."""
        job = self._job(request)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await _until(job.done)
        with self._lock:
            if not (job.state.finished and job.outcome is None and job.error is not None):
                return pool_pb2.JobResult(status=job.status(), outcome=job.outcome or b"")
        raise _fresh(job.error)

    async def cancel_job(self, request: pool_pb2.JobRef) -> pool_pb2.JobStatus:
        """Dropped if queued, its worker stopped if running; a no-op once finished."""
        job = self._job(request)
        self._cancel(job)
        with self._lock:
            return job.status()

    async def list_jobs(self, request: pool_pb2.ListJobsRequest) -> pool_pb2.ListJobsReply:
        """Submitted jobs, newest first."""
        state = _state(request.state) if request.state else None
        batch_id = _text("batch_id", request.batch_id, MAX_BATCH_ID_CHARS)
        limit = min(request.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        statuses: list[pool_pb2.JobStatus] = []
        with self._lock:
            for job in reversed(self._jobs.values()):
                if len(statuses) == limit:
                    break
                if (state is None or job.state is state) and batch_id in ("", job.batch_id):
                    statuses.append(job.status())
        return pool_pb2.ListJobsReply(jobs=statuses)

    async def get_batch(self, request: pool_pb2.BatchRef) -> pool_pb2.BatchStatus:
        """Calls per state of the jobs in the batch (a job carries ``items`` calls)."""
        batch_id = _text("batch_id", request.batch_id, MAX_BATCH_ID_CHARS)
        states: collections.Counter[str] = collections.Counter()
        with self._lock:
            for job in self._jobs.values():
                if job.batch_id == batch_id:
                    states[job.state.value] += job.items
        total = sum(states.values())
        if not total:
            raise JobNotFoundError(f"no batch {brief(batch_id)} in this process's local backend")
        finished = sum(states[s.value] for s in FINISHED_STATES)
        return pool_pb2.BatchStatus(
            batch_id=batch_id,
            total=total,
            states=dict(states),
            percent_done=100.0 * finished / total,
        )

    def close(self) -> None:
        """Stop: unfinished calls fail (ServerShuttingDownError), unfinished
        jobs are cancelled, every worker process is killed."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            self._queue.clear()
            for job in [*self._calls, *self._jobs.values()]:
                job.cancel(ServerShuttingDownError(f"{_WHERE} stopped before the call finished"))
            self._wake.notify_all()
        self._closing.set_result(None)
        for thread in self._threads:
            thread.join(timeout=10.0)

    # Records, under the lock.

    def _new_call(self, request: pool_pb2.RunRequest, function: bytes) -> _Job:
        payload = request.payload
        _check_sizes([payload])
        max_attempts = _retries(request.retries) + 1
        job = _Job(payload, new_call_id(), max_attempts=max_attempts)
        with self._lock:
            if request.function_hash:
                try:
                    job.function = self._functions.resolve(request.function_hash, function)
                except FunctionNeeded:
                    raise _invalid(_FUNCTION_NEEDED) from None
                except ValueError as e:
                    raise _invalid(str(e)) from None
                job.function_hash = request.function_hash
            self._enqueue([job])
            self._calls.add(job)
        return job

    def _enqueue(self, jobs: list[_Job]) -> None:
        if self._closed:
            raise ServerShuttingDownError(f"{_WHERE} is shut down (the process is exiting)")
        self._queue.extend(jobs)
        self._wake.notify(len(jobs))

    def _job(self, request: pool_pb2.JobRef) -> _Job:
        job_id = _text("job_id", request.job_id, MAX_ID_CHARS)
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(
                f"no job {brief(job_id)} in this process's local backend: never submitted "
                "here (a local backend's jobs live in the process that submitted them)"
            )
        return job

    def _cancel(self, job: _Job, error: PoolError | None = None) -> None:
        """Dropped if queued; a running job's slot sees it finish and kills its process."""
        with self._lock:
            if not job.state.finished:
                with contextlib.suppress(ValueError):
                    self._queue.remove(job)
                job.cancel(error)

    def _deadline_message(self, job: _Job, seconds: float | None) -> str:
        with self._lock:
            ran = job.attempts > 0
        if not ran:
            return f"the call waited in the queue for its whole {seconds:.3g} s deadline"
        return (
            f"the call ran past its {seconds:.3g} s deadline on worker {job.worker_id}; "
            "the worker was stopped and replaced"
        )

    # The slot threads: each slot's process is started, fed and replaced here only.

    def _serve(self, slot: _Slot) -> None:
        """Keep one slot staffed: start a process, feed it jobs, replace it."""
        self._start(slot)
        while (job := self._take(slot)) is not None:
            try:
                lives = self._run_one(slot, job)
            except Exception as e:  # a bug here must neither lose the slot nor strand the job
                log.exception("local backend: error on worker %d; replacing its process", slot.id)
                with self._lock:
                    job.failed(ServerError(f"{_WHERE}: internal error: {e!r}"))
                lives = False
            with self._lock:
                slot.job = None
            if not lives and not self._closed:
                self._discard(slot)
                slot.restarts += 1
                self._start(slot)
        self._discard(slot)

    def _start(self, slot: _Slot) -> None:
        """Start the slot's process now rather than at its first call, so the
        pool is warm and its pid known. One that fails is left to the next
        call, which starts another and gets the error."""
        self._set_state(slot, WorkerState.STARTING)
        slot.proven = False
        try:
            executor = self._new_executor(slot)
            ready = executor.submit(os.getpid)
            slot.process = _process_of(executor)
            waiting: list[cf.Future[Any]] = [ready, self._closing]
            cf.wait(waiting, timeout=START_TIMEOUT_S, return_when=cf.FIRST_COMPLETED)
            slot.proven = ready.done() and ready.exception() is None
        except Exception:
            log.exception("local backend: worker %d could not be started", slot.id)
        if not slot.proven and not self._closed:
            log.warning(
                "local backend: worker %d did not start; its next call tries again", slot.id
            )
            self._discard(slot)
        self._set_state(slot, WorkerState.IDLE)

    def _take(self, slot: _Slot) -> _Job | None:
        """The next queued job, now RUNNING on ``slot``; None once closing."""
        with self._wake:
            while not self._queue and not self._closed:
                self._wake.wait()
            if self._closed:
                return None
            job = self._queue.popleft()
            job.start(slot.id, slot.pid)
            slot.job, slot.state = job, WorkerState.BUSY
            return job

    def _run_one(self, slot: _Slot, job: _Job) -> bool:
        """Run ``job`` on the slot's process; False if the process is gone or must go."""
        future = self._submit(slot, job)
        waiting: list[cf.Future[Any]] = [future, job.done, self._closing]
        cf.wait(waiting, timeout=job.time_limit, return_when=cf.FIRST_COMPLETED)
        if future.done():
            return self._finished(slot, job, future)
        with self._lock:  # cancelled, closing, or past its time limit: stop the process
            slot.state = WorkerState.STOPPING
            job.timed_out()  # unless it is finished (cancelled) already
        return False

    def _submit(self, slot: _Slot, job: _Job) -> cf.Future[Answer]:
        if slot.process is not None and _exited(slot.process):
            self._died_idle(slot)
        executor = slot.executor or self._new_executor(slot)
        args = (job.payload, job.function_hash, job.function)
        try:
            future = executor.submit(_run_in_child, *args)
        except BrokenProcessPool:  # it died just now, between the check and the submit
            self._died_idle(slot)
            future = self._new_executor(slot).submit(_run_in_child, *args)
        slot.process = slot.process or _process_of(slot.executor)
        with self._lock:
            job.worker_pid = slot.pid
        return future

    def _finished(self, slot: _Slot, job: _Job, future: cf.Future[Answer]) -> bool:
        error = future.exception()
        if error is None:
            status, outcome, pid = future.result()
            with self._wake:
                if job.answered(status, outcome, pid):
                    self._queue.appendleft(job)  # a retry_on exception: it keeps its place
                    self._wake.notify()
                slot.jobs_done += 1
                slot.proven = True
                slot.state = WorkerState.IDLE
            return True
        if not isinstance(error, BrokenProcessPool):
            raise error
        code = self._reap(slot)
        message = (
            f"worker {slot.id} (pid {slot.pid}) {_describe_exit(code)} while running job {job.id}"
        )
        if not slot.proven:
            message += (
                " before it ran anything: if its stderr shows an error while importing the main "
                "module, put the script's top-level code under `if __name__ == '__main__':`"
            )
        log.warning("local backend: %s", message)
        crash = f"{message}; the call did not finish and the worker was restarted"
        with self._lock:
            slot.state = WorkerState.DEAD
            again = job.crashed(WorkerCrashedError(crash, exit_code=code, worker_id=slot.id))
        if again:
            timer = threading.Timer(job.crash_backoff, self._backed_off, (job,))
            timer.daemon = True
            timer.start()
        return False

    def _backed_off(self, job: _Job) -> None:
        """A crashed job's backoff is over: to the tail of the queue, unless it
        was cancelled meanwhile."""
        with self._wake:
            if job.state is JobState.QUEUED and not self._closed:
                self._queue.append(job)
                self._wake.notify()

    def _died_idle(self, slot: _Slot) -> None:
        code = self._reap(slot)
        log.warning(
            "local backend: worker %d (pid %d) %s while idle; restarting it",
            slot.id,
            slot.pid,
            _describe_exit(code),
        )
        self._discard(slot)
        slot.restarts += 1

    def _new_executor(self, slot: _Slot) -> cf.ProcessPoolExecutor:
        slot.executor = cf.ProcessPoolExecutor(
            1, mp_context=self._context, initializer=_child_init, initargs=(os.getpid(),)
        )
        slot.process, slot.proven = None, False
        return slot.executor

    def _reap(self, slot: _Slot) -> int | None:
        """The exit code of the slot's dead process. The executor's own thread
        reaps it (reading the code here as well would race with it), so wait
        for that thread first."""
        if slot.executor is not None:
            slot.executor.shutdown(wait=True)
        return slot.process.exitcode if slot.process is not None else None

    def _discard(self, slot: _Slot) -> None:
        """Kill the slot's process if it still runs, and let its executor go."""
        process, executor = slot.process, slot.executor
        slot.process = slot.executor = None
        if process is not None and not _exited(process):
            process.kill()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _set_state(self, slot: _Slot, state: WorkerState) -> None:
        with self._lock:
            slot.state = state


MAX_WORKERS = 1024

_backends: dict[int, LocalBackend] = {}
_backends_lock = threading.Lock()


def local_backend(workers: int | None) -> LocalBackend:
    """The process's backend with that many workers (None: os.cpu_count()),
    made on first use, shut down at exit."""
    count = (os.cpu_count() or 1) if workers is None else workers
    with _backends_lock:
        backend = _backends.get(count)
        if backend is None:
            backend = _backends[count] = LocalBackend(count)
            _before_exit(backend.close)
        return backend


def check(url: str) -> None:
    """``local`` or ``local:N``, N from 1 to MAX_WORKERS."""
    workers = url.removeprefix("local").removeprefix(":")
    if workers and not (workers.isdigit() and 1 <= int(workers) <= MAX_WORKERS):
        raise ValueError(f"{url!r} is not local:N with N from 1 to {MAX_WORKERS}")


def connect(url: str) -> LocalBackend:
    """The backend of ``local`` (one worker per CPU) or ``local:N``."""
    check(url)
    workers = url.removeprefix("local").removeprefix(":")
    return local_backend(int(workers) if workers else None)


def _before_exit(close: Callable[[], None]) -> None:
    """Run ``close`` at exit, before concurrent.futures waits for its running
    tasks (a call still running would hold the exit up until it finished).
    That wait is registered with ``threading._register_atexit``, whose
    functions run last registered first, before ``atexit``'s."""
    register = getattr(threading, "_register_atexit", None)
    try:
        if register is None:
            raise RuntimeError("no threading._register_atexit")
        register(close)
    except RuntimeError:  # another Python, or the interpreter is exiting already
        atexit.register(close)


def _mp_context() -> BaseContext:
    """forkserver, preloading this module, where there is one; spawn elsewhere
    (never fork: see the module's docstring). The fork server is the
    process's one: a program that sets a preload list of its own for it
    should name this module in it too."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # no effect once the fork server runs
    return context


def _process_of(executor: cf.ProcessPoolExecutor | None) -> BaseProcess | None:
    """The executor's one process, once a submit has started it: for its pid,
    its exit code, and to kill it. This is the one read of the executor's
    private ``_processes`` (no public way to reach a worker exists before
    Python 3.14); without it, pids read 0, exit codes are unknown and a call
    past its deadline runs on to its end."""
    processes = getattr(executor, "_processes", None) or {}
    found = list(processes.values())
    return found[0] if found else None


def _exited(process: BaseProcess) -> bool:
    """Whether the process has ended, read off its sentinel without reaping
    it (the executor's thread does that)."""
    return bool(multiprocessing.connection.wait([process.sentinel], timeout=0))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "died (its exit code is unknown)"
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    how = f"was killed by {name}"
    return how + (" (possibly by the out-of-memory killer)" if name == "SIGKILL" else "")


async def _until(event: cf.Future[None]) -> None:
    """Wait for ``event`` without blocking the loop. Cancelling the wait
    leaves ``event`` alone: callers on other loops may wait on it too."""
    if event.done():
        return
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits there
            loop.call_soon_threadsafe(_resolve, woken)

    event.add_done_callback(wake)
    await woken


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fresh(error: PoolError | None) -> PoolError:
    """A copy of a job's error to raise: each raise gets its own traceback."""
    if error is None:
        return ServerError(f"{_WHERE}: internal error: a call finished without an outcome")
    return copy.copy(error)


# Checks of a request's fields, as the server's service makes them.


def _invalid(message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{_WHERE} rejected the call: {message}")


def _check_sizes(payloads: Iterable[bytes]) -> None:
    for payload in payloads:
        if not payload:
            raise _invalid("empty payload: a request must carry a pickled or JSON call")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise _invalid(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")


def _retries(retries: int) -> int:
    if retries > MAX_RETRIES:
        raise _invalid(f"retries is at most {MAX_RETRIES}, got {retries}")
    return retries


def _time_limit(seconds: float) -> float | None:
    if not (math.isfinite(seconds) and 0.0 <= seconds <= MAX_TIME_LIMIT_S):
        raise _invalid(
            f"time_limit_s must be 0 (none) or a number of seconds up to "
            f"{MAX_TIME_LIMIT_S:.0f} (a year), got {seconds!r}"
        )
    return seconds or None


def _text(name: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise _invalid(f"{name} is at most {limit} characters, got {len(value)}: {brief(value)}")
    return value


def _item_counts(counts: list[int], payloads: int) -> list[int]:
    if not counts:
        return [1] * payloads
    if len(counts) != payloads or min(counts) < 1:
        raise _invalid("item_counts needs one count of at least 1 per payload")
    if max(counts) > MAX_ITEMS_PER_JOB:
        raise _invalid(f"item_counts are at most {MAX_ITEMS_PER_JOB} calls per payload")
    return counts


def _state(value: int) -> JobState:
    try:
        return JobState.from_proto(value)
    except ValueError:
        raise _invalid(f"state {value} is not a job state this backend knows") from None


# What runs in the worker processes.

_child_functions = Functions()  # a worker's unpickled functions, by key


def _child_init(client_pid: int) -> None:
    """Make a new worker like a server's: exceptions pickle with their
    tracebacks; the terminal's Ctrl-C goes to the caller, not to it (a
    session of its own, with no terminal); and it exits when the client
    does, even a killed one (a worker waiting for its next task would wait
    forever: it holds both ends of its executor's pipes itself)."""
    pickling_support.install()
    with contextlib.suppress(OSError):
        os.setsid()
    try:
        pidfd = os.pidfd_open(client_pid)
    except ProcessLookupError:  # the client died while this worker started
        os._exit(EXIT_CLIENT_GONE)
    except (AttributeError, OSError):  # not Linux 5.3+: a killed client's workers linger
        return

    def watch() -> None:
        select.select([pidfd], [], [])
        os._exit(EXIT_CLIENT_GONE)

    threading.Thread(target=watch, name="client-watchdog", daemon=True).start()


def _run_in_child(payload: bytes, function_hash: str, function: bytes) -> Answer:
    """One call or map chunk, run as the worker runs it."""
    functions = None
    if function_hash:
        if function_hash not in _child_functions:
            _child_functions.put(function_hash, CachedFunction(function), len(function))
        functions = _child_functions
    status, outcome, _ = run_checked(payload, _nothing, functions)
    return status, outcome, os.getpid()


def _nothing() -> Any:
    return None
