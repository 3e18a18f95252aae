"""Where ``distribute_client.progress()`` meets the worker running the call.

The client library cannot import the worker (the sides never import each
other), and the worker must not depend on the client; both meet here. A
worker installs a reporter for the duration of each job; outside a job, or
outside a worker, there is none and a report does nothing.
"""

from __future__ import annotations

from collections.abc import Callable

Reporter = Callable[[float | None, str], None]

_reporter: Reporter | None = None


def report(fraction: float | None, message: str) -> None:
    """Hand a progress report to the current job's reporter, if there is one."""
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise ValueError(f"progress fraction must be between 0 and 1, got {fraction!r}")
    reporter = _reporter
    if reporter is not None:
        reporter(fraction, message)


def set_reporter(reporter: Reporter | None) -> None:
    """Install the running job's reporter (``None`` once the job is over)."""
    global _reporter
    _reporter = reporter
