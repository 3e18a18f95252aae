"""The Celery app of the ``celery://`` backend's workers: one task that runs
a call's payload through the pool's own runner.

Start workers with Celery's own options, pointing at the broker and result
store the clients name in their ``celery://`` address::

    celery -A pool_celery -b redis://HOST:6379/0 --result-backend redis://HOST:6379/0 \\
        worker --concurrency 4

The task's message is JSON (the payload, the pickled function and the
outcome travel as base64 text), so workers need no ``accept_content=pickle``:
the payload is unpickled by ``worker_proc.runner``, as on a pool-server's
worker, never by Celery. What the task does (see :func:`run`):

- runs the payload with ``worker_proc.runner.run_checked`` and a per-process
  cache of functions by key (a function is unpickled once per pool process
  and keeps its module state between calls, as on a pool-server);
- for a job (or a call with a deadline: the client says which), stores
  ``STARTED`` itself as it begins, with the pool process's pid, its node and
  the time (``task_track_started`` carries no time), and
  ``distribute_client.progress()`` reports as ``PROGRESS`` states
  (``meta={"progress": f, "message": m, ...}``), throttled by
  ``worker_proc.reporting`` as on a pool-server's worker;
- returns ``{"status", "outcome", "pid", "hostname", "attempt"}``: the
  runner's status (``ok``, ``error``, ...) and the outcome bytes in base64;
  a function's exception is inside the outcome, so the Celery state is
  SUCCESS whenever the runner answered;
- a ``retry_on`` exception with retries left is retried by Celery
  (``self.retry``), in the same queue.

Time limits (``time_limit``) and revokes are Celery's: the prefork pool
kills the process running the call.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

import pybase64
from celery import Celery, Task
from celery.signals import worker_process_init
from tblib import pickling_support

from pool_wire.protocol import Progress, ResultStatus
from worker_proc.reporting import reporting
from worker_proc.runner import CachedFunction, Functions, run_checked

# The one task; clients send it by name (they need not import this package).
TASK_NAME = "pool_celery.run"

app = Celery("pool_celery")
app.conf.update(
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    result_accept_content=["json"],
    # One call at a time per pool process, none reserved behind a busy one:
    # calls are CPU-bound, and a reserved call would wait for its neighbour.
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

# Exceptions pickle with their tracebacks (the worker's own setting).
pickling_support.install()

_functions = Functions()  # this pool process's unpickled functions, by key
_pool_process = False  # a prefork pool's child, not a solo or threads worker


def _process_init(**_: Any) -> None:
    global _pool_process
    _pool_process = True


worker_process_init.connect(_process_init)


def _die_on_sigterm() -> None:
    """In a pool process, SIGTERM kills at once, as on a pool-server's
    worker. billiard's handler (installed after worker_process_init, so set
    here, before each call) raises SystemExit inside the call instead, which
    the runner catches as the function's own exception: a call past its hard
    time limit would then answer SUCCESS (a SystemExit outcome) over Celery's
    TimeLimitExceeded."""
    if _pool_process and signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run(
    self: Task, payload: str, function_hash: str, function: str, retries: int, job: bool = True
) -> dict[str, Any]:
    """One call or map chunk, as a pool-server's worker runs it. ``job``:
    store STARTED and PROGRESS states for someone to read (a plain call's
    caller reads only its result: two fewer writes)."""
    _die_on_sigterm()
    task_id: str = self.request.id
    attempt = int(self.request.retries or 0) + 1
    where: dict[str, Any] = {
        "pid": os.getpid(),
        "hostname": self.request.hostname or socket.gethostname(),
        "attempt": attempt,
        "started_at": time.time(),
    }
    if job:
        self.update_state(task_id, state="STARTED", meta=where)

    def report(progress: Progress) -> None:
        # From the reporter's timer thread too, where self.request (a
        # thread-local) is empty: the task's id is named.
        meta = {"progress": progress.fraction, "message": progress.message}
        if job:
            self.update_state(task_id, state="PROGRESS", meta={**meta, **where})

    functions = None
    if function_hash:
        if function_hash not in _functions:
            pickled = pybase64.b64decode(function)
            _functions.put(function_hash, CachedFunction(pickled), len(pickled))
        functions = _functions
    with reporting(task_id, report):
        status, outcome, _ = run_checked(pybase64.b64decode(payload), _nothing, functions)
    if status is ResultStatus.RETRY and attempt <= retries:
        raise self.retry(countdown=0, max_retries=retries)
    encoded = pybase64.b64encode(outcome).decode("ascii")
    return {"status": status.value, "outcome": encoded, **where}


run = app.task(name=TASK_NAME, bind=True)(_run)


def _nothing() -> None:
    return None
