"""Every error the client raises for the pool itself (not for your function).

A remote function's own exception is re-raised as its own type; these are
for everything else. Each error kind the server answers with
(``pool_wire.names.ErrorKind``, from ``proto/pool.proto``) has its own class,
shown after it; the classes marked *client* are raised by the client alone::

    PoolError                         client: the base, and a status no kind explains
    ├── AuthenticationError           client: no token, or one the server does not accept
    ├── ServerUnavailableError        client: no answer at all (also ConnectionError)
    │   ├── ServerShuttingDownError   shutting-down
    │   └── JournalUnavailableError   journal-unavailable
    ├── CallTimeoutError              deadline (also TimeoutError)
    │   └── JobTimedOutError          job-timed-out
    ├── WorkerCrashedError            worker-crashed
    ├── JobInterruptedError           interrupted
    ├── JobCancelledError             cancelled
    ├── JobNotFoundError              not-found (also LookupError)
    ├── QueueFullError                queue-full
    ├── ServerError                   internal
    ├── ProtocolError                 client: an answer this client cannot read
    │   └── InvalidRequestError       invalid
    ├── RemoteError                   client: a remote exception not rebuilt here
    └── SerializationError            client: pickling or unpickling failed

:data:`ERRORS_BY_KIND` is that mapping, the one ``_transport`` translates
with; :data:`CLIENT_ONLY_ERRORS` lists the rest (``tests/test_names.py``
checks that the two cover every class, and that no two kinds share one).
"""

from __future__ import annotations

import signal
from typing import Any

from pool_wire.names import ErrorKind


class PoolError(Exception):
    """Base class: the pool could not run the call and return its outcome
    (raised as itself for a gRPC status that no error kind explains)."""


class AuthenticationError(PoolError):
    """Raised by any call the server refuses for its token: none was found
    (``UNAUTHENTICATED``) or the server does not accept it (``PERMISSION_DENIED``);
    the message says where the client looks for one."""


class ServerUnavailableError(PoolError, ConnectionError):
    """Raised by any call when no pool-server answers at the address."""


class ServerShuttingDownError(ServerUnavailableError):
    """Raised by any call the server refuses or stops because it is shutting down."""


class JournalUnavailableError(ServerUnavailableError):
    """Raised by ``submit()`` and job lookups when the server cannot read or
    write its job journal (a full disk, say)."""


class CallTimeoutError(PoolError, TimeoutError):
    """Raised by ``compute()`` when the call's timeout passes, queued or running
    (a running call's worker is stopped and replaced), and by ``Job.result()``
    when its ``timeout`` passes first."""


class JobTimedOutError(CallTimeoutError):
    """Raised by ``Job.result()`` (and a durable ``compute()``) for a job that
    ran past its time limit; its worker was stopped and replaced."""


class WorkerCrashedError(PoolError):
    """Raised by ``compute()`` and ``Job.result()`` when the worker running the
    call died (exit, signal, OOM kill) and no retries were left."""

    def __init__(
        self, message: str, exit_code: int | None = None, worker_id: int | None = None
    ) -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.worker_id = worker_id

    @property
    def signal_name(self) -> str | None:
        """e.g. ``"SIGKILL"`` when the worker was killed by a signal."""
        if self.exit_code is None or self.exit_code >= 0:
            return None
        try:
            return signal.Signals(-self.exit_code).name
        except ValueError:
            return f"signal {-self.exit_code}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.exit_code, self.worker_id))


class JobInterruptedError(PoolError):
    """Raised by ``Job.result()`` for a job whose last attempt was cut short by
    the server stopping."""


class JobCancelledError(PoolError):
    """Raised by ``Job.result()`` (and ``compute()``) for a cancelled job."""


class JobNotFoundError(PoolError, LookupError):
    """Raised by job and batch lookups for an id the server does not know
    (never submitted there, or finished longer ago than its --result-ttl)."""


class QueueFullError(PoolError):
    """Raised by ``submit()`` when the server's queue has no room for the jobs
    (it is refused at once, never half-submitted)."""


class ServerError(PoolError):
    """Raised by any call that failed on a bug in the server (see its log)."""


class ProtocolError(PoolError):
    """Raised by ``compute()`` and ``Job.result()`` when the server or worker
    answers with something this client cannot read (a version mismatch)."""


class InvalidRequestError(ProtocolError):
    """Raised by any call the server rejects as malformed (an empty or
    oversized payload, say)."""


class RemoteError(PoolError):
    """Raised by ``compute()`` and ``Job.result()`` for a remote exception whose
    type cannot be rebuilt here (its class is not importable, it would not
    pickle, or it was ``SystemExit`` / ``KeyboardInterrupt``, which must not
    stop the caller's process)."""

    def __init__(self, type_name: str, message: str, remote_traceback: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}\n\nRemote traceback:\n{self.remote_traceback}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_name, self.message, self.remote_traceback))


class SerializationError(PoolError):
    """Raised by calls, jobs and maps when the call, its arguments or its
    return value cannot be pickled or unpickled, on either side (or, for
    ``Client.submit_json``, written as JSON)."""


# The class each error kind of the server becomes: one each.
ERRORS_BY_KIND: dict[ErrorKind, type[PoolError]] = {
    ErrorKind.INTERNAL: ServerError,
    ErrorKind.WORKER_CRASHED: WorkerCrashedError,
    ErrorKind.DEADLINE: CallTimeoutError,
    ErrorKind.INVALID: InvalidRequestError,
    ErrorKind.SHUTTING_DOWN: ServerShuttingDownError,
    ErrorKind.JOB_TIMED_OUT: JobTimedOutError,
    ErrorKind.INTERRUPTED: JobInterruptedError,
    ErrorKind.CANCELLED: JobCancelledError,
    ErrorKind.NOT_FOUND: JobNotFoundError,
    ErrorKind.JOURNAL_UNAVAILABLE: JournalUnavailableError,
    ErrorKind.QUEUE_FULL: QueueFullError,
}

# The classes no error kind maps to: the client raises them on its own.
CLIENT_ONLY_ERRORS: frozenset[type[PoolError]] = frozenset(
    {
        PoolError,
        AuthenticationError,
        ServerUnavailableError,
        ProtocolError,
        RemoteError,
        SerializationError,
    }
)
