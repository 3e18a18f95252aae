"""The server's Prometheus metrics: one registry of its own, fed by listeners.

::

    Job._move ──JobChange──> PoolMetrics._job_changed     calls, durations, payload bytes
    _set_state ─WorkerChange─> PoolMetrics._worker_changed  restarts by reason
    scrape ──> _PoolCollector.collect                     queue, workers, jobs, RSS: read now
    each RPC ──> GrpcServerMetrics (grpc_metrics.py)      grpc_server_* as go-grpc-prometheus

Counters and histograms are moved by the job and worker events the
lifecycle already announces (``pool_server/events.py``); the gauges are
read from the pool and the tracker at scrape time, so no figure can drift
from what the server holds. Labels are of low cardinality: a worker's slot
id, never its pid.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pool_server.errors import WorkerCrashed
from pool_server.grpc_metrics import GrpcServerMetrics
from pool_server.jobs import Job, JobChange
from pool_server.procfs import rss_bytes
from pool_server.recycling import ExitReason
from pool_server.supervisor import Worker, WorkerChange, WorkerPool
from pool_server.tracker import JobTracker
from pool_wire.names import JobState, WorkerState

# From a no-op call's half millisecond to a job of an hour.
DURATION_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
)  # fmt: skip

# Powers of 4 from 256 bytes to 1 GiB, the largest payload (pool_wire.limits).
PAYLOAD_BUCKETS = tuple(float(256 * 4**i) for i in range(12))

OUTCOMES = ("done", "error", "crashed", "timed_out", "cancelled", "failed")
PHASES = ("queue", "run", "total")
DIRECTIONS = ("in", "out")

# Job states shown by pool_jobs: a durable job leaves memory once its end is journaled.
LIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.INTERRUPTED)


class PoolMetrics:
    """Every figure of one server, in ``registry`` (never the global one)."""

    def __init__(self) -> None:
        # The *_created series (when each counter began) say nothing this
        # server's start does not; one process, one registry of ours.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "pool_calls",
            "Calls and jobs finished, by outcome: done; error (the function raised); crashed "
            "(its worker died); timed_out; cancelled (by its caller, its deadline or the server "
            "stopping); failed (anything else). A map chunk counts once.",
            ["outcome"],
            registry=self.registry,
        )
        self.durations = Histogram(
            "pool_call_duration_seconds",
            "Time of calls and jobs: queue (waiting for a worker, per attempt), run (on a "
            "worker, per attempt), total (from arrival to the end).",
            ["phase"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.payload = Histogram(
            "pool_payload_bytes",
            "Sizes of payloads: in (a call's arguments, counted when it first runs or ends "
            "unrun), out (its outcome).",
            ["direction"],
            buckets=PAYLOAD_BUCKETS,
            registry=self.registry,
        )
        self.restarts = Counter(
            "pool_worker_restarts",
            "Worker processes replaced, by reason: crash (died running a call), died-idle, "
            "recycled-tasks, recycled-memory, memory-limit (killed past --worker-rss-limit), "
            "deadline, cancel, unfit, protocol-error, internal-error.",
            ["reason"],
            registry=self.registry,
        )
        self.grpc = GrpcServerMetrics(self.registry)
        for outcome in OUTCOMES:
            self.calls.labels(outcome)
        for phase in PHASES:
            self.durations.labels(phase)
        for direction in DIRECTIONS:
            self.payload.labels(direction)
        for reason in ExitReason:
            if reason is not ExitReason.SCALED_DOWN:  # a dismissed slot is not replaced
                self.restarts.labels(reason)
        self._phase = {phase: self.durations.labels(phase) for phase in PHASES}
        self._requeued: dict[Job, float] = {}  # queued again after an attempt: since when
        self._exited: dict[Worker, ExitReason] = {}  # slots whose process ended: why

    def watch(self, pool: WorkerPool, tracker: JobTracker) -> None:
        """Listen to ``pool``'s jobs and workers; read its gauges at each scrape."""
        pool.job_listeners.add(self._job_changed)
        pool.worker_listeners.add(self._worker_changed)
        self.registry.register(_PoolCollector(pool, tracker))

    def _job_changed(self, change: JobChange) -> None:
        job, now = change.job, time.time()
        if job.state is JobState.RUNNING:
            since = self._requeued.pop(job, job.created_at)
            self._phase["queue"].observe(max(now - since, 0.0))
            if job.attempts == 1:  # the payload is whole until it is sent
                self.payload.labels("in").observe(len(job.payload))
        elif job.state is JobState.QUEUED:  # again, after an interrupted attempt
            self._requeued[job] = now
        if change.old is JobState.RUNNING:
            self._phase["run"].observe(max(now - job.started_at, 0.0))
        if job.state.finished:
            self._requeued.pop(job, None)
            if not job.attempts:
                self.payload.labels("in").observe(len(job.payload))
            if job.outcome is not None:
                self.payload.labels("out").observe(len(job.outcome))
            self._phase["total"].observe(max(now - job.created_at, 0.0))
            self.calls.labels(outcome(job)).inc()

    def _worker_changed(self, change: WorkerChange) -> None:
        """A restart is counted when the slot starts its next process (not
        when a start fails and is tried again), by the reason the slot
        recorded when the last one went; a dismissed slot starts none."""
        worker, state = change.worker, change.worker.state
        had_process = change.old in (WorkerState.IDLE, WorkerState.BUSY, WorkerState.STOPPING)
        if state is WorkerState.DEAD and had_process and not worker.dismissed:
            self._exited[worker] = worker.last_exit_reason or ExitReason.CRASH
        elif state is WorkerState.STARTING and worker in self._exited:
            self.restarts.labels(self._exited.pop(worker)).inc()


def outcome(job: Job) -> str:
    """How a finished job ended, as ``pool_calls_total`` labels it."""
    if job.state is JobState.DONE:
        return "done"
    if job.state is JobState.TIMED_OUT:
        return "timed_out"
    if job.state is JobState.CANCELLED:
        return "cancelled"
    if job.outcome is not None:
        return "error"
    return "crashed" if isinstance(job.error, WorkerCrashed) else "failed"


class _PoolCollector(Collector):
    """The gauges, read from the pool and the tracker when scraped."""

    def __init__(self, pool: WorkerPool, tracker: JobTracker) -> None:
        self._pool = pool
        self._tracker = tracker

    def collect(self) -> Iterator[Metric]:
        queue = self._pool.queue
        yield GaugeMetricFamily(
            "pool_queue_length", "Calls and jobs waiting for a worker.", value=len(queue)
        )
        yield GaugeMetricFamily(
            "pool_queue_capacity",
            "Calls and jobs that may wait (--queue-size).",
            value=queue.maxsize,
        )
        yield GaugeMetricFamily(
            "pool_queue_payload_bytes", "Payload bytes waiting for a worker.", value=queue.bytes
        )
        workers = self._pool.workers
        by_state = GaugeMetricFamily("pool_workers", "Worker slots by state.", labels=["state"])
        for state in WorkerState:
            by_state.add_metric([state.value], sum(1 for w in workers if w.state is state))
        yield by_state
        limits = self._pool.autoscaler.limits
        bounds = GaugeMetricFamily(
            "pool_worker_limits",
            "How few (min) and how many (max) workers the pool may have; equal for a fixed pool.",
            labels=["bound"],
        )
        bounds.add_metric(["min"], limits.min)
        bounds.add_metric(["max"], limits.max)
        yield bounds
        rss = GaugeMetricFamily(
            "pool_worker_rss_bytes", "Resident memory of each slot's worker.", labels=["slot"]
        )
        for worker in workers:
            size = rss_bytes(worker.pid) if worker.pid else None
            if size is not None:
                rss.add_metric([str(worker.id)], size)
        yield rss
        counts = self._tracker.counts()
        jobs = GaugeMetricFamily(
            "pool_jobs",
            "Durable jobs held in memory by state (interrupted: waiting to run again); "
            "finished ones are counted in pool_calls_total.",
            labels=["state"],
        )
        for job_state in LIVE_JOB_STATES:
            jobs.add_metric([job_state.value.lower()], counts.get(job_state, 0))
        yield jobs
