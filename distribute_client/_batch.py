"""``f.map()``: many calls as submitted jobs, bounded in flight, results in order.

Calls travel in *chunks*: one job carries up to ``MAX_CALLS_PER_JOB`` calls
of the same function (pickled once), so the per-job costs (journal commits,
RPCs, a worker round trip) are paid once per chunk rather than per call.
Chunks are sized so that every worker still gets several of them, keeping
the load balanced when calls are slow. Up to ``JOBS_PER_SUBMIT`` chunks go
in one Submit RPC, and no more than ``max_in_flight`` calls are outstanding
at once, so an endless generator of arguments is fine. Results come back in
input order; a call's error is raised when its turn comes. Stopping early
(``break`` inside ``with``, an error, ``close()``) cancels the jobs still
outstanding.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
import sys
import types
from collections.abc import AsyncGenerator, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from tqdm import tqdm

from distribute_client import _codec
from distribute_client._client import Client
from distribute_client._jobs import Job
from distribute_client._submit import Submittable, submit
from distribute_client._sync import run_sync
from distribute_client.errors import QueueFullError
from pool_wire.payload import CallOutcome

R = TypeVar("R")

# Calls per job: large enough to amortise a job's fixed cost (about a
# millisecond), small enough to stay far below the payload limit.
MAX_CALLS_PER_JOB = 256

# Aim for at least this many jobs per worker, so that slow calls still
# spread evenly; an unsized iterable gets DEFAULT_CALLS_PER_JOB.
JOBS_PER_WORKER = 4
DEFAULT_CALLS_PER_JOB = 16

# Jobs per Submit RPC (fewer if the server's queue is smaller).
JOBS_PER_SUBMIT = 64

# When the server's queue has no room, map waits and tries again.
QUEUE_FULL_BACKOFF_MIN_S = 0.05
QUEUE_FULL_BACKOFF_MAX_S = 2.0

# Default bound on submitted-but-not-yet-yielded calls.
DEFAULT_MAX_IN_FLIGHT = 8192

Args = tuple[tuple[Any, ...], dict[str, Any]]


class _Bound(Protocol):
    """One bound call (a ``Call``): its arguments, checked against the signature."""

    @property
    def args(self) -> tuple[Any, ...]: ...

    @property
    def kwargs(self) -> dict[str, Any]: ...


class Mappable(Submittable, Protocol):
    """What map reads of a ``RemoteFunction`` (a protocol, so that this module
    need not import ``_remote``, which imports it)."""

    @property
    def depmodules(self) -> tuple[str, ...]: ...

    @property
    def retry_on(self) -> tuple[str, ...]: ...

    @property
    def _by_value(self) -> types.ModuleType | None: ...

    def __call__(self, *args: Any, **kwargs: Any) -> _Bound: ...


def new_batch_id() -> str:
    return f"b{secrets.token_hex(6)}"


def calls_per_job(total: int | None, workers: int) -> int:
    if total is None:
        return DEFAULT_CALLS_PER_JOB
    return max(1, min(MAX_CALLS_PER_JOB, total // (max(workers, 1) * JOBS_PER_WORKER)))


@dataclass
class _Chunk:
    job: Job[Any]
    calls: int
    outcome: asyncio.Future[tuple[Any, bytes]]


async def map_chunks(
    remote: Mappable,
    calls: Iterator[Args],
    batch_id: str,
    max_in_flight: int,
    chunk_size: int,
    jobs_per_submit: int,
) -> AsyncGenerator[tuple[list[CallOutcome], str], None]:
    """Each chunk's outcomes (undecoded) and where it ran, in input order."""
    outstanding: collections.deque[_Chunk] = collections.deque()
    in_flight = 0
    name = remote.function.__qualname__
    try:
        while True:
            room = min(max_in_flight - in_flight, chunk_size * jobs_per_submit)
            if room >= chunk_size or (room > 0 and not outstanding):
                taken = list(itertools.islice(calls, room))
                if taken:
                    in_flight += len(taken)
                    outstanding.extend(await _submit_chunks(remote, taken, chunk_size, batch_id))
                    continue
            if not outstanding:
                return
            status, data = await outstanding[0].outcome
            done = outstanding.popleft()  # only now: until then, closing must cancel it too
            in_flight -= done.calls
            where = done.job.where(status)
            yield _codec.decode_batch(data, name, where, done.calls), where
    finally:
        for pending in outstanding:
            pending.outcome.cancel()
        await asyncio.gather(
            *(pending.job.async_cancel() for pending in outstanding), return_exceptions=True
        )


async def _submit_chunks(
    remote: Mappable, calls: list[Args], chunk_size: int, batch_id: str
) -> list[_Chunk]:
    groups = [calls[i : i + chunk_size] for i in range(0, len(calls), chunk_size)]
    payloads = [
        _codec.encode_batch(
            remote.function, group, remote.depmodules, remote.retry_on, remote._by_value
        )
        for group in groups
    ]
    delay = QUEUE_FULL_BACKOFF_MIN_S
    while True:
        try:
            jobs = await submit(remote, payloads, [len(group) for group in groups], batch_id)
            break
        except QueueFullError:  # other work fills the queue: wait for room, as a call would
            await asyncio.sleep(delay)
            delay = min(delay * 2, QUEUE_FULL_BACKOFF_MAX_S)
    return [
        _Chunk(job, len(group), asyncio.ensure_future(job.async_outcome()))
        for job, group in zip(jobs, groups, strict=True)
    ]


class _Progress:
    """A tqdm bar on stderr when asked for and stderr is a terminal."""

    def __init__(self, enabled: bool, total: int | None, name: str) -> None:
        show = enabled and sys.stderr.isatty()
        self._bar = tqdm(total=total, desc=name, unit="call") if show else None

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
        remote: Mappable,
        iterables: tuple[Iterable[Any], ...],
        max_in_flight: int,
        chunk_size: int | None,
        progress: bool,
        batch_id: str | None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.batch_id = batch_id or new_batch_id()
        self._remote = remote
        self._name = remote.function.__qualname__
        self._chunk_size = chunk_size
        self._max_in_flight = max_in_flight
        sizes = [len(i) for i in iterables if isinstance(i, Sized)]
        self._total = min(sizes) if sizes and len(sizes) == len(iterables) else None
        self._progress = _Progress(progress, self._total, self._name)
        # Bind each call as it is taken: a TypeError names the bad item.
        self._calls = (_bind(remote, args) for args in zip(*iterables, strict=False))
        self._chunks: AsyncGenerator[tuple[list[CallOutcome], str], None] | None = None
        self._ready: collections.deque[tuple[CallOutcome, str]] = collections.deque()

    def __aiter__(self) -> AsyncMap[R]:
        return self

    async def __anext__(self) -> R:
        if not self._ready:
            await self.fill()
        return self.pop()

    async def fill(self) -> None:
        """Wait for the next chunk's outcomes (StopAsyncIteration after the last)."""
        try:
            if self._chunks is None:
                self._chunks = await self._start()
            outcomes, where = await anext(self._chunks)
        except BaseException:
            self._progress.close()
            raise
        self._ready.extend((outcome, where) for outcome in outcomes)

    def pop(self) -> R:
        """The next call's value, or its error raised, from what fill() brought."""
        outcome, where = self._ready.popleft()
        self._progress.advance()
        value: R = _codec.value_of(outcome, self._name, where)
        return value

    @property
    def ready(self) -> bool:
        return bool(self._ready)

    async def _start(self) -> AsyncGenerator[tuple[list[CallOutcome], str], None]:
        pool = await Client(str(self._remote.address)).async_status()
        chunk_size = self._chunk_size or calls_per_job(self._total, len(pool.workers))
        if self._remote.retry_on:
            chunk_size = 1  # a retried call must not re-run the calls beside it
        chunk_size = min(chunk_size, self._max_in_flight)
        return map_chunks(
            self._remote,
            self._calls,
            self.batch_id,
            self._max_in_flight,
            chunk_size,
            max(1, min(JOBS_PER_SUBMIT, pool.queue_capacity)),
        )

    async def aclose(self) -> None:
        self._progress.close()
        self._ready.clear()
        if self._chunks is not None:
            await self._chunks.aclose()


def _bind(remote: Mappable, args: tuple[Any, ...]) -> Args:
    call = remote(*args)
    return call.args, call.kwargs


class Map(Generic[R]):
    """``for value in f.map(xs)``; ``batch_id`` names the batch."""

    def __init__(self, results: AsyncMap[R]) -> None:
        self._results = results
        self.batch_id = results.batch_id

    def __iter__(self) -> Map[R]:
        return self

    def __next__(self) -> R:
        # One trip to the loop thread per chunk, not per call.
        if not self._results.ready:
            try:
                run_sync(self._results.fill())
            except StopAsyncIteration:
                raise StopIteration from None
        return self._results.pop()

    def close(self) -> None:
        """Stop early: cancel the jobs still outstanding."""
        run_sync(self._results.aclose())

    def __enter__(self) -> Map[R]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
