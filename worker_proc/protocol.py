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

import pybase64

PROTOCOL_VERSION = 2

# The largest call payload (and the largest outcome) one line may carry. The
# limit exists so that a runaway client cannot make the server buffer without
# bound; 1 GiB leaves room for 100 MB+ arrays while staying well inside gRPC's
# 2 GiB message ceiling.
MAX_PAYLOAD_BYTES = 1 << 30

# base64 grows data by 4/3; 128 bytes cover the kind token, ids and newline.
MAX_LINE_BYTES = (MAX_PAYLOAD_BYTES + 2) // 3 * 4 + 128

_MAX_KIND_LEN = 16  # the longest kind token, PROGRESS, with room to spare


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


def encode(message: Message) -> bytes:
    """Return ``message`` as one newline-terminated line."""
    return b"".join(encode_parts(message))


def encode_parts(message: Message) -> tuple[bytes, ...]:
    """``message``'s line in pieces (head, base64, newline) to be written one
    after another: for a large payload this saves joining them, which would
    copy the whole base64 once more."""
    match message:
        case Ready(pid, version):
            return (b"READY %d %d\n" % (pid, version),)
        case JobRequest(job_id, payload):
            return b"JOB %s " % job_id.encode(), _b64(payload), b"\n"
        case Progress(job_id, fraction, text):
            amount = b"-" if fraction is None else repr(fraction).encode()
            return b"PROGRESS %s %s " % (job_id.encode(), amount), _b64(text.encode()), b"\n"
        case JobOutcome(job_id, status, outcome):
            head = b"RESULT %s %s " % (job_id.encode(), status.value.encode())
            return head, _b64(outcome), b"\n"
    raise TypeError(f"not a protocol message: {message!r}")


def decode_line(line: bytes) -> Message:
    """Parse one line (with or without its newline) into a message.

    The base64 part is decoded straight from the line, never sliced out of
    it: for a 128 MiB payload every avoided copy is tens of milliseconds."""
    end = len(line) - 1 if line.endswith(b"\n") else len(line)
    kind = line[:_MAX_KIND_LEN].partition(b" ")[0].rstrip(b"\n")
    start = len(kind) + 1
    try:
        if kind == b"READY":
            pid, version = line[start:end].split(b" ")
            return Ready(int(pid), int(version))
        if kind == b"JOB":
            fields, data = _split_fields(line, start, end, 1)
            return JobRequest(fields[0], _unb64(data))
        if kind == b"PROGRESS":
            (job, amount), data = _split_fields(line, start, end, 2)
            fraction = None if amount == "-" else float(amount)
            return Progress(job, fraction, _unb64(data).decode())
        if kind == b"RESULT":
            (job, status), data = _split_fields(line, start, end, 2)
            return JobOutcome(job, ResultStatus(status), _unb64(data))
    except (ValueError, binascii.Error) as e:
        raise ProtocolError(f"malformed {kind!r} line: {line[:80]!r}") from e
    raise ProtocolError(f"unknown line kind {kind!r}: {line[:80]!r}")


def _split_fields(line: bytes, start: int, end: int, count: int) -> tuple[list[str], memoryview]:
    """Split ``count`` short fields off ``line[start:end]``, then return the
    (possibly huge) base64 part as a view, without copying it."""
    fields = []
    for _ in range(count):
        stop = line.index(b" ", start, end)
        field = line[start:stop].decode("ascii")
        if not field:
            raise ValueError("empty field")
        fields.append(field)
        start = stop + 1
    return fields, memoryview(line)[start:end]


def _b64(data: bytes) -> bytes:
    return pybase64.b64encode(data)


def _unb64(data: memoryview) -> bytes:
    return pybase64.b64decode(data, validate=True)
