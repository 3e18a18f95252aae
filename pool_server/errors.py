"""Errors the server answers a call with, each carrying its gRPC status.

``service.py`` is the only place that turns these into a gRPC status; the
``kind`` travels in trailing metadata so the client can map it to its own
exception hierarchy without parsing messages.
"""

from __future__ import annotations

import grpc

# Trailing-metadata keys shared with distribute_client/_transport.py.
KIND_KEY = "pool-error"
WORKER_ID_KEY = "pool-worker-id"
EXIT_CODE_KEY = "pool-exit-code"


class CallError(Exception):
    """Base: a call could not be answered with an outcome."""

    code = grpc.StatusCode.INTERNAL
    kind = "internal"

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((KIND_KEY, self.kind),)


class WorkerCrashed(CallError):
    """The worker running the call died before answering."""

    code = grpc.StatusCode.ABORTED
    kind = "worker-crashed"

    def __init__(self, message: str, worker_id: int, exit_code: int | None) -> None:
        super().__init__(message)
        self.worker_id = worker_id
        self.exit_code = exit_code

    def metadata(self) -> tuple[tuple[str, str], ...]:
        extra: tuple[tuple[str, str], ...] = ((WORKER_ID_KEY, str(self.worker_id)),)
        if self.exit_code is not None:
            extra += ((EXIT_CODE_KEY, str(self.exit_code)),)
        return super().metadata() + extra


class DeadlineExceeded(CallError):
    """The call's deadline passed while it waited or ran."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    kind = "deadline"


class InvalidCall(CallError):
    """The request itself is unusable (empty or oversized payload)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    kind = "invalid"


class ShuttingDown(CallError):
    """The server stopped taking calls."""

    code = grpc.StatusCode.UNAVAILABLE
    kind = "shutting-down"


class JobTimedOut(CallError):
    """A job ran past its time limit; its worker was replaced."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    kind = "job-timed-out"


class JobInterrupted(CallError):
    """The server stopped while the job ran its last attempt."""

    code = grpc.StatusCode.ABORTED
    kind = "interrupted"


class JobCancelled(CallError):
    """The job was cancelled (by CancelJob, or its caller went away)."""

    code = grpc.StatusCode.CANCELLED
    kind = "cancelled"


class JobNotFound(CallError):
    """No job with that id (never submitted, or its result expired)."""

    code = grpc.StatusCode.NOT_FOUND
    kind = "not-found"


class JournalUnavailable(CallError):
    """The job journal cannot be written (a full disk, say)."""

    code = grpc.StatusCode.UNAVAILABLE
    kind = "journal-unavailable"


class QueueFull(CallError):
    """Submit would put more jobs in the queue than --queue-size allows."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = "queue-full"


_KINDS: dict[str, type[CallError]] = {
    cls.kind: cls
    for cls in (
        CallError,
        DeadlineExceeded,
        InvalidCall,
        ShuttingDown,
        JobTimedOut,
        JobInterrupted,
        JobCancelled,
    )
}


def error_from_record(
    kind: str, message: str, worker_id: int | None, exit_code: int | None
) -> CallError:
    """Rebuild a job's error from its journal columns."""
    if kind == WorkerCrashed.kind:
        return WorkerCrashed(message, worker_id or 0, exit_code)
    return _KINDS.get(kind, CallError)(message)
