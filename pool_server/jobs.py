"""Jobs: the server's record of one call, and the one state machine it follows.

::

    QUEUED ──> RUNNING ──> DONE | FAILED | TIMED_OUT | CANCELLED
      │           │
      │           └──> INTERRUPTED ──> QUEUED   (worker died, or a retry_on
      │                    │                     exception; attempts left)
      │                    └──> FAILED | CANCELLED
      └──> CANCELLED | FAILED (server stopped)

A job from ``Run`` lives as long as its RPC; a submitted job is *durable*:
the journal records every change of state, and it outlives the RPC that
submitted it. Both go through this one machine.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pool_server.errors import CallError
from pool_wire.names import JobState

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

    payload: bytes
    id: str = field(default_factory=new_call_id)
    durable: bool = False
    max_attempts: int = 1
    time_limit: float | None = None  # per attempt, while running
    batch_id: str = ""
    name: str = ""
    items: int = 1  # calls it carries: a map chunk carries many
    state: JobState = JobState.QUEUED
    attempts: int = 0
    worker_id: int = 0
    worker_pid: int = 0
    progress: float | None = None
    message: str = ""
    created_at: float = field(default_factory=time.time)
    started_at: float = 0.0
    finished_at: float = 0.0
    outcome: bytes | None = None  # the worker's answer, when there is one
    error: CallError | None = None  # why it finished without an outcome
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # Resolved by the next change a watcher may want to see (state,
    # progress); made only when someone watches, as most jobs are not.
    _next_change: asyncio.Future[None] | None = field(default=None, init=False, repr=False)
    # Called after every change of state: the journal, for durable jobs.
    on_transition: Callable[[Job], None] | None = None

    def __repr__(self) -> str:
        where = f" on worker {self.worker_id}" if self.state is JobState.RUNNING else ""
        return f"<Job {self.id} {self.state.value}{where} attempt {self.attempts}>"

    @property
    def attempts_left(self) -> bool:
        return self.attempts < self.max_attempts

    def transition(self, new: JobState) -> None:
        """Move to ``new`` (raising on an illegal move) and wake watchers."""
        if new not in TRANSITIONS[self.state]:
            raise IllegalJobTransition(f"{self!r}: {self.state.value} -> {new.value}")
        self.state = new
        if new is JobState.RUNNING:
            self.attempts += 1
            self.started_at = time.time()
            self.progress, self.message = None, ""
        elif new.finished:
            self.finished_at = time.time()
        if self.on_transition is not None:
            self.on_transition(self)  # journaled before anyone hears of it
        if new.finished and not self.done.done():
            self.done.set_result(None)
        self.notify()

    def next_change(self) -> asyncio.Future[None]:
        """A future resolved by the job's next change of state or progress."""
        if self._next_change is None:
            self._next_change = asyncio.get_running_loop().create_future()
        return self._next_change

    def notify(self) -> None:
        if self._next_change is not None:
            self._next_change.set_result(None)
            self._next_change = None
