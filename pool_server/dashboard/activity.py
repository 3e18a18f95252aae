"""What the dashboard shows: recent activity kept from job events, and a
snapshot of the pool as it is now.

Kept here, bounded: the attempts that ran on each worker (the task stream),
the queue's length once a second, calls finished per window with their
p50 and p99 (a reservoir sample of each window), recently finished durable
jobs, and how much of each recent batch finished. Everything else (worker
states, running calls, live jobs) is read from the pool and the tracker
when a snapshot is made. Nothing here unpickles a payload.

A caller that is not an admin sees only its own jobs' names, ids and
batches, as over gRPC; other calls show as ``"call"``.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from dataclasses import dataclass, field
from typing import Any

from pool_server.auth import Caller
from pool_server.jobs import Job, JobChange
from pool_server.metrics import outcome
from pool_server.procfs import rss_bytes
from pool_server.supervisor import Worker, WorkerPool
from pool_server.tracker import JobTracker
from pool_wire.names import JobState

# The charts' span, and the width of one throughput and latency window.
HISTORY_S = 300
WINDOW_S = 2

# The task stream's span, and the most rectangles it draws (the newest): a
# page redrawn every second stays light even at thousands of calls a second.
TASK_SPAN_S = 60.0
MAX_TASKS = 1500

# Latencies kept per window for its percentiles (reservoir sampling).
RESERVOIR = 256

# Jobs listed: running ones, then this many queued and this many finished.
LISTED_QUEUED = 20
LISTED_FINISHED = 20
LISTED_BATCHES = 10

Json = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Task:
    """One attempt that ran on a worker."""

    worker_id: int
    job: Job
    start: float
    end: float
    outcome: str


@dataclass(slots=True)
class _Window:
    start: int
    calls: int = 0
    errors: int = 0
    samples: list[float] = field(default_factory=list)

    def add(self, seconds: float, ok: bool) -> None:
        self.calls += 1
        self.errors += not ok
        if len(self.samples) < RESERVOIR:
            self.samples.append(seconds)
        elif (slot := random.randrange(self.calls)) < RESERVOIR:
            self.samples[slot] = seconds

    def closed(self) -> Json:
        ordered = sorted(self.samples)
        return {
            "t": self.start,
            "calls_per_s": self.calls / WINDOW_S,
            "errors": self.errors,
            "p50_ms": _percentile(ordered, 0.50),
            "p99_ms": _percentile(ordered, 0.99),
        }


@dataclass(slots=True)
class _Tally:
    """A batch's calls finished in this server's life."""

    owner: str
    done: int = 0
    failed: int = 0


class Activity:
    def __init__(self, pool: WorkerPool, tracker: JobTracker) -> None:
        self._pool = pool
        self._tracker = tracker
        self._started = time.time()
        self._tasks: collections.deque[Task] = collections.deque(maxlen=MAX_TASKS)
        self._queue: collections.deque[tuple[float, int]] = collections.deque(maxlen=HISTORY_S)
        self._windows: collections.deque[Json] = collections.deque(maxlen=HISTORY_S // WINDOW_S)
        self._window = _Window(self._window_start(self._started))
        self._finished: collections.deque[Job] = collections.deque(maxlen=LISTED_FINISHED)
        self._batches: collections.OrderedDict[str, _Tally] = collections.OrderedDict()
        self._calls = self._errors = 0
        self._tick: asyncio.Future[None] | None = None

    def watch(self) -> None:
        self._pool.job_listeners.add(self.job_changed)

    def job_changed(self, change: JobChange) -> None:
        job, now = change.job, time.time()
        if change.old is JobState.RUNNING:
            ended = outcome(job) if job.state.finished else "interrupted"
            self._tasks.append(Task(job.worker_id, job, job.started_at, now, ended))
        if not job.state.finished:
            return
        ok = job.state is JobState.DONE
        self._calls += 1
        self._errors += not ok
        self._roll(now)
        self._window.add(now - job.created_at, ok)
        if job.durable:
            self._finished.append(job)
            if job.batch_id:
                self._tally(job, ok)

    def _tally(self, job: Job, ok: bool) -> None:
        tally = self._batches.get(job.batch_id) or _Tally(job.owner)
        if ok:
            tally.done += job.items
        else:
            tally.failed += job.items
        self._batches[job.batch_id] = tally
        self._batches.move_to_end(job.batch_id)
        while len(self._batches) > 4 * LISTED_BATCHES:
            self._batches.popitem(last=False)

    async def sample_forever(self) -> None:
        """Once a second: sample the queue, close the window, wake the viewers."""
        while True:
            await asyncio.sleep(1.0 - time.time() % 1.0)
            self.tick()

    def tick(self) -> None:
        now = time.time()
        self._queue.append((round(now, 3), len(self._pool.queue)))
        self._roll(now)
        self.wake()

    def wake(self) -> None:
        """Resolve :meth:`next_tick` (each tick, and when the port closes)."""
        if self._tick is not None and not self._tick.done():
            self._tick.set_result(None)
        self._tick = None

    def next_tick(self) -> asyncio.Future[None]:
        """A future resolved by the next tick, shared by every viewer."""
        if self._tick is None:
            self._tick = asyncio.get_running_loop().create_future()
        return self._tick

    def _window_start(self, now: float) -> int:
        return int(now) - int(now) % WINDOW_S

    def _roll(self, now: float) -> None:
        start = self._window_start(now)
        while self._window.start < start:
            self._windows.append(self._window.closed())
            self._window = _Window(self._window.start + WINDOW_S)

    def snapshot(self, caller: Caller) -> Json:
        """The whole page's data now, as ``caller`` may see it."""
        now = time.time()
        queue = self._pool.queue
        return {
            "now": now,
            "uptime_s": now - self._started,
            "workers": [self._worker(w, now, caller) for w in self._pool.workers],
            "queue": {
                "length": len(queue),
                "capacity": queue.maxsize,
                "bytes": queue.bytes,
                "history": list(self._queue),
            },
            "windows": list(self._windows),
            "window_s": WINDOW_S,
            "totals": {"calls": self._calls, "errors": self._errors},
            "tasks": self._task_stream(now, caller),
            "task_span_s": TASK_SPAN_S,
            **self._jobs_and_batches(caller),
        }

    def _worker(self, worker: Worker, now: float, caller: Caller) -> Json:
        job = worker.job
        call = None
        if job is not None:
            call = {
                **_named(job, caller),
                "elapsed_s": now - job.started_at,
                "progress": job.progress,
                "durable": job.durable,
            }
        return {
            "id": worker.id,
            "state": worker.state.value,
            "pid": worker.pid,
            "rss_bytes": rss_bytes(worker.pid) if worker.pid else None,
            "jobs_done": worker.jobs_done,
            "restarts": worker.restarts,
            "recycles": worker.recycles,
            "last_exit_reason": worker.last_exit_reason or "",
            "call": call,
        }

    def _task_stream(self, now: float, caller: Caller) -> list[Json]:
        since = now - TASK_SPAN_S
        tasks = [
            {"worker": t.worker_id, **_named(t.job, caller), "start": t.start, "end": t.end,
             "outcome": t.outcome}
            for t in self._tasks
            if t.end >= since
        ]  # fmt: skip
        for worker in self._pool.workers:
            job = worker.job
            if job is not None and job.state is JobState.RUNNING:
                tasks.append(
                    {"worker": worker.id, **_named(job, caller), "start": job.started_at,
                     "end": None, "outcome": "running"}
                )  # fmt: skip
        return tasks

    def _jobs_and_batches(self, caller: Caller) -> Json:
        live = [job for job in self._tracker.live() if caller.may_see(job.owner)]
        running = [job for job in live if job.state is JobState.RUNNING]
        waiting = [job for job in live if job.state is not JobState.RUNNING][:LISTED_QUEUED]
        finished = [job for job in reversed(self._finished) if caller.may_see(job.owner)]
        listed = {job.id: job for job in [*running, *waiting, *finished]}  # live wins
        counts = collections.Counter(job.state.value for job in live)
        return {
            "jobs": [_job(job) for job in listed.values()],
            "job_counts": dict(counts),
            "batches": self._batch_rows(live, caller),
        }

    def _batch_rows(self, live: list[Job], caller: Caller) -> list[Json]:
        pending: collections.Counter[str] = collections.Counter()
        for job in live:
            if job.batch_id and not job.state.finished:
                pending[job.batch_id] += job.items
        ids = [b for b in pending if b not in self._batches]
        ids += [b for b in reversed(self._batches) if caller.may_see(self._batches[b].owner)]
        rows = []
        for batch_id in ids[:LISTED_BATCHES]:
            tally = self._batches.get(batch_id) or _Tally("")
            total = tally.done + tally.failed + pending[batch_id]
            rows.append(
                {
                    "id": batch_id,
                    "total": total,
                    "done": tally.done,
                    "failed": tally.failed,
                    "percent": 100.0 * (tally.done + tally.failed) / total if total else 0.0,
                }
            )
        return rows


def _named(job: Job, caller: Caller) -> Json:
    if not caller.may_see(job.owner):
        return {"name": "call", "id": ""}
    return {"name": job.name or "call", "id": job.id}


def _job(job: Job) -> Json:
    return {
        "id": job.id,
        "name": job.name or "call",
        "state": job.state.value,
        "progress": job.progress,
        "message": job.message,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "worker": job.worker_id if job.state is JobState.RUNNING else None,
        "batch": job.batch_id,
        "items": job.items,
        "created_at": job.created_at,
        "started_at": job.started_at or None,
        "finished_at": job.finished_at or None,
    }


def _percentile(ordered: list[float], q: float) -> float | None:
    """The nearest-rank percentile of sorted seconds, in milliseconds."""
    if not ordered:
        return None
    return 1000.0 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]
