"""``Batch``: a durable map's jobs, followed and collected from any process.

A durable map journals each chunk as a job of its batch, with where the
chunk's first call stands in the map's input (``item_offset``). So the
results outlive the process that made the map: any process lists the
batch's jobs (on every server of the client), waits for each, and puts
their calls back in input order (issue 15, "Results you can always get
back")::

    Client().batch(batch_id).results()   # [value, value, ValueError(...), ...]
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from distribute_client._jobs import BatchStatus, Job, JobStatus
from distribute_client._sync import run_sync
from distribute_client.errors import CallTimeoutError, PoolError
from pool_wire.limits import MAX_LIST_LIMIT

# Chunks whose results are fetched at once: enough to overlap the waits,
# few enough that a batch of thousands of chunks does not open as many RPCs.
CONCURRENT_FETCHES = 16


class _Jobs(Protocol):
    """What a batch asks of its ``Client`` (which imports this module)."""

    async def async_jobs(
        self, state: str | None = None, batch_id: str | None = None, limit: int = 100
    ) -> list[JobStatus]: ...

    async def async_batch(self, batch_id: str) -> Batch: ...

    def job(self, job_id: str) -> Job[Any]: ...


class Batch:
    """A batch as it stood when asked (``batch_id``, ``total``, ``states``,
    ``percent_done``, as :class:`BatchStatus`), and its results."""

    def __init__(self, status: BatchStatus, client: _Jobs) -> None:
        self.status = status
        self._client = client

    @property
    def batch_id(self) -> str:
        return self.status.batch_id

    @property
    def total(self) -> int:
        return self.status.total

    @property
    def states(self) -> dict[str, int]:
        return self.status.states

    @property
    def percent_done(self) -> float:
        return self.status.percent_done

    def __repr__(self) -> str:
        return f"<Batch {self.status}>"

    def job(self, job_id: str) -> Job[Any]:
        """One of its jobs (a chunk of the map), by id."""
        return self._client.job(job_id)

    async def async_jobs(self) -> list[JobStatus]:
        """The batch's jobs, in the order of their calls in the map's input;
        PoolError if they are not all there (a listing holds MAX_LIST_LIMIT)."""
        total = (await self._client.async_batch(self.batch_id)).total
        statuses = await self._client.async_jobs(batch_id=self.batch_id, limit=MAX_LIST_LIMIT)
        found = sum(status.items for status in statuses)
        if found != total:
            raise PoolError(
                f"batch {self.batch_id} has {total} calls, but its jobs listed carry {found}: "
                f"more than {MAX_LIST_LIMIT} jobs, or still being submitted"
            )
        return sorted(statuses, key=lambda s: (s.item_offset, s.created_at))

    async def async_results(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 - as results()
        *,
        unpickle: bool = True,
    ) -> list[Any]:
        jobs = [self.job(status.id) for status in await self.async_jobs()]
        return _joined(await _fetch_all(jobs, timeout, unpickle))

    def results(self, timeout: float | None = None, *, unpickle: bool = True) -> list[Any]:
        """Wait for every job of the batch and return its calls' values in
        the map's input order, with the exception in place of each call that
        raised (or of each call of a job that failed as a whole: a crash,
        its time limit, a cancel); CallTimeoutError if ``timeout`` passes
        first. ``unpickle=False`` refuses pickled results, as ``Job.result``."""
        return run_sync(self.async_results(timeout, unpickle=unpickle))


async def _fetch_all(
    jobs: Sequence[Job[Any]], limit_s: float | None, unpickle: bool
) -> list[list[Any]]:
    room = asyncio.Semaphore(CONCURRENT_FETCHES)

    async def fetch(job: Job[Any]) -> list[Any]:
        async with room:
            return await job.async_results(limit_s, unpickle=unpickle)

    try:
        async with asyncio.timeout(limit_s):
            return await asyncio.gather(*(fetch(job) for job in jobs))
    except CallTimeoutError:
        raise
    except TimeoutError:
        raise CallTimeoutError(
            f"the batch's {len(jobs)} jobs were not all finished after {limit_s:.3g} s"
        ) from None


def _joined(parts: list[list[Any]]) -> list[Any]:
    return [value for part in parts for value in part]
