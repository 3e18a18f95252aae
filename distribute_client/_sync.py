"""Blocking calls over the one async implementation.

A blocking call runs its coroutine on a private event loop in a daemon
thread, so it works the same from plain scripts and from code that already
has a running loop (a notebook cell).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def _background_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None:
            _loop = uvloop.new_event_loop()
            threading.Thread(
                target=_loop.run_forever, name="distribute-client-loop", daemon=True
            ).start()
        return _loop


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to completion from synchronous code and return its result."""
    future = asyncio.run_coroutine_threadsafe(coroutine, _background_loop())
    try:
        return future.result()
    except BaseException:  # KeyboardInterrupt: stop the remote call too
        future.cancel()
        raise
