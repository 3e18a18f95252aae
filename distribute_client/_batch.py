"""``f.map()``: many calls in chunks, bounded in flight, results in order.

Calls travel in *chunks*: one payload carries many calls of the same
function (pickled once), so the per-request costs (an RPC, a worker round
trip, a journal commit for a job) are paid once per chunk rather than per
call. A chunk's size is measured (``_chunk_size``): the first chunks carry
one call, and later ones as many as run in about a second, up to the cap
that follows ``multiprocessing.Pool.map``: about four chunks per worker, so
slow calls still spread evenly, and far below the payload limit. Results
come back in input order; a call's error is raised when its turn comes.
Stopping early (``break`` inside ``with``, an error, ``close()``) cancels
what is still outstanding. With ``progress=True`` a bar counts the calls
done, fractions reported by running calls included (``_map_progress``).

Two ways to send them (issue 10, "Map is cheap"):

- by default each chunk is a plain call (a ``Run`` RPC carrying a
  BatchRequest), as ``compute()`` is: nothing is journaled, because the
  caller stays to collect the results; a chunk abandoned by the caller is
  stopped on the server with its RPC (``run_chunks``);
- ``durable=True`` submits each chunk as a journaled job, up to
  ``JOBS_PER_SUBMIT`` per Submit RPC, that runs whether or not the caller
  stays, and that ``Client.batch(batch_id)`` can follow (``map_chunks``).

Either way no more than ``max_in_flight`` calls are outstanding, so an
endless generator of arguments is fine.

Stopping (issue 15): Ctrl-C during a blocking map cancels everything it
sent, plain or durable, and prints one line instead of a traceback
(``_interrupt``). A plain map's chunks also end with its client: the server
stops a call whose stream goes away. A durable map's jobs outlive the
client on purpose, so the map says so when it submits, naming the batch and
how to cancel it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import logging
import secrets
from collections.abc import AsyncGenerator, Coroutine, Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from distribute_client import _balancer, _codec, _interrupt, _transport
from distribute_client._chunk_size import ChunkSizer
from distribute_client._client import Client
from distribute_client._jobs import Job
from distribute_client._map_progress import MapBar
from distribute_client._submit import Submittable, submit
from distribute_client._sync import CANCEL_WAIT_S, run_soon, run_sync
from distribute_client._tracebacks import user_frames
from distribute_client.errors import QueueFullError
from pool_proto import pool_pb2
from pool_wire.limits import MAX_LIST_LIMIT, MAX_PAYLOAD_BYTES
from pool_wire.payload import CallOutcome

R = TypeVar("R")

log = logging.getLogger("distribute_client")

# Calls per chunk at most: large enough to amortise a chunk's fixed cost
# (an RPC and a worker round trip, about a millisecond; a journal commit
# more), small enough that a chunk of ordinary calls stays far below the
# payload limit and a slow chunk's results are not held back long.
MAX_CALLS_PER_JOB = 256

# Aim for this many chunks per worker, as multiprocessing.Pool.map does, so
# that slow calls still spread evenly; an unsized iterable (a generator)
# gets DEFAULT_CALLS_PER_JOB.
JOBS_PER_WORKER = 4
DEFAULT_CALLS_PER_JOB = 16

# A chunk whose payload pickles larger than this is split in halves (down to
# one call): big arguments must not add up to a payload near the limit, and
# keep each chunk a small share of the server's queued bytes.
MAX_CHUNK_BYTES = 16 * 1024 * 1024

# A plain map keeps at most this many unfinished chunks per worker on the
# server: one running and one waiting, so no worker idles between chunks,
# while a chunk never waits in the queue behind much of its own map (its
# deadline counts that wait, see CHUNK_DEADLINE_FACTOR) and an early stop
# has little to cancel.
PENDING_CHUNKS_PER_WORKER = 2

# A plain chunk's deadline is timeout x its calls x this: its own running
# time plus about one earlier chunk's, which it may wait behind.
CHUNK_DEADLINE_FACTOR = PENDING_CHUNKS_PER_WORKER

# A durable map of known length has no more jobs than this, so that one
# listing holds them all (Batch.results, as_completed): slow calls, which
# would each be a job of its own, share chunks beyond it.
MAX_JOBS_PER_DURABLE_MAP = MAX_LIST_LIMIT // 2

# Jobs per Submit RPC (fewer if the server's queue is smaller), and payload
# bytes at most, beside the function (a chunk larger than that goes alone).
JOBS_PER_SUBMIT = 64
MAX_SUBMIT_BYTES = 64 * 1024 * 1024

# When the server's queue has no room, a durable map waits and tries again
# (a plain chunk waits for room on the server, as any call does).
QUEUE_FULL_BACKOFF_MIN_S = 0.05
QUEUE_FULL_BACKOFF_MAX_S = 2.0

# Default bound on sent-but-not-yet-yielded calls.
DEFAULT_MAX_IN_FLIGHT = 8192

Args = tuple[tuple[Any, ...], dict[str, Any]]
Answer = tuple[_transport.Reply, _transport.Address]
Outcomes = AsyncGenerator[tuple[list[CallOutcome] | list[_codec.Returned], str], None]


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
    def shipped(self) -> _codec.Shipped: ...

    def __call__(self, *args: Any, **kwargs: Any) -> _Bound: ...


def new_batch_id() -> str:
    return f"b{secrets.token_hex(6)}"


def calls_per_job(total: int | None, workers: int) -> int:
    """The most calls in a chunk: ``multiprocessing.Pool.map``'s rule (``total`` over
    four chunks per worker, rounded up), at most MAX_CALLS_PER_JOB."""
    if total is None:
        return DEFAULT_CALLS_PER_JOB
    chunk, extra = divmod(total, max(workers, 1) * JOBS_PER_WORKER)
    if extra:
        chunk += 1
    return max(1, min(MAX_CALLS_PER_JOB, chunk))


def encode_chunks(
    remote: Mappable,
    calls: list[Args],
    function_apart: bool = False,
    pickled: _codec.PickledFunction | None = None,
) -> list[tuple[int, _codec.Encoded]]:
    """``calls`` as (number of calls, encoded chunk) pairs: one, or halves of
    it (recursively) while it pickles larger than MAX_CHUNK_BYTES. With
    ``function_apart`` (plain calls) the function travels beside each chunk,
    sent once per stream, or once per Submit for a durable map's jobs, which
    the journal keeps once for all of them."""
    chunk = _codec.encode_batch(
        remote.function,
        calls,
        remote.depmodules,
        remote.retry_on,
        remote.shipped,
        function_apart=function_apart,
        pickled=pickled,
    )
    if len(chunk.payload) <= MAX_CHUNK_BYTES or len(calls) == 1:
        return [(len(calls), chunk)]
    half = len(calls) // 2
    return encode_chunks(remote, calls[:half], function_apart, pickled) + encode_chunks(
        remote, calls[half:], function_apart, pickled
    )


async def run_chunks(
    remote: Mappable,
    calls: Iterator[Args],
    max_in_flight: int,
    sizer: ChunkSizer,
    max_pending: int,
    bar: MapBar,
) -> Outcomes:
    """Each chunk's outcomes (undecoded) and where it ran, in input order, each
    chunk sent as a plain call: at most ``max_pending`` chunks unfinished and
    ``max_in_flight`` calls not yet yielded. Leaving (an error, ``aclose``)
    cancels the chunks' RPCs, which stops their jobs on the server. With
    several servers each chunk goes where a call would (``_balancer.run``),
    and one whose server goes away is sent to another while the function's
    ``retries`` allow."""
    servers = remote.servers
    name = remote.function.__qualname__
    pickled = _codec.pickle_function(remote.function, remote.shipped)  # once for every chunk
    # (calls, index of its first call, its task) of each chunk sent
    sent: collections.deque[tuple[int, int, asyncio.Task[Answer]]] = collections.deque()
    running: set[asyncio.Task[Answer]] = set()  # sent and not finished
    exhausted = False
    in_flight = 0  # calls sent and not yet yielded
    offset = 0  # of the next call taken
    try:
        while True:
            if not exhausted and len(running) < max_pending and in_flight < max_in_flight:
                if servers.single is not None:  # the chunks pickled so far leave first
                    await _transport.give_way(servers.single)
                size = min(sizer.size(), max_in_flight - in_flight)
                taken = list(itertools.islice(calls, size))
                exhausted = not taken
                for count, chunk in encode_chunks(remote, taken, True, pickled) if taken else ():
                    request = pool_pb2.RunRequest(
                        payload=chunk.payload,
                        retries=remote.retries,
                        function_hash=chunk.function_hash,
                        refs=chunk.refs,
                    )
                    deadline = _chunk_deadline(remote.timeout, count)
                    heard = functools.partial(bar.reported, offset, count) if bar.enabled else None
                    sending = _balancer.run(
                        servers, request, deadline, chunk.function, remote.retries, heard
                    )
                    task = asyncio.create_task(sending)
                    running.add(task)
                    task.add_done_callback(running.discard)
                    sent.append((count, offset, task))
                    in_flight += count
                    offset += count
                continue
            if not sent:
                return
            count, first, head = sent[0]
            if not head.done():
                # Wake on any chunk's end, so a freed worker gets the next chunk
                # even while the head (the next to yield) still runs.
                await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                continue
            reply, address = head.result()  # a chunk's failure (a crash, its deadline) raises
            sent.popleft()  # only now: until then, closing must cancel it too
            in_flight -= count
            where = f"worker {reply.worker_id} (pid {reply.worker_pid}) of {address}"
            outcomes = _codec.decode_batch(reply.outcome, name, where, count)
            sizer.observe(outcomes)
            bar.arrived(first, count)
            yield outcomes, where
    finally:
        for *_, task in sent:
            task.cancel()
        await asyncio.gather(*(task for *_, task in sent), return_exceptions=True)


def _chunk_deadline(timeout: float | None, calls: int) -> float | None:
    return None if timeout is None else timeout * calls * CHUNK_DEADLINE_FACTOR


@dataclass
class _Chunk:
    job: Job[Any]
    calls: int
    offset: int  # of its first call in the map's input
    outcome: asyncio.Future[tuple[Any, bytes]]


class _ProgressWatch:
    """Puts the progress of a durable map's first ``heads`` outstanding
    chunks on its bar (those likely running: the server's queue is first
    in, first out), one WatchJob each; nothing without a bar."""

    def __init__(self, bar: MapBar, heads: int) -> None:
        self._bar = bar
        self._heads = heads
        self._watching: dict[int, asyncio.Task[None]] = {}

    def follow(self, outstanding: Iterable[_Chunk]) -> None:
        if not self._bar.enabled:
            return
        for chunk in itertools.islice(outstanding, self._heads):
            if chunk.offset not in self._watching:
                self._watching[chunk.offset] = asyncio.create_task(self._watch(chunk))

    def done(self, chunk: _Chunk) -> None:
        watcher = self._watching.pop(chunk.offset, None)
        if watcher is not None:
            watcher.cancel()

    def close(self) -> None:
        for watcher in self._watching.values():
            watcher.cancel()
        self._watching.clear()

    async def _watch(self, chunk: _Chunk) -> None:
        with contextlib.suppress(Exception):  # a courtesy: a watch that fails is let go
            async for status in chunk.job.watch():
                self._bar.reported(chunk.offset, chunk.calls, status.progress, status.message)


async def map_chunks(
    remote: Mappable,
    calls: Iterator[Args],
    batch_id: str,
    max_in_flight: int,
    sizer: ChunkSizer,
    jobs_per_submit: int,
    first_jobs: int,
    bar: MapBar,
) -> Outcomes:
    """Each chunk's outcomes (undecoded) and where it ran, in input order, each
    chunk submitted as a journaled job of the batch ``batch_id``. Until the
    chunk size is measured only ``first_jobs`` chunks are submitted, and the
    next Submit waits for the first of them to finish. With a bar, the
    first ``first_jobs`` chunks outstanding are watched for progress."""
    outstanding: collections.deque[_Chunk] = collections.deque()
    watch = _ProgressWatch(bar, first_jobs)
    in_flight = 0
    offset = 0  # of the next call taken, in the map's input
    name = remote.function.__qualname__
    pickled = _codec.pickle_function(remote.function, remote.shipped)  # once for every chunk
    submitted = False
    try:
        while True:
            size = sizer.size()
            room = min(max_in_flight - in_flight, size * jobs_per_submit)
            if not sizer.measured:
                room = 0 if outstanding else min(room, size * first_jobs)
            if room >= size or (room > 0 and not outstanding):
                taken = list(itertools.islice(calls, room))
                if taken:
                    in_flight += len(taken)
                    chunks = await _submit_chunks(remote, taken, size, batch_id, offset, pickled)
                    outstanding.extend(chunks)
                    offset += len(taken)
                    if not submitted:
                        submitted = True
                        _say_durable(name, batch_id, remote.servers.single is None)
                    continue
            if not outstanding:
                return
            watch.follow(outstanding)
            status, data = await outstanding[0].outcome
            done = outstanding.popleft()  # only now: until then, closing must cancel it too
            in_flight -= done.calls
            watch.done(done)
            where = done.job.where(status)
            outcomes = _codec.decode_batch(data, name, where, done.calls)
            sizer.observe(outcomes)
            bar.arrived(done.offset, done.calls)
            yield outcomes, where
    finally:
        watch.close()
        for pending in outstanding:
            pending.outcome.cancel()
        await asyncio.gather(
            *(pending.job.async_cancel() for pending in outstanding), return_exceptions=True
        )


def _say_durable(name: str, batch_id: str, several: bool) -> None:
    """A durable map's jobs run on after its client has gone: say so, once,
    with what stops them."""
    server = " --server ..." if several else ""
    log.warning(
        "map of %s is durable: its batch %s runs on the server even if this process goes "
        "away; cancel it with `pool-client%s cancel --batch %s` or Client().cancel_batch(%r)",
        name,
        batch_id,
        server,
        batch_id,
        batch_id,
    )


async def _submit_chunks(
    remote: Mappable,
    calls: list[Args],
    chunk_size: int,
    batch_id: str,
    offset: int,
    pickled: _codec.PickledFunction,
) -> list[_Chunk]:
    """Submit ``calls`` in chunks, in Submits of at most MAX_SUBMIT_BYTES
    of payloads each. The function travels beside the payloads, once per
    Submit, and the server journals it once; a backend (which stands alone)
    takes whole payloads."""
    single = remote.servers.single
    apart = single is None or not single.backend
    chunks = [
        chunk
        for i in range(0, len(calls), chunk_size)
        for chunk in encode_chunks(remote, calls[i : i + chunk_size], apart, pickled)
    ]
    for _, chunk in chunks:
        _codec.refuse_refs(chunk, remote.function.__qualname__)
    made: list[_Chunk] = []
    try:
        for group in _by_size(chunks, len(pickled.pickled) if apart else 0):
            counts = [count for count, _ in group]
            offsets = list(itertools.accumulate(counts[:-1], initial=offset))
            offset += sum(counts)
            payloads = [chunk.payload for _, chunk in group]
            jobs = await _submit_shielded(
                _submit_when_room(
                    remote, payloads, counts, batch_id, offsets, pickled if apart else None
                )
            )
            made += [
                _Chunk(job, count, first, asyncio.ensure_future(job.async_outcome()))
                for job, count, first in zip(jobs, counts, offsets, strict=True)
            ]
    except asyncio.CancelledError:
        await asyncio.gather(*(chunk.job.async_cancel() for chunk in made), return_exceptions=True)
        raise
    return made


def _by_size(
    chunks: list[tuple[int, _codec.Encoded]], beside: int
) -> Iterator[list[tuple[int, _codec.Encoded]]]:
    """The chunks in groups of at most MAX_SUBMIT_BYTES of payloads (one
    larger chunk alone), fewer when ``beside`` bytes (the function) travel
    with each, so that no Submit nears the message limit."""
    limit = min(MAX_SUBMIT_BYTES, max(MAX_PAYLOAD_BYTES - beside, 1))
    group: list[tuple[int, _codec.Encoded]] = []
    size = 0
    for chunk in chunks:
        length = len(chunk[1].payload)
        if group and size + length > limit:
            yield group
            group, size = [], 0
        group.append(chunk)
        size += length
    if group:
        yield group


async def _submit_shielded(submission: Coroutine[Any, Any, list[Job[Any]]]) -> list[Job[Any]]:
    """``submission``'s jobs, the Submit carried through a cancellation."""
    submitting = asyncio.ensure_future(submission)
    try:
        return await asyncio.shield(submitting)
    except asyncio.CancelledError:
        # The server may have taken the jobs already, and only its answer
        # says which they are: wait for it, and cancel them too.
        with contextlib.suppress(Exception):
            made = await submitting
            await asyncio.gather(*(job.async_cancel() for job in made), return_exceptions=True)
        raise


async def _submit_when_room(
    remote: Mappable,
    payloads: list[bytes],
    counts: list[int],
    batch_id: str,
    offsets: list[int],
    function: _codec.PickledFunction | None,
) -> list[Job[Any]]:
    delay = QUEUE_FULL_BACKOFF_MIN_S
    while True:
        try:
            return await submit(remote, payloads, counts, batch_id, offsets, function)
        except QueueFullError:  # other work fills the queue: wait for room, as a call would
            await asyncio.sleep(delay)
            delay = min(delay * 2, QUEUE_FULL_BACKOFF_MAX_S)


class AsyncMap(Generic[R]):
    """``async for value in f.async_map(xs)``; ``batch_id`` names the batch of
    a durable map (None for a plain one: nothing was journaled to follow)."""

    def __init__(
        self,
        remote: Mappable,
        iterables: tuple[Iterable[Any], ...],
        max_in_flight: int,
        chunk_size: int | None,
        progress: bool,
        batch_id: str | None,
        durable: bool,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        if batch_id is not None and not durable:
            raise ValueError("batch_id names the jobs of a durable map: pass durable=True too")
        self.batch_id = (batch_id or new_batch_id()) if durable else None
        self._remote = remote
        self.name = self._name = remote.function.__qualname__
        self._chunk_size = chunk_size
        self._max_in_flight = max_in_flight
        sizes = [len(i) for i in iterables if isinstance(i, Sized)]
        self._total = min(sizes) if sizes and len(sizes) == len(iterables) else None
        self._progress = MapBar(progress, self._total, self._name)
        # Bind each call as it is taken: a TypeError names the bad item.
        self._calls = (self._bind(args) for args in zip(*iterables, strict=False))
        self._taken = 0  # calls taken from the iterables to be sent
        self._yielded = 0
        self._chunks: Outcomes | None = None
        self._filling = False  # a fill() is under way (aclose must not close under it)
        self._ended = False
        self._cancelled: int | None = None  # calls unfinished when its task was cancelled
        self._ready: collections.deque[tuple[CallOutcome | _codec.Returned, str]] = (
            collections.deque()
        )

    def __aiter__(self) -> AsyncMap[R]:
        return self

    async def __anext__(self) -> R:
        if not self._taken:  # iterated from asyncio code (a Map calls fill() itself)
            _interrupt.opened(self)
        with user_frames:
            if not self._ready:
                await self.fill()
            return self.pop()

    @property
    def busy(self) -> bool:
        return False  # its task's cancellation has closed it already

    def interrupted(self, error: KeyboardInterrupt) -> None:
        """Ctrl-C ended the program: under ``asyncio.run`` it cancelled the
        task iterating this map, which cancelled the map's calls; say so."""
        if self._cancelled is None:
            return  # not this map's interrupt (it was only left unfinished)
        batch = f" of batch {self.batch_id}" if self.batch_id else ""
        _interrupt.report(
            error,
            f"map of {self._name} interrupted: cancelled its {self._cancelled} unfinished "
            f"call{'' if self._cancelled == 1 else 's'}{batch}",
        )

    async def fill(self) -> None:
        """Wait for the next chunk's outcomes (StopAsyncIteration after the last)."""
        try:
            self._filling = True
            if self._chunks is None:
                self._chunks = await self._start()
            outcomes, where = await anext(self._chunks)
        except BaseException as e:
            self._ended = True  # StopAsyncIteration, an error, or cancelled: the chunks unwound
            self._progress.close()
            if isinstance(e, asyncio.CancelledError):
                self._cancelled = self.unfinished
            else:
                _interrupt.closed(self)
            raise
        finally:
            self._filling = False
        self._ready.extend((outcome, where) for outcome in outcomes)

    def pop(self) -> R:
        """The next call's value, or its error raised, from what fill() brought."""
        outcome, where = self._ready.popleft()
        self._yielded += 1
        value: R = _codec.value_of(outcome, self._name, where)
        return value

    @property
    def ready(self) -> bool:
        return bool(self._ready)

    @property
    def unfinished(self) -> int:
        """Calls taken to be sent whose results have not come back."""
        return self._taken - self._yielded - len(self._ready)

    def _bind(self, args: tuple[Any, ...]) -> Args:
        call = self._remote(*args)
        self._taken += 1
        return call.args, call.kwargs

    async def _start(self) -> Outcomes:
        pool = await Client(self._remote.servers).async_status()
        workers = max(1, len(pool.workers))
        servers = max(1, len({worker.server for worker in pool.workers}))
        max_in_flight = self._max_in_flight * servers  # each server its own bound
        fixed = self._chunk_size
        if self._remote.retry_on:
            fixed = 1  # a retried call must not re-run the calls beside it
        cap = min(calls_per_job(self._total, workers), self._max_in_flight)
        floor = 1
        if self.batch_id is not None and self._total is not None:
            floor = -(-self._total // MAX_JOBS_PER_DURABLE_MAP)  # its jobs fit one listing
        fixed = None if fixed is None else min(fixed, self._max_in_flight)
        sizer = ChunkSizer(max(cap, floor), fixed, floor)
        pending = workers * PENDING_CHUNKS_PER_WORKER
        if self.batch_id is None:
            return run_chunks(
                self._remote, self._calls, max_in_flight, sizer, pending, self._progress
            )
        per_submit = min(JOBS_PER_SUBMIT, pool.queue_capacity // servers)
        if servers > 1:  # several Submits, so that each server gets its share
            per_submit = min(per_submit, workers * JOBS_PER_WORKER // servers)
        return map_chunks(
            self._remote,
            self._calls,
            self.batch_id,
            max_in_flight,
            sizer,
            max(1, per_submit),
            pending,
            self._progress,
        )

    @property
    def open(self) -> bool:
        """Started, and neither finished nor closed."""
        return self._chunks is not None and not self._ended

    @property
    def filling(self) -> bool:
        return self._filling

    async def aclose(self) -> None:
        """Cancel the chunks still outstanding. A fill() interrupted and not
        yet unwound is cancelling them itself: closing under it would fail."""
        self._ended = True
        self._progress.close()
        self._ready.clear()
        if self._chunks is not None and not self._filling:
            await self._chunks.aclose()


class Map(Generic[R]):
    """``for value in f.map(xs)``; ``batch_id`` names the batch of a durable
    map (None for a plain one)."""

    def __init__(self, results: AsyncMap[R]) -> None:
        self._results = results
        self.batch_id = results.batch_id
        _interrupt.opened(self)

    def __iter__(self) -> Map[R]:
        return self

    def __next__(self) -> R:
        # One trip to the loop thread per chunk, not per call.
        with user_frames:
            if not self._results.ready:
                try:
                    run_sync(self._results.fill())
                except StopAsyncIteration:
                    _interrupt.closed(self)
                    raise StopIteration from None
                except KeyboardInterrupt as e:
                    self.interrupted(e)
                    raise
            return self._results.pop()

    @property
    def busy(self) -> bool:
        """In the middle of a step (``__next__``), which deals with a Ctrl-C itself."""
        return self._results.filling

    def close(self) -> None:
        """Stop early: cancel the chunks still outstanding."""
        _interrupt.closed(self)
        run_sync(self._results.aclose())

    def interrupted(self, error: KeyboardInterrupt) -> None:
        """Ctrl-C: cancel what is outstanding, then say so in one line."""
        unfinished = self._results.unfinished
        with contextlib.suppress(KeyboardInterrupt):  # pressed again: the line still comes
            self.close()
        batch = f" of batch {self.batch_id}" if self.batch_id else ""
        _interrupt.report(
            error,
            f"map of {self._results.name} interrupted: cancelled its {unfinished} "
            f"unfinished call{'' if unfinished == 1 else 's'}{batch}",
        )

    def __del__(self) -> None:
        # Dropped unclosed: a Ctrl-C in the body of a `for` over it unwinds
        # the frame that held it. Cancel what it sent before the program
        # can end (a durable map's jobs would run on); never block the loop
        # thread itself, where the collector may run too.
        with contextlib.suppress(Exception):  # the interpreter may be shutting down
            _interrupt.closed(self)
        if self._results.open:
            run_soon(self._results.aclose(), CANCEL_WAIT_S)

    def __enter__(self) -> Map[R]:
        return self

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if isinstance(error, KeyboardInterrupt):
            self.interrupted(error)
        else:
            self.close()
