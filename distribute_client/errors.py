"""Every error the client raises for the pool itself (not for your function).

A remote function's own exception is re-raised as its own type; these are
for everything else::

    PoolError
    ├── ServerUnavailableError   (also ConnectionError)
    ├── CallTimeoutError         (also TimeoutError)
    ├── WorkerCrashedError
    ├── RemoteError
    ├── SerializationError
    ├── ProtocolError
    ├── QueueFullError
    ├── JobCancelledError
    └── JobNotFoundError         (also LookupError)
"""

from __future__ import annotations

import signal
from typing import Any


class PoolError(Exception):
    """Base class: the pool could not run the call and return its outcome."""


class ServerUnavailableError(PoolError, ConnectionError):
    """Raised by any call when no pool-server answers at the address."""


class CallTimeoutError(PoolError, TimeoutError):
    """Raised when a call's timeout passes, queued or running (a running
    call's worker is stopped and replaced)."""


class WorkerCrashedError(PoolError):
    """Raised when the worker running the call died (exit, signal, OOM kill)."""

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


class RemoteError(PoolError):
    """Raised for a remote exception whose type cannot be rebuilt here (its
    class is not importable, it would not pickle, or it was ``SystemExit`` /
    ``KeyboardInterrupt``, which must not stop the caller's process)."""

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
    """Raised when the call, its arguments or its return value cannot be
    pickled or unpickled, on either side."""


class ProtocolError(PoolError):
    """Raised when the server rejects a request as malformed, or answers
    with something this client cannot read (a version mismatch)."""


class QueueFullError(PoolError):
    """Raised by ``submit()`` when the server's queue has no room for the jobs
    (it is refused at once, never half-submitted)."""


class JobCancelledError(PoolError):
    """Raised by ``Job.result()`` (and ``compute()``) for a cancelled job."""


class JobNotFoundError(PoolError, LookupError):
    """Raised for a job or batch id the server does not know (never
    submitted there, or finished longer ago than its --result-ttl)."""
