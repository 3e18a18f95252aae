"""Durable jobs: submit, look up, cancel, list, batches, recovery, expiry.

Live jobs (not yet finished) are kept in memory and journaled on every
change of state; finished ones are read back from the journal until
``--result-ttl`` passes. At start-up, what the journal says was QUEUED is
queued again, and what was RUNNING or INTERRUPTED has been interrupted by
the stop: it is re-queued if it has attempts left, else FAILED.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from pool_server.errors import (
    InvalidCall,
    JobInterrupted,
    JobNotFound,
    JournalUnavailable,
    QueueFull,
)
from pool_server.jobs import Job, new_job_id
from pool_server.journal import BatchCounts, Journal, JournalError
from pool_server.supervisor import WorkerPool
from pool_wire.names import JobState

log = logging.getLogger("pool_server.tracker")

# How often finished jobs past their TTL are deleted (at most; less for short TTLs).
EXPIRY_INTERVAL_S = 60.0

DEFAULT_LIST_LIMIT = 100


class JobTracker:
    def __init__(self, pool: WorkerPool, journal: Journal, result_ttl: float) -> None:
        self._pool = pool
        self._journal = journal
        self._result_ttl = result_ttl
        self._live: dict[str, Job] = {}

    def recover(self) -> None:
        """Queue again what the journal says was unfinished at the last stop."""
        expired = self._journal.expire(time.time() - self._result_ttl)
        requeued = failed = 0
        for job in self._journal.unfinished():
            self._track(job)
            if job.state is JobState.RUNNING:
                job.transition(JobState.INTERRUPTED)
            if job.state is JobState.INTERRUPTED:
                if not job.attempts_left:
                    job.error = JobInterrupted(
                        f"the server stopped while job {job.id} ran its last attempt "
                        f"({job.attempts} of {job.max_attempts})"
                    )
                    job.transition(JobState.FAILED)
                    failed += 1
                    continue
                job.transition(JobState.QUEUED)
            self._pool.queue.put_nowait(job)
            requeued += 1
        log.info(
            "journal %s: %d jobs queued again, %d failed (no attempts left), %d expired",
            self._journal.path,
            requeued,
            failed,
            expired,
        )

    def submit(
        self,
        payloads: list[bytes],
        *,
        retries: int,
        time_limit: float | None,
        batch_id: str,
        name: str,
        item_counts: list[int],
    ) -> list[Job]:
        """Journal and queue new jobs, all or none; never waits for room."""
        if not payloads or not all(payloads):
            raise InvalidCall("Submit needs at least one payload, and no empty payloads")
        if item_counts and (len(item_counts) != len(payloads) or min(item_counts) < 1):
            raise InvalidCall("item_counts needs one count of at least 1 per payload")
        if time_limit is not None and time_limit < 0:
            raise InvalidCall(f"time limit must be 0 (none) or more seconds, got {time_limit}")
        room = self._pool.queue.maxsize - len(self._pool.queue)
        if len(payloads) > room:
            raise QueueFull(
                f"{len(payloads)} jobs do not fit: the queue holds {len(self._pool.queue)} of "
                f"{self._pool.queue.maxsize}; submit fewer at a time, retry later, or start "
                "the server with a larger --queue-size"
            )
        jobs = [
            Job(
                payload,
                id=new_job_id(),
                durable=True,
                max_attempts=retries + 1,
                time_limit=time_limit,
                batch_id=batch_id,
                name=name,
                items=items,
            )
            for payload, items in zip(payloads, item_counts or [1] * len(payloads), strict=True)
        ]
        try:
            self._journal.add(jobs)
        except JournalError as e:
            raise JournalUnavailable(f"the jobs were not submitted: {e}") from e
        for job in jobs:
            self._track(job)
            self._pool.queue.put_nowait(job)
        return jobs

    def get(self, job_id: str) -> Job:
        job = self._live.get(job_id) or self._journal.get(job_id)
        if job is None:
            raise JobNotFound(
                f"no job {job_id!r} on this server: never submitted here, or finished more "
                "than --result-ttl ago"
            )
        return job

    def cancel(self, job_id: str) -> Job:
        job = self.get(job_id)
        self._pool.cancel(job)
        return job

    def list(self, state: JobState | None, batch_id: str, limit: int) -> list[Job]:
        jobs = self._journal.list(state, batch_id, limit or DEFAULT_LIST_LIMIT)
        return [self._live.get(job.id, job) for job in jobs]  # live ones carry progress

    def batch(self, batch_id: str) -> BatchCounts:
        counts = self._journal.batch(batch_id)
        if not counts.total:
            raise JobNotFound(f"no batch {batch_id!r} on this server")
        return counts

    async def watch(self, job_id: str) -> AsyncIterator[Job]:
        """The job now, then after every change, until it is finished."""
        job = self.get(job_id)
        while True:
            changed = job.next_change()
            yield job
            if job.state.finished:
                return
            await asyncio.shield(changed)  # shared by every watcher of this job

    async def expire_forever(self) -> None:
        interval = min(EXPIRY_INTERVAL_S, max(self._result_ttl / 2, 1.0))
        while True:
            await asyncio.sleep(interval)
            expired = self._journal.expire(time.time() - self._result_ttl)
            if expired:
                log.info("forgot %d jobs finished more than %.0f s ago", expired, self._result_ttl)

    def _track(self, job: Job) -> None:
        job.on_transition = self._journal_transition
        self._live[job.id] = job

    def _journal_transition(self, job: Job) -> None:
        try:
            self._journal.save(job)
        except JournalError as e:
            # The job goes on in memory: failing it, or the worker slot running
            # it, would lose more than the journal already has.
            log.error(
                "could not journal job %s becoming %s: %s; a restart now would not know it",
                job.id,
                job.state.value,
                e,
            )
        if job.state.finished:
            self._live.pop(job.id, None)
