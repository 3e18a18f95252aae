"""Jobs: the server's record of one call, and the one place its life is decided.

::

    QUEUED ──> RUNNING ──> DONE | FAILED | TIMED_OUT | CANCELLED
      │           │
      │           └──> INTERRUPTED ──> QUEUED   (worker died, or a retry_on
      │                    │                     exception; attempts left)
      │                    └──> FAILED | CANCELLED
      └──> CANCELLED | FAILED (server stopped)

The supervisor and the tracker never move a job themselves: they tell it
what happened (:meth:`Job.start`, :meth:`Job.answered`, :meth:`Job.crashed`,
:meth:`Job.timed_out`, :meth:`Job.cancel`, :meth:`Job.interrupted`,
:meth:`Job.abandoned`), and the job decides, by the table below, what
follows: queued again while attempts are left, or finished. Every change
of state is announced to the job's listeners (the journal for durable
jobs; metrics next) as a :class:`JobChange`.

A job from ``Run`` lives as long as its RPC; a submitted job is *durable*:
the journal records its changes, and it outlives the RPC that submitted it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pool_server.errors import CallError, JobCancelled, JobInterrupted, JobTimedOut
from pool_server.events import Listeners
from pool_server.job_logs import JobLog
from pool_wire.limits import MAX_ERROR_SUMMARY_CHARS, MAX_PROGRESS_MESSAGE_CHARS
from pool_wire.names import JobState
from pool_wire.protocol import ResultStatus

log = logging.getLogger("pool_server.jobs")

# After its worker dies, a job with attempts left waits this long before it
# is queued again, doubling with each crash up to the maximum: a function
# that always crashes then costs a worker restart every 10 s, not hundreds a
# second (679 in 20 s before, issue 9), while one that crashed by bad luck
# is back within a tenth of a second. The wait holds no worker slot.
CRASH_BACKOFF_MIN_S = 0.1
CRASH_BACKOFF_MAX_S = 10.0

# The owner of jobs from before owners were recorded, and of every job when
# the server runs without tokens (--auth none).
DEFAULT_OWNER = "default"

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset(
        {
            JobState.DONE,
            JobState.FAILED,
            JobState.TIMED_OUT,
            JobState.CANCELLED,
            JobState.INTERRUPTED,
        }
    ),
    JobState.INTERRUPTED: frozenset({JobState.QUEUED, JobState.FAILED, JobState.CANCELLED}),
    JobState.DONE: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.TIMED_OUT: frozenset(),
}


class IllegalJobTransition(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class JobChange:
    """A job moved from ``old`` to its current state."""

    job: Job
    old: JobState


_call_ids = itertools.count(1)


def new_call_id() -> str:
    """Ids of RPC-bound calls: cheap, unique within this server's life."""
    return f"r{next(_call_ids)}"


def new_job_id() -> str:
    """Ids of durable jobs: unique across restarts."""
    return f"j{secrets.token_hex(8)}"


@dataclass(eq=False)
class Job:
    """One call. ``done`` resolves when the job reaches a finished state."""

    payload: bytes | bytearray  # bytearray: put together from RunChunked's pieces
    id: str = field(default_factory=new_call_id)
    durable: bool = False
    max_attempts: int = 1
    time_limit: float | None = None  # per attempt, while running
    batch_id: str = ""
    name: str = ""
    items: int = 1  # calls it carries: a map chunk carries many
    item_offset: int = 0  # where its first call stands in its batch's input
    owner: str = DEFAULT_OWNER  # the name of the token that submitted it
    # The pickled function, when it travels beside the payload (which then
    # names it by function_hash): handed to each worker that lacks it.
    function: bytes | None = None
    function_hash: str = ""
    # (key, pickled bytes) of the stored objects the payload refers to
    # (pool_server.objects): handed to each worker that lacks them.
    objects: tuple[tuple[str, bytes], ...] = ()
    state: JobState = JobState.QUEUED
    attempts: int = 0
    crashes: int = 0  # of its workers, in this server's life (for the backoff)
    worker_id: int = 0
    worker_pid: int = 0
    progress: float | None = None
    message: str = ""
    created_at: float = field(default_factory=time.time)
    started_at: float = 0.0
    finished_at: float = 0.0
    outcome: bytes | None = None  # the worker's answer, when there is one
    error: CallError | None = None  # why it finished without an outcome
    # A FAILED outcome's exception as text ("ValueError: bad input"), as its
    # worker summed it up: the server never unpickles the outcome itself.
    raised: str = ""
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Told of every change of state; None for a job nobody observes.
    listeners: Listeners[JobChange] | None = field(default=None, repr=False)
    # Resolved by the next change a watcher may want to see (state,
    # progress); made only when someone watches, as most jobs are not.
    _next_change: asyncio.Future[None] | None = field(default=None, init=False, repr=False)
    # Told of each progress report: a call on a Calls stream passes it on.
    on_progress: Callable[[Job], None] | None = field(default=None, repr=False)
    # The tail of a durable job's output while it runs (job_logs); None
    # until it prints or is followed, and again once it finishes.
    log: JobLog | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        where = f" on worker {self.worker_id}" if self.state is JobState.RUNNING else ""
        return f"<Job {self.id} {self.state.value}{where} attempt {self.attempts}>"

    @property
    def error_text(self) -> str:
        """Why it failed, for status views: its error, or its exception's summary."""
        return str(self.error) if self.error is not None else self.raised

    @property
    def attempts_left(self) -> bool:
        return self.attempts < self.max_attempts

    @property
    def crash_backoff(self) -> float:
        """How long to wait, after its latest crash, before queueing it again."""
        if not self.crashes:
            return 0.0
        return min(CRASH_BACKOFF_MIN_S * 2.0 ** (self.crashes - 1), CRASH_BACKOFF_MAX_S)

    # What happened to the job; each decides what follows.

    def start(self, worker_id: int, worker_pid: int) -> None:
        """An idle worker took the job: a new attempt begins."""
        self.worker_id, self.worker_pid = worker_id, worker_pid
        self._move(JobState.RUNNING)

    def answered(self, status: ResultStatus, outcome: bytes, raised: str = "") -> bool:
        """Its worker answered: DONE, FAILED, or (an exception listed in
        retry_on, with attempts left) queued again. True: put it back in the
        queue. ``raised`` sums up the exception of a failed call."""
        if self.state.finished:  # cancelled just as the answer came
            return False
        if status is ResultStatus.RETRY and self.attempts_left:
            return self._try_again("it raised an exception listed in retry_on")
        self.outcome = outcome
        self.raised = raised[:MAX_ERROR_SUMMARY_CHARS]
        self._move(JobState.DONE if status is ResultStatus.OK else JobState.FAILED)
        return False

    def crashed(self, error: CallError) -> bool:
        """Its worker died running it: queued again while attempts are left
        (True: put it back in the queue after :attr:`crash_backoff`), else
        FAILED with ``error``."""
        if self.state.finished:
            return False
        self.crashes += 1
        if self.attempts_left:
            return self._try_again(str(error))
        self.error = error
        self._move(JobState.FAILED)
        return False

    def timed_out(self) -> None:
        """It ran past its time limit (its worker is being replaced)."""
        if self.state.finished:
            return
        self.error = JobTimedOut(
            f"job {self.id} ran past its {self.time_limit or 0:.3g} s time limit on worker "
            f"{self.worker_id}; the worker was stopped and replaced"
        )
        log.warning("%s", self.error)
        self._move(JobState.TIMED_OUT)

    def cancel(self, error: CallError | None = None) -> None:
        """Finish it as CANCELLED, whatever it was doing; a no-op once finished.
        A running job's consumer sees it finish and stops the worker."""
        if self.state.finished:
            return
        self.error = error or JobCancelled(f"job {self.id} was cancelled")
        self._move(JobState.CANCELLED)

    def interrupted(self) -> bool:
        """Found unfinished in the journal at start-up: an attempt that was
        running when the server stopped is over. True: queue it (again)."""
        if self.state is JobState.RUNNING:
            self._move(JobState.INTERRUPTED)
        if self.state is JobState.QUEUED:
            return True
        if self.attempts_left:
            self._move(JobState.QUEUED)
            return True
        self.error = JobInterrupted(
            f"the server stopped while job {self.id} ran its last attempt "
            f"({self.attempts} of {self.max_attempts})"
        )
        self._move(JobState.FAILED)
        return False

    def abandoned(self, error: CallError) -> None:
        """The server stops before the job finished. A call fails with
        ``error``; a durable job is left as the journal has it (QUEUED, or
        RUNNING and so interrupted) for the next start."""
        if not self.durable:
            self.cancel(error)

    def failed(self, error: CallError) -> None:
        """Finish it as FAILED without an outcome (an internal error)."""
        if self.state.finished:
            return
        self.error = error
        self._move(JobState.FAILED)

    def _try_again(self, why: str) -> bool:
        log.info(
            "job %s attempt %d of %d interrupted (%s); queued again",
            self.id,
            self.attempts,
            self.max_attempts,
            why,
        )
        self.outcome = self.error = None  # this attempt's answer is not the job's
        self._move(JobState.INTERRUPTED)
        self._move(JobState.QUEUED)
        return True

    def _move(self, new: JobState) -> None:
        """Move to ``new`` (raising on an illegal move), then tell listeners and waiters."""
        old = self.state
        if new not in TRANSITIONS[old]:
            raise IllegalJobTransition(f"{self!r}: {old.value} -> {new.value}")
        self.state = new
        if new is JobState.RUNNING:
            self.attempts += 1
            self.started_at = time.time()
            self.progress, self.message = None, ""
        elif new.finished:
            self.finished_at = time.time()
            if self.log is not None:
                self.log.finish()
                self.log = None
        if self.listeners is not None:
            self.listeners.announce(JobChange(self, old))
        if new.finished and not self.done.done():
            self.done.set_result(None)
        self.notify()

    def progressed(self, fraction: float | None, message: str) -> None:
        """The function reported progress (not a change of state); a long
        message is cut, as it is kept and listed with the job."""
        self.progress, self.message = fraction, message[:MAX_PROGRESS_MESSAGE_CHARS]
        self.notify()
        if self.on_progress is not None:
            self.on_progress(self)

    def printed(self, text: str, skipped: int) -> None:
        """The running function printed ``text`` (after ``skipped``
        characters left out): kept for followers of a durable job, whose id
        they can name (a call's output comes back with it, and only then)."""
        if self.durable and not self.state.finished:
            self.output_log().add(text, skipped)

    def output_log(self) -> JobLog:
        """The log of this unfinished job, made on first use."""
        if self.log is None:
            self.log = JobLog()
        return self.log

    def next_change(self) -> asyncio.Future[None]:
        """A future resolved by the job's next change of state or progress."""
        if self._next_change is None:
            self._next_change = asyncio.get_running_loop().create_future()
        return self._next_change

    def notify(self) -> None:
        if self._next_change is not None:
            self._next_change.set_result(None)
            self._next_change = None
