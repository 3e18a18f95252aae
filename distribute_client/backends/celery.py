"""The Celery backend: calls run as tasks of a Celery cluster you already
have (``server="celery://redis-host:6379/0"``, ``POOL_SERVER=celery://...``).

The address is Celery's Redis broker URL with ``celery://`` for ``redis://``;
results go to the same Redis unless the address names another::

    celery://[:password@]host[:port][/db][?result=redis://host2:6379/1][&queue=NAME]

The workers run ``pool_celery`` (``celery -A pool_celery -b redis://host:6379/0
--result-backend redis://host:6379/0 worker``), whose one task runs a call's
payload with the pool's own runner. A call travels as the payload a
pool-server would get (bound and pickled by the client, its function by
value), base64 in a JSON message; the task answers with the outcome bytes,
so output replay, remote tracebacks, map chunks and ``retry_on`` are the
server's by construction::

    run(request) ──> send_task("pool_celery.run", [payload, function], time_limit=...)  (a thread)
                                           │
    the watcher thread: PSUBSCRIBE celery-task-meta-<this client's prefix>*; every state
    a task stores (STARTED, PROGRESS, SUCCESS, FAILURE, REVOKED) is published there
                                           │
    outcome bytes <── _Task (its latest meta; a concurrent.futures.Future per change)

Choices:

- **Celery's blocking client runs in threads** (``asyncio.to_thread``):
  publishing, revokes, ``inspect()`` and lookups. Waiting for results does
  not use ``AsyncResult.get()``: its Redis result consumer is one pub/sub
  connection per app, neither thread-safe nor drained unless someone calls
  ``get()``, and every ``apply_async`` subscribes it to the new task's
  channel. The client's app has no result backend (so nothing subscribes
  behind our back); one watcher thread (:class:`_Watcher`) holds the only
  subscription: a pattern over the ids this client gives its tasks (a
  prefix of its own), made once, so a call costs no subscription of its
  own. It resolves ``concurrent.futures`` futures, so any number of event
  loops (each ``asyncio.run()``, the blocking API's own) wait on it without
  polling. Results must therefore be in Redis (``result=redis://`` or
  ``rediss://``). The worker stores STARTED and PROGRESS only for jobs and
  calls with a deadline: a plain call's caller waits for its result alone.
- **Deadlines and time limits stop the work**: ``timeout`` is Celery's hard
  ``time_limit`` (the prefork pool kills the process running the call) and
  the task's ``expires`` (a call still queued at its deadline is dropped); at
  the deadline the client also revokes the task with ``terminate=True``. The
  call fails with ``CallTimeoutError``; a job past ``time_limit_s`` is
  TIMED_OUT (``JobTimedOutError``). Cancel is a revoke with
  ``terminate=True, signal="SIGKILL"``; a worker started after it (without
  ``--statedb``) does not know of it.
- **States**: PENDING → QUEUED, STARTED/PROGRESS → RUNNING (with the last
  ``progress()``), RETRY → QUEUED, SUCCESS → DONE (FAILED when the function
  raised: the exception is in the outcome), FAILURE → FAILED (TIMED_OUT for
  Celery's TimeLimitExceeded), REVOKED → CANCELLED.
- **Workers** (GetWorkers): one row per pool process of every node that
  answers ``inspect().stats()`` (within half a second; as soon as the nodes
  of the last full look have answered, looking for new ones every 10 s), BUSY when
  ``inspect().active()`` shows it running a task. Ids are this client's
  numbering of the (node, pid) pairs it has seen, from 1, so a job's
  ``worker_id`` matches its row; ``jobs_done`` and ``restarts`` read 0
  (Celery counts per node, not per process).
- **Jobs live in this process's memory**, as for ``local``: Celery has no
  listing, so ListJobs and GetBatch answer for the jobs submitted here. Job
  ids are Celery task ids; another process can look one up (GetJob,
  GetResult) while Celery keeps its result (``result_expires``, a day by
  default), though not while it is still queued: Celery cannot tell a queued
  task from an unknown one.
- **Errors**: an unreachable broker or result store is
  ``ServerUnavailableError`` naming the URL (password hidden), within
  about ``CONNECT_TIMEOUT_S``: connection retries are bounded. A worker
  process that dies fails its call with ``WorkerCrashedError``, or a run()
  call is sent again as a new task while ``retries`` allow; a job is not
  (its id is its task's). ``retry_on`` exceptions are Celery's own retry.
- Not here: tokens, a queue bound, calls that name a function the worker
  lacks (the function always travels beside the payload, and each pool
  process keeps it unpickled by key, as a server's worker does).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import contextlib
import copy
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pybase64

from distribute_client.errors import (
    CallTimeoutError,
    InvalidRequestError,
    JobCancelledError,
    JobNotFoundError,
    JobTimedOutError,
    PoolError,
    ServerError,
    ServerUnavailableError,
    WorkerCrashedError,
)
from pool_proto import pool_pb2
from pool_wire.limits import (
    MAX_BATCH_ID_CHARS,
    MAX_ID_CHARS,
    MAX_ITEMS_PER_JOB,
    MAX_LIST_LIMIT,
    MAX_NAME_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_RETRIES,
    MAX_TIME_LIMIT_S,
    brief,
)
from pool_wire.names import FINISHED_STATES, JobState, WorkerState

log = logging.getLogger("distribute_client.celery")

TASK_NAME = "pool_celery.run"  # pool_celery.TASK_NAME; the client need not import it

# A broker or result store that does not answer within this is unavailable.
CONNECT_TIMEOUT_S = 2.0
# inspect() collects the nodes' replies for this long, unless every node it
# knows of has answered: it looks for new ones at most NODES_FRESH_S apart.
INSPECT_TIMEOUT_S = 0.5
NODES_FRESH_S = 10.0
# How often kombu looks for replies while it collects them (its default, 1 s,
# is longer than the whole collection).
REPLY_POLL_S = 0.01
# The watcher thread's longest wait for a message (a bound, not a poll).
WATCHER_IDLE_S = 60.0

# As the server's defaults; Celery's queue has no bound of its own.
QUEUE_CAPACITY = 100_000
DEFAULT_LIST_LIMIT = 100

_RESULT_SCHEMES = ("redis", "rediss")
_OPTIONS = ("result", "queue")
_USAGE = "celery://[:password@]host[:port][/db][?result=redis://host:port/db][&queue=name]"
_START_WORKERS = (
    "start workers with `celery -A pool_celery -b {broker} --result-backend {result} worker`"
)


@dataclass(frozen=True)
class CeleryAddress:
    """A ``celery://`` address taken apart: Celery's broker URL, its result
    store's, and the queue the calls go to."""

    broker: str
    result: str
    queue: str

    @classmethod
    def parse(cls, url: str) -> CeleryAddress:
        parts = urlsplit(url)
        if parts.scheme != "celery" or not parts.hostname:
            raise ValueError(f"{url!r} is not {_USAGE}")
        try:
            parts.port  # noqa: B018 - raises ValueError for a port that is not one
        except ValueError:
            raise ValueError(f"{url!r} has a bad port: {_USAGE}") from None
        db = parts.path.removeprefix("/")
        if db and not db.isdigit():
            raise ValueError(f"{url!r}: the Redis database is a number, not {db!r}")
        options = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(options) - set(_OPTIONS))
        if unknown:
            raise ValueError(f"{url!r}: unknown option {unknown[0]!r} (known: result, queue)")
        twice = sorted(name for name, values in options.items() if len(values) > 1)
        if twice:
            raise ValueError(f"{url!r} gives {twice[0]!r} twice")
        broker = urlunsplit(("redis", parts.netloc, parts.path, "", ""))
        result = options.get("result", [broker])[0]
        if urlsplit(result).scheme not in _RESULT_SCHEMES or not urlsplit(result).hostname:
            raise ValueError(
                f"{url!r}: result must be a redis:// or rediss:// URL (the backend waits on "
                f"Celery's Redis result store), not {result!r}"
            )
        queue = options.get("queue", ["celery"])[0]
        if not queue:
            raise ValueError(f"{url!r}: queue must not be empty")
        return cls(broker, result, queue)


def check(url: str) -> None:
    """``ValueError`` unless ``url`` is a celery:// address (see the module's docstring)."""
    CeleryAddress.parse(url)


def connect(url: str) -> CeleryBackend:
    """The backend for ``url``; ImportError, saying what to install, without Celery."""
    try:
        import celery  # noqa: F401 - the real Celery: imports are absolute
        import redis  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"{url} needs Celery with Redis on the client: pip install 'pool-server[celery]' ({e})"
        ) from e
    return CeleryBackend(CeleryAddress.parse(url))


def _hidden(url: str) -> str:
    """``url`` with its password, if any, shown as ``**``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{parts.username or ''}:**@{parts.hostname}{port}"
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(eq=False)
class _Task:
    """One call or submitted job: what this client knows of its Celery task.
    Read and changed under the backend's lock."""

    id: str
    name: str = ""
    batch_id: str = ""
    items: int = 1
    max_attempts: int = 1
    time_limit: float | None = None
    created_at: float = field(default_factory=time.time)
    meta: dict[str, Any] | None = None  # Celery's latest record of it (decoded)
    sent: bool = False
    cancelled_at: float = 0.0  # cancelled here: that wins over whatever comes after
    lost: PoolError | None = None  # the watch on it broke (the result store went away)
    _changed: cf.Future[None] | None = None

    @property
    def celery_state(self) -> str:
        return str((self.meta or {}).get("status", "PENDING"))

    @property
    def info(self) -> dict[str, Any]:
        """What the worker stored with the state (STARTED, PROGRESS, SUCCESS)."""
        result = (self.meta or {}).get("result")
        return result if isinstance(result, dict) else {}

    @property
    def state(self) -> JobState:
        if self.cancelled_at:
            return JobState.CANCELLED
        state = self.celery_state
        if state == "SUCCESS":
            return JobState.DONE if self.info.get("status") == "ok" else JobState.FAILED
        if state == "FAILURE":
            return JobState.TIMED_OUT if self.failure == "TimeLimitExceeded" else JobState.FAILED
        return _STATES.get(state, JobState.RUNNING)  # a state of the user's own: running

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    @property
    def failure(self) -> str:
        """The class name of the exception Celery stored, for FAILURE and REVOKED."""
        error = (self.meta or {}).get("result")
        return type(error).__name__ if isinstance(error, BaseException) else ""

    def changed(self) -> None:
        if self._changed is not None:
            self._changed.set_result(None)
            self._changed = None

    def next_change(self) -> cf.Future[None]:
        if self._changed is None:
            self._changed = cf.Future()
        return self._changed


_STATES = {
    "PENDING": JobState.QUEUED,
    "RECEIVED": JobState.QUEUED,
    "RETRY": JobState.QUEUED,
    "STARTED": JobState.RUNNING,
    "PROGRESS": JobState.RUNNING,
    "REVOKED": JobState.CANCELLED,
}


class CeleryBackend:
    """The Pool service's RPCs answered by a Celery cluster. Every method is
    safe from any thread and any event loop."""

    def __init__(self, address: CeleryAddress) -> None:
        import kombu.exceptions
        import redis.exceptions
        from celery import Celery
        from celery.backends.redis import RedisBackend
        from celery.exceptions import CeleryError

        self.address = address
        self.where = f"the Celery broker at {_hidden(address.broker)}"
        self._app = Celery("distribute_client", broker=address.broker, set_as_current=False)
        self._app.conf.update(
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
            result_accept_content=["json"],
            task_default_queue=address.queue,
            broker_connection_timeout=CONNECT_TIMEOUT_S,
            broker_connection_retry_on_startup=False,
            broker_connection_max_retries=1,
            broker_transport_options={
                "socket_connect_timeout": CONNECT_TIMEOUT_S,
                "polling_interval": REPLY_POLL_S,
            },
            task_publish_retry=True,
            task_publish_retry_policy={
                "max_retries": 1,
                "interval_start": 0.0,
                "interval_step": 0.2,
                "interval_max": 0.2,
            },
            redis_socket_connect_timeout=CONNECT_TIMEOUT_S,
            redis_socket_timeout=30.0,
        )
        # Results are read with a backend of our own, not the app's: see the docstring.
        self._store = RedisBackend(app=self._app, url=address.result)
        self._unreachable: tuple[type[BaseException], ...] = (
            kombu.exceptions.OperationalError,
            redis.exceptions.ConnectionError,
            redis.exceptions.TimeoutError,
            OSError,
        )
        self._failures: tuple[type[BaseException], ...] = (
            kombu.exceptions.KombuError,
            redis.exceptions.RedisError,
            CeleryError,
        )
        self._lock = threading.Lock()
        self._watcher = _Watcher(self._store, self._lock, self._unavailable)
        self._jobs: dict[str, _Task] = {}  # submitted here, oldest first
        self._others: dict[str, _Task] = {}  # submitted elsewhere, looked up here
        self._worker_ids: dict[tuple[str, int], int] = {}
        self._nodes = 0  # how many answered the last full inspect()
        self._nodes_at = -math.inf  # and when

    def __repr__(self) -> str:
        return f"<CeleryBackend {_hidden(self.address.broker)} queue={self.address.queue}>"

    # The RPCs.

    async def run(
        self, request: pool_pb2.RunRequest, deadline_s: float | None, function: bytes
    ) -> tuple[bytes, int, int]:
        """(outcome bytes, worker id, worker pid); past ``deadline_s`` (queue
        time included) the task is revoked and CallTimeoutError raised. A
        pool process that dies fails the call, unless ``request.retries``
        allows another attempt (a new task)."""
        _check_sizes([request.payload])
        function = function or request.function
        if request.function_hash and not function:
            raise _invalid("RunRequest.function_hash needs the function's bytes beside it")
        attempts = _retries(request.retries) + 1
        loop = asyncio.get_running_loop()
        ends = None if deadline_s is None else loop.time() + deadline_s
        tasks: list[_Task] = []
        try:
            async with asyncio.timeout(deadline_s):
                while True:
                    task = _Task(self._watcher.new_id(), max_attempts=attempts - len(tasks))
                    tasks.append(task)
                    limit = None if ends is None else max(ends - loop.time(), 0.001)
                    await self._run_once(task, request, function, limit)
                    if task.failure != "WorkerLostError" or len(tasks) == attempts:
                        break
                    log.warning("celery backend: %s; trying again", self._error(task))
        except TimeoutError:
            if not tasks[-1].finished:
                raise CallTimeoutError(self._deadline_message(tasks[-1], deadline_s)) from None
        task = tasks[-1]
        with self._lock:
            timed_out = task.state is JobState.TIMED_OUT
        if timed_out:  # Celery's time limit came first
            raise CallTimeoutError(self._deadline_message(task, deadline_s))
        with self._lock:
            return self._outcome(task)

    async def _run_once(
        self, task: _Task, request: pool_pb2.RunRequest, function: bytes, limit: float | None
    ) -> None:
        """Send ``task`` and wait for it to finish; revoked if the wait is cut short."""
        try:
            await self._blocking(
                self._send,
                [task],
                [request.payload],
                request.function_hash,
                function,
                limit,
                tracked=limit is not None,
            )
            await self._finished(task)
        finally:
            if task.sent and not task.finished:  # past its deadline, or its caller went away
                _in_background(self._revoke, task.id)
            self._watcher.forget(task.id)

    async def get_workers(self, request: pool_pb2.GetWorkersRequest) -> pool_pb2.GetWorkersReply:
        with self._lock:
            full = time.monotonic() - self._nodes_at > NODES_FRESH_S
            limit = None if full or not self._nodes else self._nodes
        inspect = self._app.control.inspect(timeout=INSPECT_TIMEOUT_S, limit=limit)
        stats, active, queued = await asyncio.gather(
            self._blocking(inspect.stats),
            self._blocking(inspect.active),
            self._blocking(self._queued),
        )
        workers: list[pool_pb2.WorkerInfo] = []
        with self._lock:
            if full or len(stats or ()) != self._nodes:
                self._nodes, self._nodes_at = len(stats or ()), time.monotonic()
            for node, info in sorted((stats or {}).items()):
                running = (active or {}).get(node) or []
                busy = collections.Counter(task.get("worker_pid") for task in running)
                pool = info.get("pool") or {}
                pids = pool.get("processes") or [info.get("pid", 0)] * pool.get(
                    "max-concurrency", 1
                )  # a solo or threads pool: its processes are the node
                for pid in pids:
                    working = busy[pid] > 0
                    busy[pid] -= 1
                    workers.append(
                        pool_pb2.WorkerInfo(
                            id=self._worker_id(node, pid),
                            pid=pid,
                            state=(WorkerState.BUSY if working else WorkerState.IDLE).to_proto(),
                        )
                    )
        return pool_pb2.GetWorkersReply(
            workers=workers, queue_length=queued, queue_capacity=QUEUE_CAPACITY
        )

    async def submit(self, request: pool_pb2.SubmitRequest) -> pool_pb2.SubmitReply:
        """One task per payload, all sent or none (those sent are revoked)."""
        payloads = list(request.payloads)
        if not payloads:
            raise _invalid("Submit needs at least one payload")
        _check_sizes(payloads)
        counts = _item_counts(list(request.item_counts), len(payloads))
        tasks = [
            _Task(
                self._watcher.new_id(),
                name=_text("name", request.name, MAX_NAME_CHARS),
                batch_id=_text("batch_id", request.batch_id, MAX_BATCH_ID_CHARS),
                items=items,
                max_attempts=_retries(request.retries) + 1,
                time_limit=_time_limit(request.time_limit_s),
            )
            for items in counts
        ]
        with self._lock:
            self._jobs.update((task.id, task) for task in tasks)
        try:
            await self._blocking(self._send, tasks, payloads, "", b"", None, tracked=True)
        except BaseException:
            with self._lock:
                for task in tasks:
                    del self._jobs[task.id]
            for task in tasks:
                self._watcher.forget(task.id)
                if task.sent:
                    _in_background(self._revoke, task.id)
            raise
        return pool_pb2.SubmitReply(job_ids=[task.id for task in tasks])

    async def get_job(self, request: pool_pb2.JobRef) -> pool_pb2.JobStatus:
        task = await self._task(request, fresh=True)
        with self._lock:
            return self._status(task)

    async def watch_job(self, request: pool_pb2.JobRef) -> AsyncIterator[pool_pb2.JobStatus]:
        """The job's status now, then after every change, until it is finished."""
        task = await self._task(request)
        await self._watch(task)
        while True:
            with self._lock:
                status, changed, finished = self._status(task), task.next_change(), task.finished
                lost = task.lost
            yield status
            if finished:
                return
            if lost is not None:
                raise copy.copy(lost)
            await _until(changed)

    async def get_result(
        self, request: pool_pb2.JobRef, deadline_s: float | None
    ) -> pool_pb2.JobResult:
        """The job once finished, or as it stands when ``deadline_s`` passes;
        raises the error of a job that finished without an outcome."""
        task = await self._task(request)
        await self._watch(task)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(deadline_s):
                await self._finished(task)
        with self._lock:
            if not task.finished:
                return pool_pb2.JobResult(status=self._status(task))
            if task.state in (JobState.DONE, JobState.FAILED) and task.info.get("outcome"):
                outcome = pybase64.b64decode(task.info["outcome"])
                return pool_pb2.JobResult(status=self._status(task), outcome=outcome)
            raise self._error(task)

    async def cancel_job(self, request: pool_pb2.JobRef) -> pool_pb2.JobStatus:
        """Revoked (its process killed if it runs); a no-op once finished."""
        task = await self._task(request, fresh=True)
        with self._lock:
            cancel = not task.finished
        if cancel:
            await self._blocking(self._revoke, task.id)
            with self._lock:
                if not task.finished:
                    task.cancelled_at = time.time()
                    task.changed()
        with self._lock:
            return self._status(task)

    async def list_jobs(self, request: pool_pb2.ListJobsRequest) -> pool_pb2.ListJobsReply:
        """The jobs submitted from this process, newest first."""
        state = _state(request.state) if request.state else None
        batch_id = _text("batch_id", request.batch_id, MAX_BATCH_ID_CHARS)
        limit = min(request.limit or DEFAULT_LIST_LIMIT, MAX_LIST_LIMIT)
        statuses: list[pool_pb2.JobStatus] = []
        with self._lock:
            for task in reversed(self._jobs.values()):
                if len(statuses) == limit:
                    break
                if (state is None or task.state is state) and batch_id in ("", task.batch_id):
                    statuses.append(self._status(task))
        return pool_pb2.ListJobsReply(jobs=statuses)

    async def get_batch(self, request: pool_pb2.BatchRef) -> pool_pb2.BatchStatus:
        """Calls per state of the batch's jobs submitted from this process."""
        batch_id = _text("batch_id", request.batch_id, MAX_BATCH_ID_CHARS)
        states: collections.Counter[str] = collections.Counter()
        with self._lock:
            for task in self._jobs.values():
                if task.batch_id == batch_id:
                    states[task.state.value] += task.items
        total = sum(states.values())
        if not total:
            raise JobNotFoundError(
                f"no batch {brief(batch_id)} was submitted from this process to {self.where} "
                "(Celery keeps no list of tasks: a batch is known where it was submitted)"
            )
        finished = sum(states[s.value] for s in FINISHED_STATES)
        return pool_pb2.BatchStatus(
            batch_id=batch_id,
            total=total,
            states=dict(states),
            percent_done=100.0 * finished / total,
        )

    # Celery's blocking calls, each in a thread.

    async def _blocking(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(self._translated, call, *args, **kwargs)

    def _translated(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        """``call``, with Celery's, kombu's and Redis's errors as ours."""
        try:
            return call(*args, **kwargs)
        except PoolError:
            raise
        except self._unreachable as e:
            raise self._unavailable(e) from e
        except self._failures as e:
            raise ServerError(f"{self.where}: Celery failed: {type(e).__name__}: {e}") from e

    def _unavailable(self, error: BaseException) -> ServerUnavailableError:
        return ServerUnavailableError(
            f"{self.where} (results at {_hidden(self.address.result)}) did not answer "
            f"({type(error).__name__}: {error}); is Redis running there? Then {self._hint()}"
        )

    def _hint(self) -> str:
        broker, result = _hidden(self.address.broker), _hidden(self.address.result)
        return _START_WORKERS.format(broker=broker, result=result)

    def _send(
        self,
        tasks: list[_Task],
        payloads: list[bytes],
        function_hash: str,
        function: bytes,
        deadline: float | None,
        tracked: bool,
    ) -> None:
        """Publish one task per payload; each is watched before it exists, so
        none of its states can be missed. ``tracked``: the worker stores
        STARTED and PROGRESS too (for jobs, and for calls with a deadline,
        whose timeout says whether the call ran; a plain call's caller
        waits for the result alone)."""
        for task in tasks:
            self._watcher.watch(task)
        encoded_function = pybase64.b64encode(function).decode("ascii")
        with self._app.producer_or_acquire() as producer:
            for task, payload in zip(tasks, payloads, strict=True):
                retries = task.max_attempts - 1
                args = [pybase64.b64encode(payload).decode("ascii"), function_hash]
                self._app.send_task(
                    TASK_NAME,
                    args=[*args, encoded_function, retries, tracked],
                    task_id=task.id,
                    time_limit=task.time_limit or deadline,
                    expires=deadline,
                    producer=producer,
                )
                task.sent = True

    def _revoke(self, task_id: str) -> None:
        """Kill it where it runs, drop it where it waits: every worker up now
        keeps the id and stores REVOKED when it meets the task."""
        self._app.control.revoke(task_id, terminate=True, signal="SIGKILL")

    def _queued(self) -> int:
        """Messages waiting in the queue. Declared as publishing declares it
        (a passive declare fails for an empty one: Redis drops empty lists)."""
        with self._app.pool.acquire(block=True) as connection:
            reply = connection.default_channel.queue_declare(queue=self.address.queue)
            return int(reply.message_count)

    # Records.

    async def _task(self, request: pool_pb2.JobRef, fresh: bool = False) -> _Task:
        """The job's record: submitted here, or looked up in Celery's results
        (JobNotFoundError if it has none). ``fresh``: read Celery's record
        again unless the watcher keeps it up to date."""
        job_id = _text("job_id", request.job_id, MAX_ID_CHARS)
        with self._lock:
            task = self._jobs.get(job_id) or self._others.get(job_id)
            watched = task is not None and (task.finished or self._watcher.watches(job_id))
            stale = task is None or (fresh and not watched)
        if not stale:
            assert task is not None
            return task
        meta = await self._blocking(self._store.get_task_meta, job_id, cache=False)
        with self._lock:
            if task is None and meta.get("status", "PENDING") == "PENDING":
                raise JobNotFoundError(
                    f"no job {brief(job_id)} at {self.where}: never submitted there, its result "
                    "has expired, or it is still queued (Celery cannot tell those apart; a job "
                    "is known before it starts only in the process that submitted it)"
                )
            if task is None:
                task = self._others.setdefault(job_id, _Task(job_id, meta=meta))
            elif not task.finished and meta.get("status", "PENDING") != "PENDING":
                task.meta, task.lost = meta, None
                task.changed()
            return task

    async def _watch(self, task: _Task) -> None:
        with self._lock:
            needed = not task.finished and not self._watcher.watches(task.id)
        if needed:
            await self._blocking(self._watcher.watch, task)

    async def _finished(self, task: _Task) -> None:
        """Wait for ``task`` to finish; raises if its watch is lost."""
        while True:
            with self._lock:
                if task.finished:
                    return
                if task.lost is not None:
                    raise copy.copy(task.lost)  # each raise its own traceback
                changed = task.next_change()
            await _until(changed)

    def _status(self, task: _Task) -> pool_pb2.JobStatus:
        info = task.info
        status = pool_pb2.JobStatus(
            id=task.id,
            state=task.state.to_proto(),
            message=str(info.get("message") or ""),
            attempts=int(info.get("attempt", 0)),
            max_attempts=task.max_attempts,
            worker_id=self._worker_of(task)[0],
            created_at=task.created_at,
            started_at=float(info.get("started_at", 0.0)),
            finished_at=task.cancelled_at or _finished_at(task),
            error=str(self._error(task)) if task.finished and not info.get("outcome") else "",
            batch_id=task.batch_id,
            name=task.name,
        )
        if info.get("progress") is not None:
            status.progress = float(info["progress"])
        return status

    def _outcome(self, task: _Task) -> tuple[bytes, int, int]:
        """A finished call's answer, or its error raised."""
        if task.celery_state != "SUCCESS" or task.cancelled_at:
            raise self._error(task)
        worker_id, pid = self._worker_of(task)
        return pybase64.b64decode(task.info["outcome"]), worker_id, pid

    def _error(self, task: _Task) -> PoolError:
        """Why a finished task has no outcome."""
        where = self._where(task)
        state = task.state
        if state is JobState.CANCELLED:
            return JobCancelledError(f"job {task.id} was cancelled")
        if state is JobState.TIMED_OUT:
            return JobTimedOutError(
                f"job {task.id} ran past its {task.time_limit or 0:.3g} s time limit{where}; "
                "Celery's hard time limit killed its pool process"
            )
        error = (task.meta or {}).get("result")
        if task.failure == "WorkerLostError":
            return WorkerCrashedError(
                f"the Celery pool process running job {task.id}{where} died: {error}; "
                "the call did not finish"
            )
        return ServerError(
            f"the Celery task of job {task.id}{where} failed: {task.failure}: {error} (are the "
            f"workers running this version's pool_celery? {self._hint()})"
        )

    def _where(self, task: _Task) -> str:
        worker_id, pid = self._worker_of(task)
        node = task.info.get("hostname")
        return f" on worker {worker_id} (pid {pid} of {node})" if node else ""

    def _worker_of(self, task: _Task) -> tuple[int, int]:
        info = task.info
        node, pid = info.get("hostname"), info.get("pid")
        if not isinstance(node, str) or not isinstance(pid, int):
            return 0, 0
        return self._worker_id(node, pid), pid

    def _worker_id(self, node: str, pid: int) -> int:
        """This client's number for a pool process, from 1 in order of first sight."""
        return self._worker_ids.setdefault((node, pid), len(self._worker_ids) + 1)

    def _deadline_message(self, task: _Task, seconds: float | None) -> str:
        with self._lock:
            started = task.celery_state not in ("PENDING", "RECEIVED") or task.cancelled_at
            where = self._where(task)
        if not started:
            return f"the call waited in Celery's queue for its whole {seconds:.3g} s deadline"
        return (
            f"the call ran past its {seconds:.3g} s deadline{where}; it was revoked and its "
            "pool process killed"
        )


class _Watcher:
    """Keeps the tasks waited on up to date, without polling: one thread
    holds a Redis subscription to their result channels (Celery's Redis
    result store publishes every state it stores on the task's own).

    The tasks this client sends have ids of its own prefix (:meth:`new_id`),
    so one pattern subscription, made before the first is sent, covers them
    all: a call costs no subscription of its own. A task sent elsewhere
    (looked up by id), or one watched again after the watch broke, is
    subscribed to or read again on its own: the thread is asked through a
    queue and woken by a message on a channel of its own (it alone touches
    the subscription: redis-py's PubSub is not thread-safe), subscribes, and
    reads the task's record once subscribed, so no state stored before is
    missed."""

    def __init__(
        self, store: Any, lock: threading.Lock, lost: Callable[[BaseException], PoolError]
    ) -> None:
        self._store = store
        self._lock = lock  # the backend's: tasks are read and changed under it
        self._lost = lost
        self._prefix = f"pc{uuid.uuid4().hex[:16]}-"
        self._key_prefix = self._channel("-")[:-1]  # Celery's key for a task id, less the id
        self._tasks: dict[str, _Task] = {}
        self._asked: collections.deque[str] = collections.deque()
        self._wake = f"pool-celery-wake-{self._prefix}".encode()
        self._thread: threading.Thread | None = None
        self._ready: cf.Future[None] = cf.Future()  # the current thread's pattern is subscribed

    def new_id(self) -> str:
        return f"{self._prefix}{uuid.uuid4()}"

    def watches(self, task_id: str) -> bool:
        """Under the lock."""
        return task_id in self._tasks

    def watch(self, task: _Task) -> None:
        """Keep ``task`` up to date until it finishes. Blocking: it may wait
        for the thread's subscription, or send it a message."""
        with self._lock:
            task.lost = None
            self._tasks[task.id] = task
            asked = task.sent or not task.id.startswith(self._prefix)
            if asked:
                self._asked.append(task.id)
            if self._thread is None:
                self._ready = cf.Future()
                self._thread = threading.Thread(
                    target=self._serve, name="celery-results", daemon=True
                )
                self._thread.start()
            ready = self._ready
        ready.result(timeout=CONNECT_TIMEOUT_S * 2)  # raises what ended the thread
        if asked:
            self._store.client.publish(self._wake, b"")

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._tasks.pop(task_id, None)

    def _serve(self) -> None:
        pubsub = self._store.client.pubsub()
        channels: dict[bytes, str] = {}  # subscribed one by one: channel -> task id
        try:
            pubsub.psubscribe(self._key_prefix + b"*")
            pubsub.subscribe(self._wake)
            while True:
                message = pubsub.get_message(timeout=WATCHER_IDLE_S)
                if message is not None:
                    self._handle(pubsub, channels, message)
        except Exception as e:
            log.info("celery backend: the watch on results ended: %r", e)
            with self._lock:
                error = self._lost(e)
                for task in self._tasks.values():
                    task.lost = error
                    task.changed()
                self._tasks.clear()
                self._asked.clear()
                self._thread = None
                if not self._ready.done():
                    self._ready.set_exception(error)
        finally:
            with contextlib.suppress(Exception):
                pubsub.close()

    def _handle(self, pubsub: Any, channels: dict[bytes, str], message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if channel == self._wake:
            if kind == "subscribe":  # after the pattern's: both hold now
                self._ready.set_result(None)
            self._take_asks(pubsub, channels)
        elif kind == "pmessage":
            task_id = channel[len(self._key_prefix) :].decode()
            self._update(task_id, self._store.decode_result(message["data"]))
        elif kind == "subscribe" and channel in channels:
            self._read(channels[channel])
        elif kind == "message" and channel in channels:
            if self._update(channels[channel], self._store.decode_result(message["data"])):
                pubsub.unsubscribe(channel)
                del channels[channel]

    def _take_asks(self, pubsub: Any, channels: dict[bytes, str]) -> None:
        """Subscribe to the foreign tasks asked for (read once subscribed), and
        read this client's own again (its pattern covers what comes next)."""
        with self._lock:
            asked = list(self._asked)
            self._asked.clear()
        new: dict[bytes, str] = {}
        for task_id in asked:
            if task_id.startswith(self._prefix):
                self._read(task_id)
            elif self._channel(task_id) not in channels:
                new[self._channel(task_id)] = task_id
        if new:
            channels.update(new)
            pubsub.subscribe(*new)

    def _read(self, task_id: str) -> None:
        meta = self._store.get_task_meta(task_id, cache=False)
        if meta.get("status", "PENDING") != "PENDING":
            self._update(task_id, meta)

    def _update(self, task_id: str, meta: dict[str, Any]) -> bool:
        """A state Celery stored; True once the task needs no more."""
        with self._lock:
            task = self._tasks.get(task_id)
            if task is not None and not task.finished:  # never back from a finish
                task.meta = meta
                task.changed()
            if task is None or task.finished:
                self._tasks.pop(task_id, None)
                return True
            return False

    def _channel(self, task_id: str) -> bytes:
        return bytes(self._store.get_key_for_task(task_id))


def _finished_at(task: _Task) -> float:
    done = (task.meta or {}).get("date_done")
    if not done or not task.finished:
        return 0.0
    try:
        return datetime.fromisoformat(str(done)).timestamp()
    except ValueError:
        return 0.0


def _in_background(call: Any, *args: Any) -> None:
    """Run ``call`` in a thread of its own, not waited for: a revoke for a
    caller that is gone (its loop may be closing)."""

    def run() -> None:
        try:
            call(*args)
        except Exception as e:
            log.warning("celery backend: %s%r failed: %r", call.__name__, args, e)

    threading.Thread(target=run, name="celery-revoke", daemon=True).start()


async def _until(event: cf.Future[None]) -> None:
    """Wait for ``event`` without blocking the loop (as the local backend's)."""
    if event.done():
        return
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[None] = loop.create_future()

    def wake(_: object) -> None:
        with contextlib.suppress(RuntimeError):  # that loop has closed: nobody waits there
            loop.call_soon_threadsafe(_resolve, woken)

    event.add_done_callback(wake)
    await woken


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


# Checks of a request's fields, as the server's service makes them.


def _invalid(message: str) -> InvalidRequestError:
    return InvalidRequestError(f"the Celery backend rejected the call: {message}")


def _check_sizes(payloads: list[bytes]) -> None:
    for payload in payloads:
        if not payload:
            raise _invalid("empty payload: a request must carry a pickled or JSON call")
        if len(payload) > MAX_PAYLOAD_BYTES:
            raise _invalid(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")


def _retries(retries: int) -> int:
    if retries > MAX_RETRIES:
        raise _invalid(f"retries is at most {MAX_RETRIES}, got {retries}")
    return retries


def _time_limit(seconds: float) -> float | None:
    if not (math.isfinite(seconds) and 0.0 <= seconds <= MAX_TIME_LIMIT_S):
        raise _invalid(
            f"time_limit_s must be 0 (none) or a number of seconds up to "
            f"{MAX_TIME_LIMIT_S:.0f} (a year), got {seconds!r}"
        )
    return seconds or None


def _text(name: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise _invalid(f"{name} is at most {limit} characters, got {len(value)}: {brief(value)}")
    return value


def _item_counts(counts: list[int], payloads: int) -> list[int]:
    if not counts:
        return [1] * payloads
    if len(counts) != payloads or min(counts) < 1:
        raise _invalid("item_counts needs one count of at least 1 per payload")
    if max(counts) > MAX_ITEMS_PER_JOB:
        raise _invalid(f"item_counts are at most {MAX_ITEMS_PER_JOB} calls per payload")
    return counts


def _state(value: int) -> JobState:
    try:
        return JobState.from_proto(value)
    except ValueError:
        raise _invalid(f"state {value} is not a job state this backend knows") from None
