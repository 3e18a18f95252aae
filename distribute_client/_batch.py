"""``f.map()``: many submitted jobs with bounded work in flight, results in order.

Arguments are bound and pickled as the iterable is consumed, jobs are
submitted in chunks (one Submit RPC per chunk), and no more than
``max_in_flight`` jobs are outstanding at once, so an endless generator of
arguments is fine. Results come back in input order; an item's error is
raised when its turn comes. Stopping early (``break``, an error, closing the
iterator) cancels the jobs still outstanding.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
import sys
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sized
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from tqdm import tqdm

from distribute_client import _transport
from distribute_client._jobs import Job
from distribute_client._sync import run_sync
from pool_proto import pool_pb2

if TYPE_CHECKING:
    from distribute_client._remote import RemoteFunction

R = TypeVar("R")

# Jobs per Submit RPC: large enough to amortise the RPC, small enough that
# the first results are not held up behind a huge request.
SUBMIT_CHUNK = 256

# Default bound on submitted-but-not-yet-yielded jobs.
DEFAULT_MAX_IN_FLIGHT = 4096


def new_batch_id() -> str:
    return f"b{secrets.token_hex(6)}"


async def submit(
    remote: RemoteFunction[..., R],
    arguments: list[tuple[Any, ...]],
    batch_id: str,
    kwargs: dict[str, Any] | None = None,
) -> list[Job[R]]:
    """Submit one job per argument tuple in one RPC; all are accepted or none."""
    payloads = [remote(*args, **(kwargs or {})).payload() for args in arguments]
    address = remote.address
    request = pool_pb2.SubmitRequest(
        payloads=payloads,
        retries=remote.retries,
        time_limit_s=remote.timeout or 0.0,
        batch_id=batch_id,
        name=remote.function.__qualname__,
    )
    reply = await _transport.call(address, "Submit", request, _transport.SUBMIT_TIMEOUT_S)
    return [Job(address, job_id, remote.function.__qualname__) for job_id in reply.job_ids]


async def map_results(
    remote: RemoteFunction[..., R],
    arguments: Iterator[tuple[Any, ...]],
    batch_id: str,
    max_in_flight: int,
    on_result: Callable[[], None],
) -> AsyncGenerator[R, None]:
    outstanding: collections.deque[tuple[Job[R], asyncio.Future[R]]] = collections.deque()
    try:
        while True:
            room = max_in_flight - len(outstanding)
            chunk = list(itertools.islice(arguments, min(SUBMIT_CHUNK, room))) if room else []
            if chunk:
                jobs = await submit(remote, chunk, batch_id)
                outstanding.extend((job, asyncio.ensure_future(job.async_result())) for job in jobs)
                continue
            if not outstanding:
                return
            _, result = outstanding.popleft()
            value = await result
            on_result()
            yield value
    finally:
        for _, result in outstanding:
            result.cancel()
        await asyncio.gather(
            *(job.async_cancel() for job, _ in outstanding), return_exceptions=True
        )


class _Progress:
    """A tqdm bar on stderr when asked for and stderr is a terminal."""

    def __init__(self, enabled: bool, iterables: tuple[Iterable[Any], ...], name: str) -> None:
        sizes = [len(i) for i in iterables if isinstance(i, Sized)]
        total = min(sizes) if sizes and len(sizes) == len(iterables) else None
        self._bar = (
            tqdm(total=total, desc=name, unit="call") if enabled and sys.stderr.isatty() else None
        )

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class AsyncMap(Generic[R]):
    """``async for value in f.async_map(xs)``; ``batch_id`` names the batch."""

    def __init__(
        self,
        remote: RemoteFunction[..., R],
        iterables: tuple[Iterable[Any], ...],
        max_in_flight: int,
        progress: bool,
        batch_id: str | None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.batch_id = batch_id or new_batch_id()
        self._progress = _Progress(progress, iterables, remote.function.__qualname__)
        self._results = map_results(
            remote,
            zip(*iterables, strict=False),
            self.batch_id,
            max_in_flight,
            self._progress.advance,
        )

    def __aiter__(self) -> AsyncMap[R]:
        return self

    async def __anext__(self) -> R:
        try:
            return await anext(self._results)
        except BaseException:
            self._progress.close()
            raise

    async def aclose(self) -> None:
        self._progress.close()
        await self._results.aclose()


class Map(Generic[R]):
    """``for value in f.map(xs)``; ``batch_id`` names the batch."""

    def __init__(self, results: AsyncMap[R]) -> None:
        self._results = results
        self.batch_id = results.batch_id

    def __iter__(self) -> Map[R]:
        return self

    def __next__(self) -> R:
        try:
            return run_sync(self._results.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        """Stop early: cancel the jobs still outstanding."""
        run_sync(self._results.aclose())

    def __enter__(self) -> Map[R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
