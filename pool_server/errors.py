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
