"""``as_completed``: jobs in the order they finish, as ``concurrent.futures``
and ``ray.wait`` give them, not the order they were submitted::

    jobs = [simulate.submit(seed) for seed in range(100)]
    for job in as_completed(jobs, timeout=600):
        print(job.id, job.result())          # finished: result() does not wait

A durable map's jobs are its chunks: ``as_completed(Client().batch(id))``
yields each chunk's job as it finishes, whose ``results()`` are its calls'
values and whose ``status().item_offset`` says where they stand in the map.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable, Iterator
from typing import Any, TypeVar, overload

from distribute_client._jobs import Job
from distribute_client._results import Batch
from distribute_client._sync import iterate_sync
from distribute_client.errors import CallTimeoutError, PoolError

R = TypeVar("R")

# Jobs waited on at once, each with a GetResult RPC open: the rest wait
# their turn, so that thousands of jobs do not open thousands of RPCs.
CONCURRENT_WAITS = 64


async def async_as_completed(
    work: Iterable[Job[R]] | Batch,
    timeout: float | None = None,  # noqa: ASYNC109 - for the whole iteration, as concurrent.futures'
) -> AsyncGenerator[Job[R], None]:
    """Each job once it has finished (whatever its state), in the order they
    finish; CallTimeoutError when ``timeout`` seconds pass (from the call)
    with jobs still unfinished. A job that cannot be asked about (its server
    is down) raises its error."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    jobs: list[Job[Any]]
    if isinstance(work, Batch):
        jobs = [work.job(status.id) for status in await work.async_jobs()]
    else:
        jobs = list(work)
    room = asyncio.Semaphore(CONCURRENT_WAITS)

    async def finished(job: Job[Any]) -> Job[Any]:
        async with room:
            left = None if deadline is None else max(deadline - loop.time(), 0.0)
            try:
                await job.async_outcome(left)
            except CallTimeoutError as e:
                if not (await job.async_status()).finished:
                    raise CallTimeoutError(f"{job.id} did not finish within {timeout} s") from e
            except PoolError as e:
                if not (await job.async_status()).finished:
                    raise
                del e  # it finished without an outcome: its result() says why
            return job

    waits = [asyncio.ensure_future(finished(job)) for job in jobs]
    try:
        for next_done in asyncio.as_completed(waits):
            yield await next_done
    finally:
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)


@overload
def as_completed(work: Batch, timeout: float | None = None) -> Iterator[Job[Any]]: ...


@overload
def as_completed(work: Iterable[Job[R]], timeout: float | None = None) -> Iterator[Job[R]]: ...


def as_completed(work: Iterable[Job[R]] | Batch, timeout: float | None = None) -> Iterator[Job[R]]:
    """Yield each of ``work``'s jobs (or a batch's chunk jobs) once it has
    finished, in the order they finish; raise CallTimeoutError (a
    TimeoutError) if ``timeout`` seconds after this call some are still
    unfinished, as ``concurrent.futures.as_completed`` does."""
    return iterate_sync(async_as_completed(work, timeout))
