"""A bounded FIFO of waiting jobs from which an abandoned job can be removed.

``asyncio.Queue`` has the right waiting semantics but no way to take out an
item whose caller went away, so a cancelled call would keep its place (and
its payload) until a worker popped it. This is the same design (futures for
waiting putters and getters, woken in FIFO order) plus :meth:`discard`.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class JobQueue(Generic[T]):
    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: collections.deque[T] = collections.deque()
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._putters: collections.deque[asyncio.Future[None]] = collections.deque()

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return (
            f"<JobQueue {len(self._items)}/{self.maxsize} "
            f"getters={len(self._getters)} putters={len(self._putters)}>"
        )

    def snapshot(self) -> list[T]:
        """The waiting items, oldest first (a copy)."""
        return list(self._items)

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    async def put(self, item: T) -> None:
        """Append ``item``, waiting while the queue is full (backpressure)."""
        while self.full():
            await self._wait(self._putters)
        self._items.append(item)
        _wake_first(self._getters)

    def put_nowait(self, item: T) -> None:
        """Append ``item`` now; for admitting a batch already checked against maxsize."""
        self._items.append(item)
        _wake_first(self._getters)

    async def get(self, until: asyncio.Future[Any] | None = None) -> T | None:
        """Remove and return the oldest item, waiting while there is none;
        ``None`` (nothing taken) as soon as ``until`` is done."""
        while not self._items:
            if until is not None and until.done():
                return None
            await self._wait(self._getters, until)
        item = self._items.popleft()
        _wake_first(self._putters)
        return item

    def get_nowait(self) -> T | None:
        """Remove and return the oldest item, or ``None`` if there is none."""
        if not self._items:
            return None
        item = self._items.popleft()
        _wake_first(self._putters)
        return item

    def requeue(self, item: T) -> None:
        """Put a taken item back at the head, even if that overfills the queue.

        For a job taken by a worker that turned out to be dead: the job never
        ran, so it keeps its place instead of failing.
        """
        self._items.appendleft(item)
        _wake_first(self._getters)

    def discard(self, item: T) -> bool:
        """Remove ``item`` if it is still waiting; return whether it was."""
        try:
            self._items.remove(item)
        except ValueError:
            return False
        _wake_first(self._putters)
        return True

    async def _wait(
        self,
        waiters: collections.deque[asyncio.Future[None]],
        until: asyncio.Future[Any] | None = None,
    ) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
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
            if waiters is self._getters and self._items:
                _wake_first(self._getters)
            elif waiters is self._putters and not self.full():
                _wake_first(self._putters)
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
