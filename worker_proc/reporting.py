"""Progress reports and printed output from inside a running job,
throttled to the server.

``distribute_client.progress()`` calls ``pool_wire.progress.report``; in a
worker the current job's :class:`ProgressSender` is installed there and
forwards it as a PROGRESS line, and anywhere else it does nothing. A
function may report in a tight loop: at most one line per
``MIN_INTERVAL_S`` is sent, and the latest report is always sent (a timer
flushes it), so status is never stale by more than that. When the call
returns, a report still held back is sent before its RESULT (issue 15: a
function that reported and returned within the interval lost its last
report, and its DONE status showed an earlier one).

What the job prints (the runner's captured stdout and stderr hand it to
:func:`printed` as it is written) goes out the same way, as OUTPUT lines
(:class:`OutputSender`): at most one per ``OUTPUT_INTERVAL_S``, each with
at most ``MAX_OUTPUT_CHARS`` of the latest text and a count of what it left
out, so that a call printing in a tight loop costs a line every tenth of a
second, not one per print. The last of it is sent before the RESULT.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

from pool_wire import progress as progress_hook
from pool_wire.protocol import MAX_OUTPUT_CHARS, Output, Progress

# Fresh enough for a person watching, cheap enough for a loop that reports
# every iteration.
MIN_INTERVAL_S = 0.05

# Output is live enough at ten lines a second, whatever the call prints.
OUTPUT_INTERVAL_S = 0.1


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


class OutputSender:
    """A running job's printed text, sent as OUTPUT lines: throttled and
    bounded, the latest always sent (a timer flushes it)."""

    def __init__(self, job_id: str, write: Callable[[Output], None]) -> None:
        self.job_id = job_id
        self._write = write
        self._lock = threading.Lock()
        self._last_sent = 0.0
        self._pending: list[str] = []
        self._pending_chars = 0
        self._skipped = 0  # printed before the pending text and left out
        self._timer: threading.Timer | None = None
        self._closed = False

    def printed(self, text: str) -> None:
        if not text:
            return
        with self._lock:
            if self._closed:
                return
            self._pending.append(text)
            self._pending_chars += len(text)
            if self._pending_chars > 2 * MAX_OUTPUT_CHARS:
                self._trim()
            wait = self._last_sent + OUTPUT_INTERVAL_S - time.monotonic()
            if wait <= 0:
                self._emit()
            elif self._timer is None:
                self._timer = threading.Timer(wait, self._flush)
                self._timer.daemon = True
                self._timer.start()

    def close(self) -> None:
        """Send what is still held back, then stop: the RESULT comes last."""
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
            if self._pending:
                self._emit()

    def _flush(self) -> None:
        with self._lock:
            self._timer = None
            if self._pending and not self._closed:
                self._emit()

    def _trim(self) -> None:
        """Keep the latest MAX_OUTPUT_CHARS of the pending text."""
        text = "".join(self._pending)
        cut = max(len(text) - MAX_OUTPUT_CHARS, 0)
        self._skipped += cut
        self._pending, self._pending_chars = [text[cut:]], len(text) - cut

    def _emit(self) -> None:
        if self._pending_chars > MAX_OUTPUT_CHARS:
            self._trim()
        text = "".join(self._pending)
        # A lone surrogate (it prints, but is no UTF-8) must not break the line.
        text = text.encode(errors="replace").decode()
        skipped, self._skipped = self._skipped, 0
        self._pending, self._pending_chars = [], 0
        self._last_sent = time.monotonic()
        self._write(Output(self.job_id, skipped, text))


_output: OutputSender | None = None


def printed(text: str) -> None:
    """The running job printed ``text`` (a no-op outside a job)."""
    sender = _output
    if sender is not None:
        sender.printed(text)


@contextlib.contextmanager
def reporting(
    job_id: str,
    write: Callable[[Progress], None],
    write_output: Callable[[Output], None] | None = None,
) -> Iterator[None]:
    """Route progress reports to ``write``, and printed output to
    ``write_output`` if given, for the duration of one job."""
    global _output
    sender = ProgressSender(job_id, write)
    output = _output = None if write_output is None else OutputSender(job_id, write_output)
    progress_hook.set_reporter(sender.report)
    try:
        yield
    finally:
        progress_hook.set_reporter(None)
        _output = None
        sender.close()
        if output is not None:
            output.close()
