"""The bounded job queue: FIFO, backpressure, and removal of abandoned jobs."""

from __future__ import annotations

import asyncio

import pytest

from pool_server.queue import JobQueue


async def test_fifo_and_backpressure() -> None:
    """put() waits while the queue is full and resumes in order as room appears."""
    queue: JobQueue[int] = JobQueue(maxsize=2)
    await queue.put(1)
    await queue.put(2)
    blocked = asyncio.ensure_future(queue.put(3))
    await asyncio.sleep(0)
    assert not blocked.done() and len(queue) == 2
    assert await queue.get() == 1
    await blocked
    assert [await queue.get(), await queue.get()] == [2, 3]


async def test_discard_frees_room_for_a_waiting_put() -> None:
    """Removing an abandoned job lets the next waiting call in at once."""
    queue: JobQueue[str] = JobQueue(maxsize=1)
    await queue.put("abandoned")
    waiting = asyncio.ensure_future(queue.put("next"))
    await asyncio.sleep(0)
    assert queue.discard("abandoned")
    assert not queue.discard("abandoned")
    await asyncio.wait_for(waiting, 1)
    assert await queue.get() == "next"


async def test_cancelled_getter_passes_its_wakeup_on() -> None:
    """A getter cancelled just as an item arrives does not strand that item."""
    queue: JobQueue[int] = JobQueue(maxsize=5)
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    await queue.put(7)  # wakes `first` ...
    first.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(second, 1) == 7
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_requeue_puts_a_job_back_at_the_head() -> None:
    """A job taken by a worker found dead goes back in front of the others."""
    queue: JobQueue[int] = JobQueue(maxsize=2)
    await queue.put(1)
    await queue.put(2)
    taken = queue.get_nowait()
    assert taken == 1
    queue.requeue(taken)
    assert [queue.get_nowait(), queue.get_nowait(), queue.get_nowait()] == [1, 2, None]


async def test_get_gives_up_when_until_is_done() -> None:
    """get(until=f) returns None once f is done, taking nothing and leaving no waiter."""
    queue: JobQueue[int] = JobQueue(maxsize=5)
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    getter = asyncio.ensure_future(queue.get(until=gone))
    other = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    gone.set_result(None)
    assert await asyncio.wait_for(getter, 1) is None
    await queue.put(3)
    assert await asyncio.wait_for(other, 1) == 3
    assert await queue.get(until=gone) is None  # already done: returns at once
