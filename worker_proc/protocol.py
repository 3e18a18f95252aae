"""The line protocol between the server and one worker process (sans-I/O).

Every message is one line of ASCII: a kind token, space-separated fields, and
binary data as base64. Nothing here does I/O; the supervisor and the worker
both use these functions, so the format lives in exactly one place.

    worker -> server   READY <pid> <protocol-version>
    server -> worker   JOB <job-id> <base64 payload>
    worker -> server   RESULT <job-id> <base64 outcome>
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

PROTOCOL_VERSION = 1

# The largest call payload (and the largest outcome) one line may carry. The
# limit exists so that a runaway client cannot make the server buffer without
# bound; 1 GiB leaves room for 100 MB+ arrays while staying well inside gRPC's
# 2 GiB message ceiling.
MAX_PAYLOAD_BYTES = 1 << 30

# base64 grows data by 4/3; 64 bytes cover the kind token, ids and newline.
MAX_LINE_BYTES = (MAX_PAYLOAD_BYTES + 2) // 3 * 4 + 64


class ProtocolError(Exception):
    """A line that does not follow this protocol."""


@dataclass(frozen=True, slots=True)
class Ready:
    """The handshake a new worker sends before it takes any job."""

    pid: int
    version: int


@dataclass(frozen=True, slots=True)
class JobRequest:
    """One call for the worker to run; ``payload`` is opaque to the server."""

    job_id: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """The worker's answer to one job; ``outcome`` is opaque to the server."""

    job_id: int
    outcome: bytes


Message = Ready | JobRequest | JobOutcome


def encode(message: Message) -> bytes:
    """Return ``message`` as one newline-terminated line."""
    match message:
        case Ready(pid, version):
            return b"READY %d %d\n" % (pid, version)
        case JobRequest(job_id, payload):
            return b"JOB %d %s\n" % (job_id, binascii.b2a_base64(payload, newline=False))
        case JobOutcome(job_id, outcome):
            return b"RESULT %d %s\n" % (job_id, binascii.b2a_base64(outcome, newline=False))
    raise TypeError(f"not a protocol message: {message!r}")


def decode_line(line: bytes) -> Message:
    """Parse one line (with or without its newline) into a message."""
    try:
        kind, _, rest = line.rstrip(b"\n").partition(b" ")
        if kind == b"READY":
            pid, version = rest.split(b" ")
            return Ready(int(pid), int(version))
        if kind in (b"JOB", b"RESULT"):
            job_id, data = _split_data(rest)
            blob = binascii.a2b_base64(data, strict_mode=True)
            return JobRequest(job_id, blob) if kind == b"JOB" else JobOutcome(job_id, blob)
    except (ValueError, binascii.Error) as e:
        raise ProtocolError(f"malformed {kind!r} line: {line[:80]!r}") from e
    raise ProtocolError(f"unknown line kind {kind!r}: {line[:80]!r}")


def _split_data(rest: bytes) -> tuple[int, memoryview]:
    """Split ``<id> <base64>`` without copying the (possibly huge) base64 part."""
    space = rest.index(b" ")
    return int(rest[:space]), memoryview(rest)[space + 1 :]
