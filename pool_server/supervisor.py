"""The worker pool: slots, each a small state machine fed from one queue.

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

A worker that still works is also replaced between calls when the pool's
:class:`~pool_server.recycling.RecyclePolicy` says so (after so many calls,
or past a memory limit), and killed when it passes the hard memory limit.
How many slots there are is the :class:`~pool_server.scaling.Autoscaler`'s
decision: it adds slots, and dismisses idle ones, which end their worker
and leave the pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pool_server.cgroup import SlotCgroups, open_slot_cgroups
from pool_server.errors import CallError, ShuttingDown, WorkerCrashed
from pool_server.events import Listeners
from pool_server.jobs import Job, JobChange
from pool_server.process import WorkerDied, WorkerProcess, WorkerStartError
from pool_server.procfs import rss_bytes
from pool_server.queue import JobQueue
from pool_server.recycling import NO_LOOP_FRACTION, RSS_SAMPLE_S, ExitReason, RecyclePolicy
from pool_server.scaling import DEFAULT_SCALE_DOWN_DELAY_S, Autoscaler, WorkerLimits
from pool_server.sizes import format_size
from pool_wire.names import JobState, WorkerState
from pool_wire.protocol import Output, Progress

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
    """One slot of the pool; its process is replaced when it dies or is
    recycled, and the slot leaves the pool once dismissed."""

    id: int
    state: WorkerState = WorkerState.DEAD
    process: WorkerProcess | None = None
    job: Job | None = None  # the job it is running
    jobs_done: int = 0
    restarts: int = 0  # processes replaced for anything but recycling
    recycles: int = 0  # processes replaced by the recycling policy
    last_exit_reason: ExitReason | None = None  # why the last process went
    dismissed: bool = False  # scaled down: ends its worker and leaves the pool
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: Listeners[WorkerChange] | None = field(default=None, repr=False)
    # The current process's recycling budget: calls left, and the RSS past
    # which it is replaced after a call.
    tasks_left: int | None = field(default=None, repr=False)
    memory_threshold: int | None = field(default=None, repr=False)
    # Done when the idle worker should stop waiting for a job: its process
    # went, or the slot was dismissed.
    leave: asyncio.Future[None] | None = field(default=None, repr=False)

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
    """Worker slots, between the autoscaler's limits, consuming one bounded
    job queue.

    Jobs made for this pool carry its ``job_listeners``; its slots announce
    their changes to ``worker_listeners``. ``workers`` holds every slot,
    dismissed ones until their worker is gone, in id order.
    """

    def __init__(
        self,
        limits: WorkerLimits,
        queue_size: int,
        max_queued_bytes: int,
        recycling: RecyclePolicy | None = None,
        scale_down_delay: float = DEFAULT_SCALE_DOWN_DELAY_S,
        workdir: Path | None = None,
    ) -> None:
        self.workdir = workdir  # the workers' working directory; None: the server's
        self.job_listeners: Listeners[JobChange] = Listeners("jobs")
        self.worker_listeners: Listeners[WorkerChange] = Listeners("workers")
        self.workers: list[Worker] = []
        self.queue: JobQueue[Job] = JobQueue(queue_size, max_queued_bytes, _payload_size)
        self.recycling = recycling or RecyclePolicy()
        self.autoscaler = Autoscaler(self, limits, scale_down_delay)
        # Jobs waiting out their crash backoff before they are queued again.
        self._backing_off: dict[Job, asyncio.TimerHandle] = {}
        self._slot_tasks: dict[Worker, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []  # the autoscaler and the memory watch
        self._cgroups: SlotCgroups | None = None  # set by open_pool; None: process groups only
        self._draining = asyncio.Event()  # set: take no new jobs

    def __repr__(self) -> str:
        return f"<WorkerPool workers={self.workers!r} queue={self.queue!r}>"

    @property
    def draining(self) -> bool:
        """True once :meth:`shut_down` began: no new jobs, no new slots."""
        return self._draining.is_set()

    async def wait_ready(self) -> None:
        """Wait until every slot there is now has had a worker say READY once."""
        for worker in list(self.workers):
            await worker.ready.wait()

    async def submit(self, job: Job) -> None:
        """Queue ``job``, waiting for room while the queue is full."""
        await self.queue.put(job)
        if len(self.workers) < self.autoscaler.limits.max:  # a fixed pool pays nothing
            self.autoscaler.wake()

    def serving_slots(self) -> list[Worker]:
        """The slots not dismissed: what the pool's size counts."""
        return [w for w in self.workers if not w.dismissed]

    def add_slot(self) -> Worker:
        """A new slot with the lowest free id, starting its first worker."""
        used = {w.id for w in self.workers}
        worker_id = next(i for i in itertools.count(1) if i not in used)
        worker = Worker(id=worker_id, listeners=self.worker_listeners)
        self.workers.append(worker)
        self.workers.sort(key=lambda w: w.id)
        task = asyncio.create_task(self._serve(worker), name=f"worker-{worker_id}")
        self._slot_tasks[worker] = task
        return worker

    def dismiss(self, worker: Worker) -> None:
        """Scale ``worker``'s slot down: it ends its worker once idle (at
        once if it is) and leaves the pool."""
        if worker.dismissed:
            return
        log.info("worker %d dismissed: the pool is above its target", worker.id)
        worker.dismissed = True
        if worker.leave is not None and not worker.leave.done():
            worker.leave.set_result(None)

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
        why = "a second signal" if hurry.is_set() else f"--grace {grace_s:g} s"
        for worker in self.workers:
            if worker.job is not None:
                message = f"the server stopped before the call finished ({why})"
                worker.job.abandoned(ShuttingDown(message))

    def cancel(self, job: Job, error: CallError | None = None) -> None:
        """Cancel ``job``: dropped if queued; if it runs, its consumer sees it
        finish and stops the worker. A no-op once finished."""
        if not job.state.finished:
            self.queue.discard(job)
            job.cancel(error)

    async def _serve(self, worker: Worker) -> None:
        """Keep one slot staffed: start a worker, feed it, replace it, until
        the slot is dismissed; then it leaves the pool."""
        try:
            await self._staff(worker)
        finally:
            if worker in self._slot_tasks and worker.dismissed:
                self.workers.remove(worker)
                del self._slot_tasks[worker]

    async def _staff(self, worker: Worker) -> None:
        delay = RESTART_BACKOFF_MIN_S
        while not worker.dismissed:
            process = await self._start(worker)
            if process is None:  # dismissed before it started
                return
            started = time.monotonic()
            died_idle = await self._run_until_replaced(worker, process)
            worker.job = None
            reason = worker.last_exit_reason
            if reason is ExitReason.SCALED_DOWN:
                return
            if reason is not None and reason.recycled:
                worker.recycles += 1
            else:
                worker.restarts += 1
            if died_idle and time.monotonic() - started < HEALTHY_AFTER_S:
                # Dying with no job to blame is the environment's doing (memory
                # pressure, a broken site module, imports alone past the hard
                # memory limit): back off as for failed starts.
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
        loop = asyncio.get_running_loop()
        leave: asyncio.Future[None] = loop.create_future()
        worker.leave = leave
        if worker.dismissed:
            leave.set_result(None)
        process.gone.add_done_callback(functools.partial(_settle, leave))
        try:
            died_idle = await self._run_jobs(worker, process)
        except asyncio.CancelledError:
            if worker.job is not None:
                worker.job.abandoned(ShuttingDown("the server stopped while the call ran"))
            raise
        except Exception as e:
            log.exception("supervisor error on %r; replacing its worker", worker)
            worker.last_exit_reason = ExitReason.INTERNAL
            if worker.job is not None:
                worker.job.failed(CallError(f"internal error in the pool-server supervisor: {e!r}"))
            if worker.state in (WorkerState.IDLE, WorkerState.BUSY):
                _set_state(worker, WorkerState.STOPPING)
            await process.kill()
        if worker.state is WorkerState.STOPPING:
            _set_state(worker, WorkerState.DEAD)
        return died_idle

    async def _start(self, worker: Worker) -> WorkerProcess | None:
        """The slot's next worker, once READY; None if the slot is dismissed
        while starts fail."""
        delay = RESTART_BACKOFF_MIN_S
        while not worker.dismissed:
            _set_state(worker, WorkerState.STARTING)
            try:
                worker.process = await WorkerProcess.start(worker.id, self._cgroups, self.workdir)
            except WorkerStartError as e:
                _set_state(worker, WorkerState.DEAD)
                log.error("worker %d failed to start: %s; retrying in %.1f s", worker.id, e, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RESTART_BACKOFF_MAX_S)
                continue
            log.debug("worker %d ready (pid %d)", worker.id, worker.pid)
            self._set_budget(worker, worker.process)
            _set_state(worker, WorkerState.IDLE)
            worker.ready.set()
            return worker.process
        return None

    def _set_budget(self, worker: Worker, process: WorkerProcess) -> None:
        """What the new process may run and grow to before it is recycled."""
        policy = self.recycling
        start_rss = rss_bytes(process.pid) or 0
        worker.tasks_left = policy.task_budget()
        worker.memory_threshold = policy.memory_threshold(start_rss)
        if policy.max_rss is not None and start_rss >= NO_LOOP_FRACTION * policy.max_rss:
            log.warning(
                "worker %d (pid %d) starts at RSS %s, over %.0f%% of --worker-max-rss %s: "
                "kept, and recycled for memory only past %s",
                worker.id,
                process.pid,
                format_size(start_rss),
                NO_LOOP_FRACTION * 100,
                format_size(policy.max_rss),
                format_size(worker.memory_threshold or 0),
            )

    async def _run_jobs(self, worker: Worker, process: WorkerProcess) -> bool:
        """Feed jobs to one process until it has to be replaced; True if it
        died while idle."""
        while True:
            if self._draining.is_set():
                await asyncio.Future()  # parked until the pool closes and cancels us
            job = await self._next_job(worker, process)
            if job is not None and self._draining.is_set():
                self.queue.requeue(job)
                continue
            if job is None and not process.gone.done():  # dismissed
                worker.last_exit_reason = ExitReason.SCALED_DOWN
                _set_state(worker, WorkerState.STOPPING)
                await process.stop()
                return False
            if job is None:
                how = process.describe_exit(await process.exit_code())
                log.warning("worker %d (pid %d) %s while idle", worker.id, process.pid, how)
                worker.last_exit_reason = _death_reason(process, ExitReason.DIED_IDLE)
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
            printed = functools.partial(_printed, job) if job.durable else None
            sent = await process.send(
                job.id,
                job.payload,
                progressed,
                job.function,
                job.function_hash,
                objects=job.objects,
                on_output=printed,
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
            worker.last_exit_reason = (
                ExitReason.CANCEL if job.state.finished else ExitReason.DEADLINE
            )
            job.timed_out()  # unless it was cancelled
            await process.kill()
            return False
        if job.answered(reply.status, reply.outcome, process.raised):
            self.queue.requeue(job)
        worker.jobs_done += 1
        worker.job = None
        reason = self._replace_after_call(worker, process)
        if reason is not None:  # its call is answered; now it goes
            worker.last_exit_reason = reason
            _set_state(worker, WorkerState.STOPPING)
            await process.stop()
            return False
        _set_state(worker, WorkerState.IDLE)
        return True

    def _replace_after_call(self, worker: Worker, process: WorkerProcess) -> ExitReason | None:
        """Why the worker must go now that its call is answered, if it must."""
        if process.retiring is not None:  # the call left it unfit; it exits by itself
            return ExitReason.UNFIT
        if worker.dismissed:
            return ExitReason.SCALED_DOWN
        if worker.tasks_left is not None:
            worker.tasks_left -= 1
            if worker.tasks_left <= 0:
                log.info(
                    "worker %d (pid %d) recycled after %d calls (--max-tasks-per-worker)",
                    worker.id,
                    process.pid,
                    self.recycling.max_tasks,
                )
                return ExitReason.RECYCLED_TASKS
        if worker.memory_threshold is not None:
            rss = rss_bytes(process.pid)
            if rss is not None and rss > worker.memory_threshold:
                log.info(
                    "worker %d (pid %d) recycled for memory: RSS %s after a call, past %s "
                    "(--worker-max-rss)",
                    worker.id,
                    process.pid,
                    format_size(rss),
                    format_size(worker.memory_threshold),
                )
                return ExitReason.RECYCLED_MEMORY
        return None

    async def _next_job(self, worker: Worker, process: WorkerProcess) -> Job | None:
        """The next job, or ``None`` if the idle worker died or its slot was
        dismissed while it waited."""
        leave = worker.leave
        assert leave is not None
        if leave.done():
            return None
        job = await self.queue.get(until=leave)
        if job is not None and leave.done():  # it died (or was dismissed) just as the job came
            self.queue.requeue(job)
            return None
        return job

    async def _watch_memory(self, limit: int) -> None:
        """Kill any worker whose RSS passes the hard limit, every RSS_SAMPLE_S."""
        while True:
            await asyncio.sleep(RSS_SAMPLE_S)
            for worker in self.workers:
                if worker.process is None or not worker.pid:
                    continue
                rss = rss_bytes(worker.pid)
                if rss is not None and rss > limit:
                    worker.process.kill_for_memory(
                        f"its RSS {format_size(rss)} passed --worker-rss-limit {format_size(limit)}"
                    )

    async def _crashed(self, worker: Worker, process: WorkerProcess, job: Job) -> None:
        code = await process.exit_code()
        how = process.describe_exit(code)
        worker.last_exit_reason = _death_reason(process, ExitReason.CRASH)
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
        tasks = [*self._tasks, *self._slot_tasks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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


def _settle(future: asyncio.Future[None], _: object) -> None:
    if not future.done():
        future.set_result(None)


def _death_reason(process: WorkerProcess, otherwise: ExitReason) -> ExitReason:
    """Why a worker that died went: killed for memory, for breaking the
    protocol, or ``otherwise``."""
    if process.memory_kill is not None:
        return ExitReason.MEMORY_LIMIT
    if process.protocol_error is not None:
        return ExitReason.PROTOCOL
    return otherwise


def _payload_size(job: Job) -> int:
    return len(job.payload)


def _progressed(job: Job, progress: Progress) -> None:
    job.progressed(progress.fraction, progress.message)


def _printed(job: Job, output: Output) -> None:
    job.printed(output.text, output.skipped)


@contextlib.asynccontextmanager
async def open_pool(
    limits: WorkerLimits,
    queue_size: int,
    max_queued_bytes: int,
    recycling: RecyclePolicy | None = None,
    scale_down_delay: float = DEFAULT_SCALE_DOWN_DELAY_S,
    workdir: Path | None = None,
) -> AsyncIterator[WorkerPool]:
    """Start the pool's first ``limits.min`` slots, its autoscaler and, with
    a hard memory limit, its memory watch; on exit stop every worker and
    leave none behind."""
    pool = WorkerPool(limits, queue_size, max_queued_bytes, recycling, scale_down_delay, workdir)
    pool._cgroups = await open_slot_cgroups(limits.max)
    for _ in range(limits.min):
        pool.add_slot()
    pool._tasks.append(asyncio.create_task(pool.autoscaler.run(), name="autoscaler"))
    if pool.recycling.rss_limit is not None:
        watch = pool._watch_memory(pool.recycling.rss_limit)
        pool._tasks.append(asyncio.create_task(watch, name="memory-watch"))
    try:
        yield pool
    finally:
        await asyncio.shield(pool._close())
        if pool._cgroups is not None:
            await asyncio.shield(pool._cgroups.close())
