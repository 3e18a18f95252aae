"""Ctrl-C during a blocking map: one line on stderr, not a traceback.

By the time a KeyboardInterrupt leaves a map (``run_sync`` waits for the
cancels; ``Map.close`` sends the rest) everything the map sent is cancelled,
so a traceback would only hide the one thing worth saying: what was
cancelled (issue 15). :func:`report` writes that line and marks the
exception; the interpreter's ``sys.excepthook`` is wrapped once, so that a
marked KeyboardInterrupt ending the program prints nothing more (the exit
status stays that of SIGINT). Every other exception, and a KeyboardInterrupt
from anywhere else, goes to the previous hook unchanged.

A Ctrl-C outside a map's own code (in the body of a ``for`` loop over it,
without ``with``) would drop the map as it unwinds, and reach the hook as a
bare KeyboardInterrupt. So while maps are open, and SIGINT has Python's
default handler, this module's handler takes its place: it closes the open
maps (those not in the middle of a step: a step closes its own map), says
so, and raises the marked KeyboardInterrupt itself. The default handler is
put back once no map is open, so that ``asyncio.run``, which installs its
own only over the default, is left as it was.
"""

from __future__ import annotations

import signal
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

    @property
    def busy(self) -> bool:
        """In the middle of a step, which deals with an interrupt itself."""
        ...

    def interrupted(self, error: KeyboardInterrupt) -> None: ...


_lock = threading.Lock()
_previous: Hook | None = None
_open: weakref.WeakSet[Interruptible] = weakref.WeakSet()


def opened(map_: Interruptible) -> None:
    """``map_`` is running: an interrupt that ends the program closes it."""
    _install()
    _open.add(map_)
    _catch_sigint()


def closed(map_: Interruptible) -> None:
    _open.discard(map_)
    if not _open:
        _release_sigint()


def _catch_sigint() -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set signal handlers
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


def _release_sigint() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGINT) is _on_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _on_sigint(signum: int, frame: types.FrameType | None) -> None:
    """Python's default (raise KeyboardInterrupt), after closing the open
    maps that are not in a step and saying so."""
    error = KeyboardInterrupt()
    for map_ in [m for m in list(_open) if not m.busy]:
        map_.interrupted(error)
    if not _open:
        _release_sigint()
    raise error


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
