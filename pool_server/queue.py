"""A bounded FIFO of waiting jobs from which an abandoned job can be removed.

``asyncio.Queue`` has the right waiting semantics but no way to take out an
item whose caller went away, so a cancelled call would keep its place (and
its payload) until a worker popped it. This is the same design (futures for
waiting putters and getters, woken in FIFO order) plus :meth:`discard`.

The queue is bounded twice: in items (``maxsize``) and in bytes
(``max_bytes``, the sum of ``size_of`` over the items: payload memory, issue
9). Waiting putters go in strict turn: one that does not fit yet keeps its
place at the head, so a large payload is not starved by small ones behind
it. An empty queue takes any item, however large: else an item larger than
the whole bound could never be queued (it is in memory already anyway).
"""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


def _no_size(item: object) -> int:
    return 0


class JobQueue(Generic[T]):
    def __init__(
        self,
        maxsize: int,
        max_bytes: int = sys.maxsize,
        size_of: Callable[[T], int] = _no_size,
    ) -> None:
        """``size_of(item)`` must not change while the item is queued."""
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self.bytes = 0  # size_of summed over the items
        self._size_of = size_of
        self._items: collections.deque[T] = collections.deque()
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._putters: collections.deque[asyncio.Future[None]] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return (
            f"<JobQueue {len(self._items)}/{self.maxsize} {self.bytes}/{self.max_bytes} bytes "
            f"getters={len(self._getters)} putters={len(self._putters)}>"
        )

    def snapshot(self) -> list[T]:
        """The waiting items, oldest first (a copy)."""
        return list(self._items)

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def has_room(self, size: int) -> bool:
        """Whether an item of ``size`` bytes fits now (see the module docstring)."""
        if self.full():
            return False
        return not self._items or self.bytes + size <= self.max_bytes

    async def put(self, item: T) -> None:
        """Append ``item``, waiting in turn while it does not fit (backpressure)."""
        size = self._size_of(item)
        if self._putters or not self.has_room(size):
            await self._wait_for_room(size)
        self._append(item, size)
        if self._putters and not self.full():
            _wake_first(self._putters)  # the next in line may fit as well

    async def wait_for_room(self) -> None:
        """Wait, in turn with the putters, until the queue is not full: for a
        reader that takes no more requests off a stream than can be queued."""
        if self._putters or self.full():
            await self._wait_for_room(0)
            if self._putters and not self.full():
                _wake_first(self._putters)  # we appended nothing: the next may go

    def put_nowait(self, item: T) -> None:
        """Append ``item`` now, whatever the bounds: for jobs already admitted
        (a batch checked against them, recovered jobs, retries)."""
        self._append(item, self._size_of(item))

    async def get(self, until: asyncio.Future[Any] | None = None) -> T | None:
        """Remove and return the oldest item, waiting while there is none;
        ``None`` (nothing taken) as soon as ``until`` is done."""
        while not self._items:
            if until is not None and until.done():
                return None
            await self._wait_for_item(until)
        return self._take()

    def get_nowait(self) -> T | None:
        """Remove and return the oldest item, or ``None`` if there is none."""
        if not self._items:
            return None
        return self._take()

    def requeue(self, item: T) -> None:
        """Put a taken item back at the head, even if that overfills the queue.

        For a job taken by a worker that turned out to be dead: the job never
        ran, so it keeps its place instead of failing.
        """
        self._items.appendleft(item)
        self.bytes += self._size_of(item)
        _wake_first(self._getters)

    def discard(self, item: T) -> bool:
        """Remove ``item`` if it is still waiting; return whether it was."""
        try:
            self._items.remove(item)
        except ValueError:
            return False
        self.bytes -= self._size_of(item)
        _wake_first(self._putters)
        return True

    def _append(self, item: T, size: int) -> None:
        self._items.append(item)
        self.bytes += size
        _wake_first(self._getters)

    def _take(self) -> T:
        item = self._items.popleft()
        self.bytes -= self._size_of(item)
        _wake_first(self._putters)
        return item

    async def _wait_for_room(self, size: int) -> None:
        """Wait for our turn and for room for ``size`` bytes; a putter woken
        too early waits again at the head of the line, keeping its turn."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._putters.append(waiter)
        try:
            while True:
                await waiter
                if self.has_room(size):
                    return
                waiter = asyncio.get_running_loop().create_future()
                self._putters.appendleft(waiter)
        except asyncio.CancelledError:
            if waiter in self._putters:
                self._putters.remove(waiter)
            elif self._putters and not self.full():
                _wake_first(self._putters)  # a wake-up was spent on us: pass it on
            raise

    async def _wait_for_item(self, until: asyncio.Future[Any] | None) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._getters
        waiters.append(waiter)

        def on_until(_: object) -> None:
            if not waiter.done():
                waiter.set_result(None)

        if until is not None:
            until.add_done_callback(on_until)
        try:
            await waiter
        except asyncio.CancelledError:
            waiter.cancel()
            if waiter in waiters:
                waiters.remove(waiter)
            # A wake-up may have been spent on us; pass it on before leaving.
            if self._items:
                _wake_first(waiters)
            raise
        finally:
            if until is not None:
                until.remove_done_callback(on_until)
                if waiter in waiters:  # woken by `until`, not by an item
                    waiters.remove(waiter)


def _wake_first(waiters: collections.deque[asyncio.Future[None]]) -> None:
    while waiters:
        waiter = waiters.popleft()
        if not waiter.done():
            waiter.set_result(None)
            return
