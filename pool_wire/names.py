"""The names client, server and worker share, mirrored from ``proto/pool.proto``.

The proto enums are the source of truth; these ``StrEnum`` mirrors give
Python code and text output (JSON, logs, ``pool-client``) the same strings.
A member's value is how text spells it; :meth:`to_proto` and
:meth:`from_proto` convert to and from the proto enum by name.
``tests/test_names.py`` checks that every proto value has its member and
every member its proto value.
"""

from __future__ import annotations

import enum
import re
from typing import Self

from pool_proto import pool_pb2

# Trailing-metadata keys of an error status (set by pool_server/errors.py,
# read by distribute_client/_transport.py).
KIND_KEY = "pool-error"
WORKER_ID_KEY = "pool-worker-id"
EXIT_CODE_KEY = "pool-exit-code"


class _ProtoName(enum.StrEnum):
    """Mirrors the proto enum of the same name, whose values carry the class
    name as a prefix (``JobState.DONE`` is ``JOB_STATE_DONE``)."""

    @classmethod
    def proto_prefix(cls) -> str:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).upper() + "_"

    def to_proto(self) -> str:
        """The proto value's name, which protobuf takes wherever it takes the value."""
        return f"{self.proto_prefix()}{self.name}"

    @classmethod
    def from_proto(cls, value: int) -> Self:
        """The member for a proto value; ``ValueError`` for UNSPECIFIED or an unknown number."""
        name = getattr(pool_pb2, cls.__name__).Name(value).removeprefix(cls.proto_prefix())
        if name not in cls.__members__:
            raise ValueError(f"{cls.__name__} {name} has no meaning here")
        return cls[name]


class JobState(_ProtoName):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"
    INTERRUPTED = "INTERRUPTED"

    @property
    def finished(self) -> bool:
        """True for the states a job never leaves."""
        return self in FINISHED_STATES


# The one definition of "finished": a job in one of these has its outcome or
# its error, and never changes again.
FINISHED_STATES = frozenset(
    {JobState.DONE, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)


class WorkerState(_ProtoName):
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    DEAD = "dead"


class ErrorKind(_ProtoName):
    INTERNAL = "internal"
    WORKER_CRASHED = "worker-crashed"
    DEADLINE = "deadline"
    INVALID = "invalid"
    SHUTTING_DOWN = "shutting-down"
    JOB_TIMED_OUT = "job-timed-out"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"
    NOT_FOUND = "not-found"
    JOURNAL_UNAVAILABLE = "journal-unavailable"
    QUEUE_FULL = "queue-full"
