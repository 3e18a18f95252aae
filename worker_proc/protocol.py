"""The line protocol between the server and one worker process (sans-I/O).

Every message is one line of ASCII: a kind token, space-separated fields, and
binary or free text as base64. Nothing here does I/O; the supervisor and the
worker both use these functions, so the format lives in exactly one place.

    worker -> server   READY <pid> <protocol-version>
    server -> worker   JOB <job-id> <base64 payload>
    worker -> server   PROGRESS <job-id> <fraction or -> <base64 message>   (any number)
    worker -> server   RESULT <job-id> <ok|error|retry> <base64 outcome>

The RESULT status is all the server learns of an outcome it never unpickles:
``error`` means the call failed, ``retry`` that it failed with an exception
the caller asked to retry on.
"""

from __future__ import annotations

import binascii
import enum
from dataclasses import dataclass

PROTOCOL_VERSION = 2

# The largest call payload (and the largest outcome) one line may carry. The
# limit exists so that a runaway client cannot make the server buffer without
# bound; 1 GiB leaves room for 100 MB+ arrays while staying well inside gRPC's
# 2 GiB message ceiling.
MAX_PAYLOAD_BYTES = 1 << 30

# base64 grows data by 4/3; 128 bytes cover the kind token, ids and newline.
MAX_LINE_BYTES = (MAX_PAYLOAD_BYTES + 2) // 3 * 4 + 128


class ProtocolError(Exception):
    """A line that does not follow this protocol."""


class ResultStatus(enum.Enum):
    OK = "ok"
    ERROR = "error"
    RETRY = "retry"


@dataclass(frozen=True, slots=True)
class Ready:
    """The handshake a new worker sends before it takes any job."""

    pid: int
    version: int


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One call for the worker to run; ``payload`` is opaque to the server."""

    job_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress report from inside a running job."""

    job_id: str
    fraction: float | None
    message: str


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """The worker's answer to one job; ``outcome`` is opaque to the server."""

    job_id: str
    status: ResultStatus
    outcome: bytes


Message = Ready | JobRequest | Progress | JobOutcome


def _b64(data: bytes) -> bytes:
    return binascii.b2a_base64(data, newline=False)


def encode(message: Message) -> bytes:
    """Return ``message`` as one newline-terminated line."""
    match message:
        case Ready(pid, version):
            return b"READY %d %d\n" % (pid, version)
        case JobRequest(job_id, payload):
            return b"JOB %s %s\n" % (job_id.encode(), _b64(payload))
        case Progress(job_id, fraction, text):
            amount = b"-" if fraction is None else repr(fraction).encode()
            return b"PROGRESS %s %s %s\n" % (job_id.encode(), amount, _b64(text.encode()))
        case JobOutcome(job_id, status, outcome):
            return b"RESULT %s %s %s\n" % (job_id.encode(), status.value.encode(), _b64(outcome))
    raise TypeError(f"not a protocol message: {message!r}")


def encode_parts(message: JobRequest) -> tuple[bytes, bytes, bytes]:
    """A JOB line in three pieces (head, base64, newline), to be written one
    after another: for a large payload this saves joining them, which would
    copy the whole base64 once more."""
    return b"JOB %s " % message.job_id.encode(), _b64(message.payload), b"\n"


def decode_line(line: bytes) -> Message:
    """Parse one line (with or without its newline) into a message."""
    kind, _, rest = line.rstrip(b"\n").partition(b" ")
    try:
        if kind == b"READY":
            pid, version = rest.split(b" ")
            return Ready(int(pid), int(version))
        if kind == b"JOB":
            fields, data = _split_fields(rest, 1)
            return JobRequest(fields[0], _unb64(data))
        if kind == b"PROGRESS":
            (job, amount), data = _split_fields(rest, 2)
            fraction = None if amount == "-" else float(amount)
            return Progress(job, fraction, _unb64(data).decode())
        if kind == b"RESULT":
            (job, status), data = _split_fields(rest, 2)
            return JobOutcome(job, ResultStatus(status), _unb64(data))
    except (ValueError, binascii.Error) as e:
        raise ProtocolError(f"malformed {kind!r} line: {line[:80]!r}") from e
    raise ProtocolError(f"unknown line kind {kind!r}: {line[:80]!r}")


def _split_fields(rest: bytes, count: int) -> tuple[list[str], memoryview]:
    """Split ``count`` short fields off the front, then the (possibly huge)
    base64 part, without copying the latter."""
    fields = []
    start = 0
    for _ in range(count):
        end = rest.index(b" ", start)
        field = rest[start:end].decode("ascii")
        if not field:
            raise ValueError("empty field")
        fields.append(field)
        start = end + 1
    return fields, memoryview(rest)[start:]


def _unb64(data: memoryview) -> bytes:
    return binascii.a2b_base64(data, strict_mode=True)
