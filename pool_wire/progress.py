"""Where ``distribute_client.progress()`` meets the worker running the call.

The client library cannot import the worker (the sides never import each
other), and the worker must not depend on the client; both meet here. A
worker installs a reporter for the duration of each job; outside a job, or
outside a worker, there is none and a report does nothing.

In a map chunk (many calls in one job) each call's fraction is folded into
the chunk's (:func:`set_share`): call ``i`` of ``n`` reporting ``f`` reports
``(i + f) / n`` for the job, so a chunk's progress counts the calls it has
finished plus the fraction of the one running (issue 15).
"""

from __future__ import annotations

from collections.abc import Callable

Reporter = Callable[[float | None, str], None]

_reporter: Reporter | None = None
_share = (0, 1)  # (index, count) of the running call in its job


def report(fraction: float | None, message: str) -> None:
    """Hand a progress report to the current job's reporter, if there is one."""
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise ValueError(f"progress fraction must be between 0 and 1, got {fraction!r}")
    reporter = _reporter
    if reporter is not None:
        index, count = _share
        if fraction is not None and count > 1:
            fraction = (index + fraction) / count
        reporter(fraction, message)


def set_share(index: int, count: int) -> None:
    """The running call is call ``index`` of the ``count`` its job carries."""
    global _share
    _share = (index, count)


def set_reporter(reporter: Reporter | None) -> None:
    """Install the running job's reporter (``None`` once the job is over)."""
    global _reporter
    _reporter = reporter
