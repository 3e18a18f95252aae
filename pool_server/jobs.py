"""The server's record of one call while it waits, runs and is answered."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

_job_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class JobResult:
    outcome: bytes  # pickled CallOutcome from the worker, passed on unread
    worker_id: int
    worker_pid: int


@dataclass(eq=False)
class Job:
    """One call. ``result`` is completed by the supervisor, or cancelled by
    the caller when it stops waiting (which tells the supervisor to stop the
    worker running it)."""

    payload: bytes
    id: int = field(default_factory=lambda: next(_job_ids))
    result: asyncio.Future[JobResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    worker_id: int | None = None  # set when a worker takes the job

    def __repr__(self) -> str:
        where = "queued" if self.worker_id is None else f"on worker {self.worker_id}"
        return f"<Job {self.id} {where} {len(self.payload)} bytes>"
