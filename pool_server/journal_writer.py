"""The journal's one thread: the event loop never waits on the disk.

::

    event loop                               writer thread
    ----------                               -------------
    await writer.add(jobs)   ──┐
    writer.save(job)         ──┼──> pending ──> one transaction for all that
    writer.save(job)         ──┘    (saves       waits (group commit), then
    await writer.get(id)     ──────> reads)      the reads, in order
            <── futures resolved, and on_commit(...) told what became durable

Submits wait for their rows to be committed: nothing is acknowledged that
the journal does not hold. Changes of state do not wait: each is a snapshot
of the job, the latest per job replacing an older one still waiting. When a
commit fails (a full disk, say), the changes stay pending and are retried
with backoff until the disk takes them; the jobs live on in memory
meanwhile, and ``on_commit`` says which have been caught up.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from pool_server.jobs import Job
from pool_server.journal import (
    BatchCounts,
    Journal,
    JournalError,
    Row,
    Snapshot,
    job_from_row,
    new_row,
    snapshot,
)
from pool_wire.names import JobState

log = logging.getLogger("pool_server.journal")

# A failed commit is retried after this long, doubling up to the maximum:
# often enough that a freed disk is used within seconds, rarely enough that
# a full one costs nothing.
RETRY_MIN_S = 0.1
RETRY_MAX_S = 5.0

T = TypeVar("T")

# Told, on the event loop, of the jobs whose latest saved state is now
# committed (id and state), and of those whose commit just failed (ids).
CommitReport = Callable[[list[tuple[str, JobState]], list[str]], None]


@dataclass
class _Pending:
    """What waits for the writer thread, under its condition's lock."""

    adds: list[tuple[list[Row], asyncio.Future[None]]] = field(default_factory=list)
    saves: dict[str, Snapshot] = field(default_factory=dict)  # by job id, oldest first
    reads: list[tuple[Callable[[], Any], asyncio.Future[Any]]] = field(default_factory=list)


class JournalWriter:
    """The event loop's side of the journal: every call runs on one thread."""

    def __init__(self, journal: Journal) -> None:
        self.path = journal.path
        self._journal = journal
        self.on_commit: CommitReport = _ignore
        self._loop = asyncio.get_running_loop()
        self._cond = threading.Condition()
        self._pending = _Pending()
        self._retry_at = 0.0  # while saves fail: when to try them again
        self._retry_delay = RETRY_MIN_S
        self._closing = False
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()

    async def add(self, jobs: list[Job]) -> None:
        """Insert new jobs (payload included), all or none; returns once committed."""
        done: asyncio.Future[None] = self._loop.create_future()
        rows = [new_row(job) for job in jobs]
        with self._cond:
            self._pending.adds.append((rows, done))
            self._cond.notify()
        await done

    def save(self, job: Job) -> None:
        """Journal the job's current state, soon (see ``on_commit``)."""
        entry = snapshot(job)
        with self._cond:
            self._pending.saves.pop(job.id, None)  # the newest goes last: commits keep order
            self._pending.saves[job.id] = entry
            self._cond.notify()

    async def get(self, job_id: str) -> Job | None:
        row = await self._read(lambda: self._journal.get(job_id))
        return None if row is None else job_from_row(row)

    async def unfinished(self) -> list[Job]:
        return [job_from_row(row) for row in await self._read(self._journal.unfinished)]

    async def list_jobs(
        self, state: JobState | None, batch_id: str, limit: int, owner: str | None
    ) -> list[Job]:
        """Newest first; only ``owner``'s jobs unless it is None."""
        rows = await self._read(lambda: self._journal.list(state, batch_id, limit, owner))
        return [job_from_row(row) for row in rows]

    async def batch(self, batch_id: str, owner: str | None) -> BatchCounts:
        return await self._read(lambda: self._journal.batch(batch_id, owner))

    async def expire(self, finished_before: float) -> int:
        return await self._read(lambda: self._journal.expire(finished_before))

    async def close(self) -> None:
        """Commit what is pending (one last try), then close the database."""
        with self._cond:
            self._closing = True
            self._retry_at = 0.0
            self._cond.notify()
        await asyncio.shield(self._closed)

    async def _read(self, read: Callable[[], T]) -> T:
        done: asyncio.Future[T] = self._loop.create_future()
        with self._cond:
            self._pending.reads.append((read, done))
            self._cond.notify()
        return await done

    def _run(self) -> None:
        try:
            while self._work():
                pass
        finally:
            try:
                self._journal.close()
            finally:
                self._call_soon(_resolve, self._closed, None, None)

    def _work(self) -> bool:
        """One round: wait for work, commit it, answer the reads; False when done."""
        with self._cond:
            while not self._ready():
                retrying = self._failing and self._pending.saves
                self._cond.wait(max(self._retry_at - time.monotonic(), 0.01) if retrying else None)
            taken, self._pending = self._pending, _Pending()
            closing = self._closing
        try:
            self._commit_saves(taken.saves)
        except Exception as e:  # a bug, not the disk: the thread must live on
            log.exception("journaling job changes failed")
            self._keep_for_retry(taken.saves, JournalError(f"internal journal error: {e!r}"))
        self._commit_adds(taken.adds)
        for read, done in taken.reads:
            try:
                result, error = read(), None
            except Exception as e:
                result, error = None, e
            self._call_soon(_resolve, done, result, error)
        with self._cond:
            pending = self._pending
            return not closing or bool(pending.adds or pending.reads or pending.saves)

    @property
    def _failing(self) -> bool:
        return self._retry_at > 0.0

    def _ready(self) -> bool:
        pending = self._pending
        if pending.adds or pending.reads or self._closing:
            return True
        return bool(pending.saves) and time.monotonic() >= self._retry_at

    def _commit_adds(self, adds: list[tuple[list[Row], asyncio.Future[None]]]) -> None:
        """New jobs, in a transaction of their own: a submit that does not fit
        must not hold back the changes of jobs already accepted."""
        if not adds:
            return
        error: Exception | None = None
        try:
            self._journal.commit([row for rows, _ in adds for row in rows], [])
        except Exception as e:
            error = e
        for _, done in adds:
            self._call_soon(_resolve, done, None, error)

    def _commit_saves(self, saves: dict[str, Snapshot]) -> None:
        if not saves:
            return
        try:
            self._journal.commit([], list(saves.values()))
        except JournalError as e:
            self._keep_for_retry(saves, e)
            return
        if self._failing:
            log.warning("the journal takes writes again; %d job changes caught up", len(saves))
        self._retry_at, self._retry_delay = 0.0, RETRY_MIN_S
        committed = [(job_id, JobState(str(entry[0]))) for job_id, entry in saves.items()]
        self._call_soon(self.on_commit, committed, [])

    def _keep_for_retry(self, saves: dict[str, Snapshot], error: JournalError) -> None:
        """Put failed changes back (behind any newer ones) and retry later."""
        if not saves:
            return
        with self._cond:
            for job_id, entry in saves.items():
                self._pending.saves.setdefault(job_id, entry)  # a newer one wins
            if self._closing:  # the last try: stopping must not hang on a full disk
                log.error(
                    "%s; the server is stopping, so %d job changes are dropped: those jobs "
                    "start again from their last journaled state at the next start",
                    error,
                    len(self._pending.saves),
                )
                self._pending.saves.clear()
            elif not self._failing:
                log.error(
                    "%s; %d job changes are kept in memory and retried until the disk takes "
                    "them: a restart before then would not know them",
                    error,
                    len(saves),
                )
            self._retry_at = time.monotonic() + self._retry_delay
            self._retry_delay = min(self._retry_delay * 2, RETRY_MAX_S)
        self._call_soon(self.on_commit, [], list(saves))

    def _call_soon(self, callback: Callable[..., None], *args: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


def _resolve(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its waiter was cancelled
        return
    if error is not None:
        future.set_exception(error if isinstance(error, JournalError) else JournalError(str(error)))
    else:
        future.set_result(result)


def _ignore(committed: list[tuple[str, JobState]], failed: list[str]) -> None:
    pass
