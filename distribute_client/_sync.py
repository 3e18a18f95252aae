"""Blocking calls over the one async implementation.

A blocking call runs its coroutine on a private event loop in a daemon
thread, so it works the same from plain scripts and from code that already
has a running loop (a notebook cell).

When the caller is interrupted (Ctrl-C raises KeyboardInterrupt in the
waiting thread), the coroutine is cancelled and its cleanup awaited before
the exception goes on (issue 15): a map's cancels must have left before
the process can exit, and the coroutine must have finished before anything
else (the map's ``close()``) touches what it was running.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")

# How long an interrupted call's cleanup (cancel messages and RPCs, each
# bounded by its own deadline) may hold the interrupt up. A second Ctrl-C
# stops the wait at once.
CANCEL_WAIT_S = 10.0

_lock = threading.RLock()  # reentrant: a SIGINT handler may run_sync while it is held
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None:
            _loop = uvloop.new_event_loop()
            _thread = threading.Thread(
                target=_loop.run_forever, name="distribute-client-loop", daemon=True
            )
            _thread.start()
        return _loop


def run_soon(coroutine: Coroutine[Any, Any, None], wait_s: float) -> None:
    """Run ``coroutine`` on the private loop and wait up to ``wait_s`` for it
    to end: for cleanup from a finalizer, which must never hang. From the
    loop's own thread it is only scheduled; while the interpreter shuts down
    (the loop's thread may be gone) it is dropped."""
    if sys.is_finalizing():
        coroutine.close()
        return
    loop = _background_loop()
    if threading.current_thread() is _thread:
        loop.create_task(coroutine)
        return
    future = asyncio.run_coroutine_threadsafe(coroutine, loop)
    with contextlib.suppress(BaseException):
        future.result(wait_s)


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion from synchronous code and return its
    result; interrupted, cancel it and wait for its cleanup, then re-raise."""
    loop = _background_loop()
    finished = threading.Event()
    tasks: list[asyncio.Task[T]] = []

    def start() -> None:
        task = loop.create_task(coroutine)
        task.add_done_callback(lambda _: finished.set())
        tasks.append(task)

    loop.call_soon_threadsafe(start)
    try:
        finished.wait()
    except BaseException:  # KeyboardInterrupt: stop the remote work too
        loop.call_soon_threadsafe(lambda: tasks[0].cancel())  # after start(): FIFO
        with contextlib.suppress(KeyboardInterrupt):  # pressed again: stop waiting
            finished.wait(CANCEL_WAIT_S)
        raise
    return tasks[0].result()


class _End:
    """Marks the end of an async iterator run from synchronous code."""


async def _next(items: AsyncGenerator[T, None]) -> T | _End:
    try:
        return await anext(items)
    except StopAsyncIteration:
        return _End()


def iterate_sync(items: AsyncGenerator[T, None]) -> Iterator[T]:
    """Iterate ``items`` on the private loop from synchronous code, one
    trip to the loop per item; closed there when the caller stops early
    (within CANCEL_WAIT_S, and not at all while the interpreter shuts down:
    an iterator dropped then must not hang the exit)."""
    try:
        while not isinstance(item := run_sync(_next(items)), _End):
            yield item
    finally:
        run_soon(items.aclose(), CANCEL_WAIT_S)
