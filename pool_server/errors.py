"""Errors the server answers a call with, each carrying its gRPC status.

``service.py`` is the only place that turns these into a gRPC status; the
``kind`` travels in trailing metadata so the client can map it to its own
exception hierarchy without parsing messages.
"""

from __future__ import annotations

import grpc

from pool_wire.names import EXIT_CODE_KEY, KIND_KEY, WORKER_ID_KEY, ErrorKind


class CallError(Exception):
    """Base: a call could not be answered with an outcome."""

    code = grpc.StatusCode.INTERNAL
    kind = ErrorKind.INTERNAL

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((KIND_KEY, self.kind.value),)


class WorkerCrashed(CallError):
    """The worker running the call died before answering."""

    code = grpc.StatusCode.ABORTED
    kind = ErrorKind.WORKER_CRASHED

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
    kind = ErrorKind.DEADLINE


class InvalidCall(CallError):
    """The request itself is unusable (empty or oversized payload)."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    kind = ErrorKind.INVALID


class ShuttingDown(CallError):
    """The server stopped taking calls."""

    code = grpc.StatusCode.UNAVAILABLE
    kind = ErrorKind.SHUTTING_DOWN


class JobTimedOut(CallError):
    """A job ran past its time limit; its worker was replaced."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    kind = ErrorKind.JOB_TIMED_OUT


class JobInterrupted(CallError):
    """The server stopped while the job ran its last attempt."""

    code = grpc.StatusCode.ABORTED
    kind = ErrorKind.INTERRUPTED


class JobCancelled(CallError):
    """The job was cancelled (by CancelJob, or its caller went away)."""

    code = grpc.StatusCode.CANCELLED
    kind = ErrorKind.CANCELLED


class JobNotFound(CallError):
    """No job with that id (never submitted, or its result expired)."""

    code = grpc.StatusCode.NOT_FOUND
    kind = ErrorKind.NOT_FOUND


class JournalUnavailable(CallError):
    """The job journal cannot be written (a full disk, say)."""

    code = grpc.StatusCode.UNAVAILABLE
    kind = ErrorKind.JOURNAL_UNAVAILABLE


class QueueFull(CallError):
    """Submit would put more jobs in the queue than --queue-size allows."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    kind = ErrorKind.QUEUE_FULL


# Every kind has exactly one class (tests/test_names.py checks it).
_CLASSES: list[type[CallError]] = [CallError, *CallError.__subclasses__()]
ERRORS_BY_KIND: dict[ErrorKind, type[CallError]] = {cls.kind: cls for cls in _CLASSES}


def error_from_record(
    kind: str, message: str, worker_id: int | None, exit_code: int | None
) -> CallError:
    """Rebuild a job's error from its journal columns."""
    if kind == WorkerCrashed.kind:
        return WorkerCrashed(message, worker_id or 0, exit_code)
    try:
        cls = ERRORS_BY_KIND[ErrorKind(kind)]
    except ValueError:  # a kind this version does not know
        cls = CallError
    return cls(message)
