"""Progress reports from inside a running job, throttled to the server.

``distribute_client.progress()`` calls ``pool_wire.progress.report``; in a
worker the current job's :class:`ProgressSender` is installed there and
forwards it as a PROGRESS line, and anywhere else it does nothing. A
function may report in a tight loop: at most one line per
``MIN_INTERVAL_S`` is sent, and the latest report is always sent (a timer
flushes it), so status is never stale by more than that. When the call
returns, a report still held back is sent before its RESULT (issue 15: a
function that reported and returned within the interval lost its last
report, and its DONE status showed an earlier one).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from pool_wire import progress as progress_hook
from pool_wire.protocol import Progress

# Fresh enough for a person watching, cheap enough for a loop that reports
# every iteration.
MIN_INTERVAL_S = 0.05


class ProgressSender:
    def __init__(self, job_id: str, write: Callable[[Progress], None]) -> None:
        self.job_id = job_id
        self._write = write
        self._lock = threading.Lock()
        self._last_sent = 0.0
        self._pending: Progress | None = None
        self._timer: threading.Timer | None = None
        self._closed = False

    def report(self, fraction: float | None, message: str) -> None:
        self.send(Progress(self.job_id, fraction, message))

    def send(self, progress: Progress) -> None:
        with self._lock:
            if self._closed:
                return
            wait = self._last_sent + MIN_INTERVAL_S - time.monotonic()
            if wait <= 0:
                self._emit(progress)
                return
            self._pending = progress
            if self._timer is None:
                self._timer = threading.Timer(wait, self._flush)
                self._timer.daemon = True
                self._timer.start()

    def close(self) -> None:
        """Send the report still held back, if any, then stop sending: the
        job's RESULT line must be the last word on it."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            if self._pending is not None:
                self._emit(self._pending)

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            if self._pending is not None and not self._closed:
                self._emit(self._pending)

    def _emit(self, progress: Progress) -> None:
        self._pending = None
        self._last_sent = time.monotonic()
        self._write(progress)


@contextlib.contextmanager
def reporting(job_id: str, write: Callable[[Progress], None]) -> Iterator[None]:
    """Route progress reports to ``write`` for the duration of one job."""
    sender = ProgressSender(job_id, write)
    progress_hook.set_reporter(sender.report)
    try:
        yield
    finally:
        progress_hook.set_reporter(None)
        sender.close()
