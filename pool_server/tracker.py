"""Durable jobs: submit, look up, cancel, list, batches, recovery, expiry.

Live jobs (not yet finished, or finished but not yet journaled as such) are
kept in memory; the tracker listens to every job's changes and hands those
of durable jobs to the journal's writer thread. Finished, journaled jobs
are read back from the journal until ``--result-ttl`` passes. At start-up,
each unfinished job in the journal is told it was interrupted
(:meth:`Job.interrupted`) and decides whether it runs again.

Every journal error reaches the caller as :class:`JournalUnavailable`, a
gRPC status whose message says what to do.

Each job records its owner, the name of the token that submitted it. A
caller that is not an admin lists, reads, watches and cancels only its own
jobs; another's job or batch answers as not found, exactly as one that
never existed, so that ids cannot be probed (issue 9, "Who sees what").
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncGenerator, Awaitable
from typing import TypeVar

from pool_server.auth import Caller
from pool_server.errors import InvalidCall, JobNotFound, JournalUnavailable, QueueFull
from pool_server.jobs import Job, JobChange, new_job_id
from pool_server.journal import BatchCounts, JournalError
from pool_server.journal_writer import JournalWriter
from pool_server.supervisor import WorkerPool
from pool_wire.limits import MAX_ITEMS_PER_JOB, brief
from pool_wire.names import JobState

log = logging.getLogger("pool_server.tracker")

# How often finished jobs past their TTL are deleted (at most; less for short TTLs).
EXPIRY_INTERVAL_S = 60.0

DEFAULT_LIST_LIMIT = 100

T = TypeVar("T")


class JobTracker:
    def __init__(self, pool: WorkerPool, journal: JournalWriter, result_ttl: float) -> None:
        self._pool = pool
        self._journal = journal
        self._result_ttl = result_ttl
        self._live: dict[str, Job] = {}
        self._reserved = 0  # queue places held by submits waiting for their commit
        self._reserved_bytes = 0  # and the bytes of their payloads
        # Finished jobs whose end is not journaled yet: resolved once it is,
        # or once journaling it failed (the job is then answered from memory).
        self._unsettled: dict[str, asyncio.Future[None]] = {}
        pool.job_listeners.add(self._journal_change)
        journal.on_commit = self._journaled

    async def recover(self) -> None:
        """Queue again what the journal says was unfinished at the last stop.

        Raises :class:`JournalError` if the journal cannot be read.
        """
        expired = await self._journal.expire(time.time() - self._result_ttl)
        requeued = failed = 0
        for job in await self._journal.unfinished():
            job.listeners = self._pool.job_listeners
            self._live[job.id] = job
            if job.interrupted():
                self._pool.queue.put_nowait(job)
                requeued += 1
            else:
                failed += 1
        log.info(
            "journal %s: %d jobs queued again, %d failed (no attempts left), %d expired",
            self._journal.path,
            requeued,
            failed,
            expired,
        )

    async def submit(
        self,
        payloads: list[bytes],
        *,
        owner: str,
        retries: int,
        time_limit: float | None,
        batch_id: str,
        name: str,
        item_counts: list[int],
        item_offsets: list[int] | None = None,
        function: bytes | None = None,
        function_hash: str = "",
    ) -> list[Job]:
        """Journal and queue new jobs, all or none; never waits for room.

        ``owner`` is the submitting caller's name; the other fields are
        checked by the service, bar how payloads and item counts fit together.
        The payloads may name their function by ``function_hash``, its bytes
        being ``function`` (checked by the service too).
        """
        if not payloads or not all(payloads):
            raise InvalidCall("Submit needs at least one payload, and no empty payloads")
        _check_item_counts(item_counts, len(payloads))
        offsets = item_offsets or [0] * len(payloads)
        if len(offsets) != len(payloads) or max(offsets) >= 2**63:
            raise InvalidCall("item_offsets needs one offset (below 2**63) per payload, or none")
        if time_limit is not None and time_limit < 0:
            raise InvalidCall(f"time limit must be 0 (none) or more seconds, got {time_limit}")
        self._check_room(payloads)
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
                item_offset=offset,
                owner=owner,
                listeners=self._pool.job_listeners,
                function=function,
                function_hash=function_hash,
            )
            for payload, items, offset in zip(
                payloads, item_counts or [1] * len(payloads), offsets, strict=True
            )
        ]
        # Once committed the jobs must be queued, even if the caller has gone.
        size = sum(len(payload) for payload in payloads)
        self._reserved += len(jobs)
        self._reserved_bytes += size
        await asyncio.shield(asyncio.ensure_future(self._admit(jobs, size)))
        return jobs

    def _check_room(self, payloads: list[bytes]) -> None:
        """Refuse a submit the queue has no room for, in jobs or in bytes
        (with what is already promised to submits waiting for their commit).
        A queue with nothing in it or promised takes any one submit, however
        large: it is in memory already, and could otherwise never run."""
        queue = self._pool.queue
        if len(payloads) > queue.maxsize - len(queue) - self._reserved:
            raise QueueFull(
                f"{len(payloads)} jobs do not fit: the queue holds {len(queue)} of "
                f"{queue.maxsize}; submit fewer at a time, retry later, or start "
                "the server with a larger --queue-size"
            )
        size = sum(len(payload) for payload in payloads)
        queued = queue.bytes + self._reserved_bytes
        if queued and queued + size > queue.max_bytes:
            raise QueueFull(
                f"{size} bytes of payloads do not fit: the queue holds {queued} of its "
                f"{queue.max_bytes} bytes (--max-queued-bytes); submit less at a time, "
                "retry later, or start the server with a larger --max-queued-bytes"
            )

    async def _admit(self, jobs: list[Job], size: int) -> None:
        try:
            await self._journal.add(jobs)
        except JournalError as e:
            raise JournalUnavailable(f"the jobs were not submitted: {e}") from e
        finally:
            self._reserved -= len(jobs)
            self._reserved_bytes -= size
        for job in jobs:
            self._live[job.id] = job
            self._pool.queue.put_nowait(job)

    async def get(self, job_id: str, caller: Caller) -> Job:
        """The job, if ``caller`` may see it; else :class:`JobNotFound`, the
        same as for a job that does not exist."""
        job = self._live.get(job_id)
        if job is None:
            job = await _translated(self._journal.get(job_id))
        if job is None or not caller.may_see(job.owner):
            raise JobNotFound(
                f"no job {brief(job_id)} on this server: never submitted here (with this "
                "token), or finished more than --result-ttl ago"
            )
        return job

    async def settled(self, job: Job) -> None:
        """Wait until a finished job's end is journaled (or failed to be: then
        it is kept in memory, retried, and answered from there)."""
        pending = self._unsettled.get(job.id)
        if pending is not None:
            await asyncio.shield(pending)

    async def cancel(self, job_id: str, caller: Caller) -> Job:
        job = await self.get(job_id, caller)
        self._pool.cancel(job)
        return job

    async def list_jobs(
        self, state: JobState | None, batch_id: str, limit: int, caller: Caller
    ) -> list[Job]:
        """Newest first: every job for an admin, the caller's own for others."""
        owner = None if caller.admin else caller.name
        jobs = await _translated(
            self._journal.list_jobs(state, batch_id, limit or DEFAULT_LIST_LIMIT, owner)
        )
        return [self._live.get(job.id, job) for job in jobs]  # live ones carry progress

    async def batch(self, batch_id: str, caller: Caller) -> BatchCounts:
        """The batch's calls per state; a caller that is not an admin counts
        only its own jobs in it."""
        owner = None if caller.admin else caller.name
        counts = await _translated(self._journal.batch(batch_id, owner))
        if not counts.total:
            raise JobNotFound(f"no batch {brief(batch_id)} on this server")
        return counts

    async def cancel_batch(self, batch_id: str, caller: Caller) -> BatchCounts:
        """Cancel every unfinished job of the batch that ``caller`` may see
        (issue 15: a durable map left running by a client that went away);
        the batch's counts once those ends are journaled."""
        await self.batch(batch_id, caller)  # JobNotFound, as for GetBatch
        cancelled = [
            job
            for job in list(self._live.values())
            if job.batch_id == batch_id and caller.may_see(job.owner) and not job.state.finished
        ]
        for job in cancelled:
            self._pool.cancel(job)
        for job in cancelled:
            await self.settled(job)
        return await self.batch(batch_id, caller)

    def live(self) -> list[Job]:
        """The durable jobs held in memory (unfinished, or finished and not
        yet journaled as such), oldest first: for metrics and the dashboard."""
        return list(self._live.values())

    def counts(self) -> collections.Counter[JobState]:
        """How many jobs :meth:`live` holds in each state."""
        return collections.Counter(job.state for job in self._live.values())

    async def watch(self, job_id: str, caller: Caller) -> AsyncGenerator[Job, None]:
        """The job now, then after every change, until it is finished."""
        job = await self.get(job_id, caller)
        while True:
            changed = job.next_change()
            yield job
            if job.state.finished:
                return
            await asyncio.shield(changed)  # shared by every watcher of this job

    async def expire_forever(self) -> None:
        """Delete finished jobs past their TTL now and then; an error is logged
        and the next round tries again."""
        interval = min(EXPIRY_INTERVAL_S, max(self._result_ttl / 2, 1.0))
        while True:
            await asyncio.sleep(interval)
            try:
                expired = await self._journal.expire(time.time() - self._result_ttl)
            except JournalError as e:
                log.error("expiring old jobs failed; trying again in %.0f s: %s", interval, e)
                continue
            except Exception:
                log.exception("expiring old jobs failed; trying again in %.0f s", interval)
                continue
            if expired:
                log.info("forgot %d jobs finished more than %.0f s ago", expired, self._result_ttl)

    def _journal_change(self, change: JobChange) -> None:
        job = change.job
        if not job.durable:
            return
        self._journal.save(job)
        if job.state.finished and job.id not in self._unsettled:
            self._unsettled[job.id] = asyncio.get_running_loop().create_future()

    def _journaled(self, committed: list[tuple[str, JobState]], failed: list[str]) -> None:
        """The journal writer's report: finished jobs journaled as such leave
        memory; waiters on those that failed are answered from memory."""
        for job_id, state in committed:
            if state.finished:
                self._live.pop(job_id, None)
                _resolve(self._unsettled.pop(job_id, None))
        for job_id in failed:
            _resolve(self._unsettled.get(job_id))


def _check_item_counts(item_counts: list[int], payloads: int) -> None:
    """Empty (one call each), or one count per payload of 1 to MAX_ITEMS_PER_JOB."""
    if not item_counts:
        return
    if len(item_counts) != payloads or min(item_counts) < 1:
        raise InvalidCall("item_counts needs one count of at least 1 per payload")
    if max(item_counts) > MAX_ITEMS_PER_JOB:
        raise InvalidCall(
            f"item_counts are at most {MAX_ITEMS_PER_JOB} calls per payload, got {max(item_counts)}"
        )


def _resolve(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


async def _translated(read: Awaitable[T]) -> T:
    """A journal read, its error made a status a client can act on."""
    try:
        return await read
    except JournalError as e:
        raise JournalUnavailable(str(e)) from e
