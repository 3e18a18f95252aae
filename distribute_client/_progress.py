"""``progress()``: report how far a remote function has got."""

from __future__ import annotations

from pool_wire import progress as progress_hook


def progress(fraction: float | None = None, message: str = "") -> None:
    """Report progress from inside a remote function; a no-op anywhere else.

    ``fraction`` (0.0 to 1.0) and ``message`` show up in the job's
    ``status()`` within a fraction of a second. Call it as often as you like:
    reports are throttled on the way to the server, the latest always wins.

    >>> progress(0.5, "halfway")   # outside a worker: does nothing
    """
    progress_hook.report(fraction, message)
