"""Listeners: how the journal (and, next, metrics and a dashboard) hear of
what happens to jobs and workers without the lifecycle knowing them.

The lifecycle announces each change once; every listener is called in the
order it was added. A listener that raises is logged and skipped, never
allowed to break the job or the worker slot that announced the change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger("pool_server.events")

E = TypeVar("E")


class Listeners(Generic[E]):
    """The callbacks told of every event of one kind."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._callbacks: list[Callable[[E], None]] = []

    def __repr__(self) -> str:
        return f"<Listeners of {self._what}: {len(self._callbacks)}>"

    def add(self, callback: Callable[[E], None]) -> None:
        self._callbacks.append(callback)

    def announce(self, event: E) -> None:
        for callback in self._callbacks:
            try:
                callback(event)
            except Exception:
                log.exception("a listener of %s failed on %r; carrying on", self._what, event)
