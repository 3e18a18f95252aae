"""How loaded this server is, told to clients that spread calls over several.

Two forms of the same figures: a ``Load`` message on every batch of a
``Calls`` stream (this project's client reads it for ``least_loaded``), and
an ORCA load report in the ``endpoint-load-metrics-bin`` trailer of unary
replies, which gRPC's own ``weighted_round_robin`` policy reads, so that a
client in any language balances over several pool-servers with gRPC alone.

Utilisation is (busy workers + queued calls) / workers: 1.0 is a pool that
is exactly full, above it calls wait. gRPC weighs each server by its
answered calls per second over its utilisation.
"""

from __future__ import annotations

import time

from pool_proto import orca_pb2, pool_pb2
from pool_server.supervisor import WorkerPool
from pool_wire.names import WorkerState

ORCA_TRAILER = "endpoint-load-metrics-bin"

# The answered-calls rate is measured over windows of about this length.
RATE_WINDOW_S = 1.0


class LoadReporter:
    """The pool's load now, and its answered calls per second lately."""

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self._answered = 0
        self._window_start = time.monotonic()
        self._window_answered = 0
        self._rate = 0.0
        self._errors = 0
        self._window_errors = 0
        self._error_rate = 0.0

    def answered(self, ok: bool = True) -> None:
        """Count one call answered (``ok``: with its outcome, else with an error)."""
        self._answered += 1
        if not ok:
            self._errors += 1
        now = time.monotonic()
        elapsed = now - self._window_start
        if elapsed >= RATE_WINDOW_S:
            self._rate = (self._answered - self._window_answered) / elapsed
            self._error_rate = (self._errors - self._window_errors) / elapsed
            self._window_start = now
            self._window_answered = self._answered
            self._window_errors = self._errors

    def load(self) -> pool_pb2.Load:
        busy = sum(1 for w in self._pool.workers if w.state is WorkerState.BUSY)
        return pool_pb2.Load(
            # What it can run at once: an autoscaled pool grows to its maximum.
            workers=self._pool.autoscaler.limits.max,
            busy_workers=busy,
            queue_length=len(self._pool.queue),
        )

    def orca_trailer(self) -> tuple[str, bytes]:
        load = self.load()
        report = orca_pb2.OrcaLoadReport(
            application_utilization=(load.busy_workers + load.queue_length) / max(load.workers, 1),
            rps_fractional=self._rate,
            eps=self._error_rate,
        )
        return ORCA_TRAILER, report.SerializeToString()
