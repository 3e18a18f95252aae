"""The worker pool: N slots, each a small state machine fed from one queue.

Every slot has one consumer task that owns it (Rule 1: a slot's state
changes only here, through ``_set_state``, which announces each change to
the pool's ``worker_listeners``)::

    DEAD -> STARTING -> IDLE -> BUSY -> IDLE ...
               |          |       |
               |          |       +-> DEAD      (worker died: its job fails)
               |          |       +-> STOPPING  (caller gone: worker killed)
               +----------+-> STOPPING -> DEAD  (pool closing)

An idle consumer takes the next job only when its worker is ready for it, so
no job sits pre-assigned to a busy worker. A worker that fails to start is
retried with exponential backoff; one that dies while running a job is
replaced at once, and only that job fails. What becomes of a job (retry,
fail, time out) is the job's own decision (``jobs.py``); the supervisor
only tells it what happened and puts it back in the queue when it asks:
at once, or, after a crash, once its backoff has passed (a timer, so that
the wait holds neither a worker slot nor a place at the head of the queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from pool_server.cgroup import SlotCgroups, open_slot_cgroups
from pool_server.errors import CallError, ShuttingDown, WorkerCrashed
from pool_server.events import Listeners
from pool_server.jobs import Job, JobChange
from pool_server.process import WorkerDied, WorkerProcess, WorkerStartError
from pool_server.queue import JobQueue
from pool_wire.names import JobState, WorkerState
from pool_wire.protocol import Progress

log = logging.getLogger("pool_server.supervisor")

# Backoff between failed worker starts: doubling from MIN to MAX, reset by a
# successful start, so a broken environment costs a log line every 10 s
# rather than a spinning CPU.
RESTART_BACKOFF_MIN_S = 0.1
RESTART_BACKOFF_MAX_S = 10.0

# A worker that dies idle within this long of starting counts as a failed
# start for the backoff; one that lived longer resets it.
HEALTHY_AFTER_S = 10.0


_TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    WorkerState.DEAD: frozenset({WorkerState.STARTING}),
    WorkerState.STARTING: frozenset({WorkerState.IDLE, WorkerState.DEAD}),
    WorkerState.IDLE: frozenset({WorkerState.BUSY, WorkerState.STOPPING, WorkerState.DEAD}),
    WorkerState.BUSY: frozenset({WorkerState.IDLE, WorkerState.STOPPING, WorkerState.DEAD}),
    WorkerState.STOPPING: frozenset({WorkerState.DEAD}),
}


class IllegalTransition(RuntimeError):
    pass


@dataclass(eq=False)
class Worker:
    """One slot of the pool; its process is replaced when it dies."""

    id: int
    state: WorkerState = WorkerState.DEAD
    process: WorkerProcess | None = None
    job: Job | None = None  # the job it is running
    jobs_done: int = 0
    restarts: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: Listeners[WorkerChange] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        """The live process's pid; 0 while the slot has none."""
        alive = self.state in (WorkerState.IDLE, WorkerState.BUSY, WorkerState.STOPPING)
        return self.process.pid if self.process and alive else 0

    def __repr__(self) -> str:
        return (
            f"<Worker id={self.id} pid={self.pid} state={self.state.value} "
            f"jobs_done={self.jobs_done} restarts={self.restarts}>"
        )


@dataclass(frozen=True, slots=True)
class WorkerChange:
    """A worker slot moved from ``old`` to its current state."""

    worker: Worker
    old: WorkerState


def _set_state(worker: Worker, new: WorkerState) -> None:
    old = worker.state
    if new not in _TRANSITIONS[old]:
        raise IllegalTransition(f"{worker!r}: {old.value} -> {new.value}")
    worker.state = new
    if worker.listeners is not None:
        worker.listeners.announce(WorkerChange(worker, old))


class WorkerPool:
    """A fixed number of worker slots consuming one bounded job queue.

    Jobs made for this pool carry its ``job_listeners``; its slots announce
    their changes to ``worker_listeners``.
    """

    def __init__(self, size: int, queue_size: int, max_queued_bytes: int) -> None:
        self.job_listeners: Listeners[JobChange] = Listeners("jobs")
        self.worker_listeners: Listeners[WorkerChange] = Listeners("workers")
        self.workers = [Worker(id=i, listeners=self.worker_listeners) for i in range(1, size + 1)]
        self.queue: JobQueue[Job] = JobQueue(queue_size, max_queued_bytes, _payload_size)
        # Jobs waiting out their crash backoff before they are queued again.
        self._backing_off: dict[Job, asyncio.TimerHandle] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._cgroups: SlotCgroups | None = None  # set by open_pool; None: process groups only
        self._draining = asyncio.Event()  # set: take no new jobs

    def __repr__(self) -> str:
        return f"<WorkerPool workers={self.workers!r} queue={self.queue!r}>"

    async def wait_ready(self) -> None:
        """Wait until every slot has had a worker say READY once."""
        for worker in self.workers:
            await worker.ready.wait()

    async def submit(self, job: Job) -> None:
        """Queue ``job``, waiting for room while the queue is full."""
        await self.queue.put(job)

    async def shut_down(self, grace_s: float, hurry: asyncio.Event) -> None:
        """Take no new jobs, answer queued calls at once, and give running ones
        ``grace_s`` (or until ``hurry`` is set) before their calls are failed.

        Durable jobs are left to the journal: queued ones stay QUEUED, and one
        still running when the grace ends is interrupted (and re-queued at the
        next start if it has attempts left).
        """
        self._draining.set()
        self._stop_backoffs()
        for job in self.queue.snapshot():
            job.abandoned(ShuttingDown("the server is stopping; the call did not start"))
            if job.state.finished:
                self.queue.discard(job)
        running = [w.job.done for w in self.workers if w.job is not None]
        if running:
            log.info("giving %d running jobs up to %.3g s to finish", len(running), grace_s)
            hurried: asyncio.Future[Any] = asyncio.ensure_future(hurry.wait())
            finished: asyncio.Future[Any] = asyncio.ensure_future(asyncio.wait(running))
            # Whichever comes first; waiting for both held every stop for the
            # whole grace once any job was running.
            await asyncio.wait(
                [finished, hurried], timeout=grace_s, return_when=asyncio.FIRST_COMPLETED
            )
            hurried.cancel()
            finished.cancel()
        for worker in self.workers:
            if worker.job is not None:
                message = f"the server stopped before the call finished (--grace {grace_s:g} s)"
                worker.job.abandoned(ShuttingDown(message))

    def cancel(self, job: Job, error: CallError | None = None) -> None:
        """Cancel ``job``: dropped if queued; if it runs, its consumer sees it
        finish and stops the worker. A no-op once finished."""
        if not job.state.finished:
            self.queue.discard(job)
            job.cancel(error)

    async def _serve(self, worker: Worker) -> None:
        """Keep one slot staffed: start a worker, feed it, replace it, forever."""
        delay = RESTART_BACKOFF_MIN_S
        while True:
            process = await self._start(worker)
            started = time.monotonic()
            died_idle = await self._run_until_replaced(worker, process)
            worker.job = None
            worker.restarts += 1
            if died_idle and time.monotonic() - started < HEALTHY_AFTER_S:
                # Dying with no job to blame is the environment's doing (memory
                # pressure, a broken site module): back off as for failed starts.
                log.warning(
                    "worker %d died soon after start; restarting in %.1f s", worker.id, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_BACKOFF_MAX_S)
            else:
                delay = RESTART_BACKOFF_MIN_S

    async def _run_until_replaced(self, worker: Worker, process: WorkerProcess) -> bool:
        """Run jobs on ``process`` until it must go; True if it died while idle."""
        died_idle = False
        try:
            died_idle = await self._run_jobs(worker, process)
        except asyncio.CancelledError:
            if worker.job is not None:
                worker.job.abandoned(ShuttingDown("the server stopped while the call ran"))
            raise
        except Exception as e:
            log.exception("supervisor error on %r; replacing its worker", worker)
            if worker.job is not None:
                worker.job.failed(CallError(f"internal error in the pool-server supervisor: {e!r}"))
            if worker.state in (WorkerState.IDLE, WorkerState.BUSY):
                _set_state(worker, WorkerState.STOPPING)
            await process.kill()
        if worker.state is WorkerState.STOPPING:
            _set_state(worker, WorkerState.DEAD)
        return died_idle

    async def _start(self, worker: Worker) -> WorkerProcess:
        delay = RESTART_BACKOFF_MIN_S
        while True:
            _set_state(worker, WorkerState.STARTING)
            try:
                worker.process = await WorkerProcess.start(worker.id, self._cgroups)
            except WorkerStartError as e:
                _set_state(worker, WorkerState.DEAD)
                log.error("worker %d failed to start: %s; retrying in %.1f s", worker.id, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_BACKOFF_MAX_S)
                continue
            log.debug("worker %d ready (pid %d)", worker.id, worker.pid)
            _set_state(worker, WorkerState.IDLE)
            worker.ready.set()
            return worker.process

    async def _run_jobs(self, worker: Worker, process: WorkerProcess) -> bool:
        """Feed jobs to one process until it has to be replaced; True if it
        died while idle."""
        while True:
            if self._draining.is_set():
                await asyncio.Future()  # parked until the pool closes and cancels us
            job = await self._next_job(process)
            if job is not None and self._draining.is_set():
                self.queue.requeue(job)
                continue
            if job is None:
                how = process.describe_exit(await process.exit_code())
                log.warning("worker %d (pid %d) %s while idle", worker.id, process.pid, how)
                _set_state(worker, WorkerState.DEAD)
                return True
            if job.state is not JobState.QUEUED:  # cancelled while it waited
                continue
            if not await self._run_one(worker, process, job):
                return False

    async def _run_one(self, worker: Worker, process: WorkerProcess, job: Job) -> bool:
        """Run one job; False if its worker is gone or must be replaced."""
        _set_state(worker, WorkerState.BUSY)
        job.start(worker.id, process.pid)
        worker.job = job
        try:
            progressed = functools.partial(_progressed, job)
            sent = await process.send(
                job.id, job.payload, progressed, job.function, job.function_hash
            )
            if job.max_attempts == 1:
                # Nothing in this server's life sends it again (a durable job's
                # is in the journal): let a large payload go.
                job.payload = b""
            reply = await process.outcome(sent, job.done, job.time_limit)
        except WorkerDied:
            _set_state(worker, WorkerState.DEAD)
            await self._crashed(worker, process, job)
            return False
        if reply is None:  # cancelled, or past its time limit: the worker must go
            _set_state(worker, WorkerState.STOPPING)
            if job.state.finished:
                log.info("job %s cancelled; stopping worker %d", job.id, worker.id)
            job.timed_out()  # unless it was cancelled
            await process.kill()
            return False
        if job.answered(reply.status, reply.outcome):
            self.queue.requeue(job)
        worker.jobs_done += 1
        worker.job = None
        if process.retiring is not None:  # the call left it unfit; it exits by itself
            _set_state(worker, WorkerState.STOPPING)
            await process.stop()
            return False
        _set_state(worker, WorkerState.IDLE)
        return True

    async def _next_job(self, process: WorkerProcess) -> Job | None:
        """The next job, or ``None`` if the idle worker died while waiting."""
        if process.gone.done():
            return None
        job = await self.queue.get(until=process.gone)
        if job is not None and process.gone.done():  # it died just as the job came
            self.queue.requeue(job)
            return None
        return job

    async def _crashed(self, worker: Worker, process: WorkerProcess, job: Job) -> None:
        code = await process.exit_code()
        how = process.describe_exit(code)
        message = f"worker {worker.id} (pid {process.pid}) {how} while running job {job.id}"
        log.warning("%s", message)
        error = WorkerCrashed(
            f"{message}; the call did not finish and the worker was restarted", worker.id, code
        )
        if job.crashed(error):
            delay = job.crash_backoff
            log.info("job %s queued again in %.1f s", job.id, delay)
            loop = asyncio.get_running_loop()
            self._backing_off[job] = loop.call_later(delay, self._backed_off, job)

    def _backed_off(self, job: Job) -> None:
        """A crashed job's backoff is over: back in the queue, at its tail
        (unless it was cancelled meanwhile)."""
        del self._backing_off[job]
        if job.state is JobState.QUEUED and not self._draining.is_set():
            self.queue.put_nowait(job)

    def _stop_backoffs(self) -> None:
        """The pool is stopping: jobs waiting out a backoff are treated as
        queued ones (a call fails; a durable job stays QUEUED in the journal)."""
        for job, timer in self._backing_off.items():
            timer.cancel()
            job.abandoned(ShuttingDown("the server stopped before the call ran again"))
        self._backing_off.clear()

    async def _close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._stop_backoffs()
        while (job := self.queue.get_nowait()) is not None:
            job.abandoned(ShuttingDown("the server stopped before the call ran"))
        async with asyncio.TaskGroup() as tg:
            for worker in self.workers:
                if worker.process is None:
                    continue
                if worker.state in (WorkerState.IDLE, WorkerState.STARTING):
                    tg.create_task(worker.process.stop())  # EOF: it exits on its own
                else:
                    tg.create_task(worker.process.kill())  # busy past the grace


def _payload_size(job: Job) -> int:
    return len(job.payload)


def _progressed(job: Job, progress: Progress) -> None:
    job.progressed(progress.fraction, progress.message)


@contextlib.asynccontextmanager
async def open_pool(size: int, queue_size: int, max_queued_bytes: int) -> AsyncIterator[WorkerPool]:
    """Start the pool's slots; on exit stop every worker and leave none behind."""
    pool = WorkerPool(size, queue_size, max_queued_bytes)
    pool._cgroups = await open_slot_cgroups(size)
    pool._tasks = [asyncio.create_task(pool._serve(w), name=f"worker-{w.id}") for w in pool.workers]
    try:
        yield pool
    finally:
        await asyncio.shield(pool._close())
        if pool._cgroups is not None:
            await asyncio.shield(pool._cgroups.close())
