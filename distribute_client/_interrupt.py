"""Ctrl-C during a blocking map: one line on stderr, not a traceback.

By the time a KeyboardInterrupt leaves a map (``run_sync`` waits for the
cancels; ``Map.close`` sends the rest) everything the map sent is cancelled,
so a traceback would only hide the one thing worth saying: what was
cancelled (issue 15). :func:`report` writes that line and marks the
exception; the interpreter's ``sys.excepthook`` is wrapped once, so that a
marked KeyboardInterrupt ending the program prints nothing more (the exit
status stays that of SIGINT). Every other exception, and a KeyboardInterrupt
from anywhere else, goes to the previous hook unchanged.

A map left open by a Ctrl-C outside its own code (a ``for`` loop over it,
without ``with``) is closed by the hook, before the program ends.
"""

from __future__ import annotations

import sys
import threading
import types
import weakref
from collections.abc import Callable
from typing import Protocol

_MARK = "_distribute_client_reported"

Hook = Callable[[type[BaseException], BaseException, types.TracebackType | None], object]


class Interruptible(Protocol):
    """A blocking map, as the hook sees it."""

    def interrupted(self, error: KeyboardInterrupt) -> None: ...


_lock = threading.Lock()
_previous: Hook | None = None
_open: weakref.WeakSet[Interruptible] = weakref.WeakSet()


def opened(map_: Interruptible) -> None:
    """``map_`` is running: an interrupt that ends the program closes it."""
    _install()
    _open.add(map_)


def closed(map_: Interruptible) -> None:
    _open.discard(map_)


def report(error: KeyboardInterrupt, line: str) -> None:
    """Say ``line`` on stderr, once per interrupt, and mark ``error`` so that
    it ends the program without a traceback."""
    if getattr(error, _MARK, False):
        return
    setattr(error, _MARK, True)
    _install()
    try:
        sys.stderr.write(f"{line}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr's reader died of the same Ctrl-C (`| tail`)
        pass


def _install() -> None:
    global _previous
    with _lock:
        if _previous is None:
            _previous = sys.excepthook
            sys.excepthook = _hook


def _hook(
    kind: type[BaseException], error: BaseException, traceback: types.TracebackType | None
) -> None:
    if isinstance(error, KeyboardInterrupt):
        for map_ in list(_open):
            map_.interrupted(error)
        if getattr(error, _MARK, False):
            return
    assert _previous is not None
    _previous(kind, error, traceback)
