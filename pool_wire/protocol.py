"""The line protocol between the server and one worker process (sans-I/O).

Every message is one line of ASCII: a kind token, space-separated fields, and
binary or free text as base64. Nothing here does I/O; the supervisor and the
worker both use these functions, so the format lives in exactly one place.

    worker -> server   READY <pid> <protocol-version>
    server -> worker   FUNCTION <key> <base64 pickled function>          (before a JOB)
    server -> worker   JOB <job-id> <base64 payload>
    server -> worker   JOBREF <job-id> <offset> <length>                 (payload in the arena)
    worker -> server   PROGRESS <job-id> <fraction or -> <base64 message>   (any number)
    worker -> server   OUTPUT <job-id> <skipped> <base64 text>              (any number)
    worker -> server   RETIRING <job-id> <base64 reason>                    (rarely)
    worker -> server   RAISED <job-id> <base64 "Type: message">             (a failed call)
    worker -> server   RESULT <job-id> <ok|error|retry|missing> <base64 outcome>
    worker -> server   RESULTREF <job-id> <status> <offset> <length>     (outcome in the arena)

RETIRING comes just before a RESULT when the call left the worker unfit for
another (it closed fds 0-2, or ignored SIGTERM): the worker exits after the
RESULT, and the server replaces it before it takes the next job. It must
come first, not after: a line after the RESULT could arrive after the
server had sent that worker the next job.

OUTPUT carries what the running call printed (stdout and stderr as they
interleave), as it prints it, for the job's followers (issue 15): the worker
sends what was printed since its last OUTPUT line at most every
``worker_proc.reporting.OUTPUT_INTERVAL_S``, at most ``MAX_OUTPUT_CHARS``
of it (the latest), and ``skipped`` counts the characters printed before
``text`` that it left out. The call's output still comes whole in its
outcome; OUTPUT lines are a live view of it.

RAISED comes just before the RESULT of a call that failed: the type and
message of its exception, as text, so that a FAILED job's status, listing
and JSON say why (issue 15) although the server never unpickles the
outcome that holds the exception itself.

The RESULT status is all else the server learns of an outcome it never unpickles:
``error`` means the call failed, ``retry`` that it failed with an exception
the caller asked to retry on, ``missing`` that the payload named a function
by key (``function_hash``) that the worker does not have: the outcome is a
BAD_REQUEST saying so, and the server sends the function and the job again.

Functions are sent once per worker (issue 10): a FUNCTION line puts the
pickled function in the worker's cache (``pool_wire.function_cache``) under
its key, for the JOB that follows and every later one that names the key.
It is a line of its own, not a field of JOB, so that every line keeps at
most one base64 part, the last, which the reader decodes as it arrives.

Payloads above ``ARENA_THRESHOLD_BYTES`` travel through the worker's
shared-memory arena (``pool_wire.arena``, which says who owns it when):
JOBREF and RESULTREF carry where the payload lies instead of the payload.
They carry no base64 part, so they are short, whole-field lines like READY.

Payloads run to 1 GiB, so neither side holds a long line whole: the writer
encodes base64 a piece at a time (:func:`encode_parts`) and the reader
decodes it as it arrives (:class:`LineReader`), in the manner of h11.
"""

from __future__ import annotations

import binascii
import enum
from collections.abc import Iterator
from dataclasses import dataclass

import pybase64

from pool_wire.arena import Span
from pool_wire.limits import MAX_PAYLOAD_BYTES

# 4: FUNCTION, JOBREF and RESULTREF lines, and the ``missing`` status (issue 10).
# 5: RAISED lines (issue 15).
# 6: OUTPUT lines (issue 15).
PROTOCOL_VERSION = 6

# The most text one OUTPUT line carries (the latest printed; the rest is
# counted as skipped): a live view needs the tail, not a flood.
MAX_OUTPUT_CHARS = 16 * 1024

# base64 grows data by 4/3; 128 bytes cover the kind token, ids and newline.
MAX_LINE_BYTES = (MAX_PAYLOAD_BYTES + 2) // 3 * 4 + 128

_MAX_KIND_LEN = 16  # the longest kind token, RESULTREF, with room to spare

# How many space-separated fields come between a kind and its base64 part.
_BODY_FIELDS = {
    b"FUNCTION": 1,
    b"JOB": 1,
    b"PROGRESS": 2,
    b"OUTPUT": 2,
    b"RETIRING": 1,
    b"RAISED": 1,
    b"RESULT": 2,
}

# Lines of fields only, and how many fields each has.
_REF_FIELDS = {b"JOBREF": 3, b"RESULTREF": 4}

# A head (kind and fields) longer than this is not one.
_MAX_HEAD_BYTES = 1024

# A long line's base64 is written in pieces of this many payload bytes (a
# multiple of 3, so the pieces' base64 joins into the whole's), 1 MiB encoded.
CHUNK_BYTES = 3 * 256 * 1024


class ProtocolError(Exception):
    """A line that does not follow this protocol.

    From :meth:`LineReader.feed`, ``messages`` holds the messages completed
    before the broken line by the same call, in order: they arrived whole,
    and are the caller's to handle before it gives up on the stream.
    """

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.messages: list[Message] = []


class ResultStatus(enum.Enum):
    OK = "ok"
    ERROR = "error"
    RETRY = "retry"
    MISSING = "missing"  # the worker lacks the function the payload names


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
class ArenaJob:
    """A JobRequest whose payload lies in the worker's arena at ``span``."""

    job_id: str
    span: Span


@dataclass(frozen=True, slots=True)
class FunctionBytes:
    """A pickled function for the worker's cache, under ``key``."""

    key: str
    pickled: bytes


@dataclass(frozen=True, slots=True)
class Progress:
    """A progress report from inside a running job."""

    job_id: str
    fraction: float | None
    message: str


@dataclass(frozen=True, slots=True)
class Output:
    """What the running job printed since its last Output: ``text``, after
    ``skipped`` characters printed before it and left out."""

    job_id: str
    skipped: int
    text: str


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """The worker's answer to one job; ``outcome`` is opaque to the server."""

    job_id: str
    status: ResultStatus
    outcome: bytes


@dataclass(frozen=True, slots=True)
class ArenaOutcome:
    """A JobOutcome whose outcome lies in the worker's arena at ``span``."""

    job_id: str
    status: ResultStatus
    span: Span


@dataclass(frozen=True, slots=True)
class Retiring:
    """The worker will exit after its RESULT for ``job_id``, for ``reason``."""

    job_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Raised:
    """The call of ``job_id`` failed with this exception: ``summary`` is its
    type and message as text (``ValueError: bad input``), for status views."""

    job_id: str
    summary: str


Message = (
    Ready
    | FunctionBytes
    | JobRequest
    | ArenaJob
    | Progress
    | Output
    | Retiring
    | Raised
    | JobOutcome
    | ArenaOutcome
)


def encode(message: Message) -> bytes:
    """Return ``message`` as one newline-terminated line."""
    return b"".join(encode_parts(message))


def encode_parts(message: Message) -> Iterator[bytes]:
    """``message``'s line in pieces to be written one after another.

    A short line is one piece (one write). A long one is its head, then its
    base64 in ``CHUNK_BYTES`` pieces encoded as they are asked for, then the
    newline: writing it never holds more than one piece of base64, where
    encoding it whole would hold 4/3 of the payload at once.
    """
    head, body = _head_and_body(message)
    if len(body) <= CHUNK_BYTES:
        yield head + _b64(body) + b"\n"
        return
    yield head
    view = memoryview(body)
    for start in range(0, len(view), CHUNK_BYTES):
        yield _b64(view[start : start + CHUNK_BYTES])
    yield b"\n"


def _head_and_body(message: Message) -> tuple[bytes, bytes]:
    """The line before its base64 part (with its trailing space), and the
    bytes the base64 part carries."""
    match message:
        case Ready(pid, version):
            return b"READY %d %d" % (pid, version), b""
        case FunctionBytes(key, pickled):
            return b"FUNCTION %s " % key.encode(), pickled
        case ArenaJob(job_id, span):
            return b"JOBREF %s %d %d" % (job_id.encode(), span.offset, span.length), b""
        case ArenaOutcome(job_id, status, span):
            fields = (job_id.encode(), status.value.encode(), span.offset, span.length)
            return b"RESULTREF %s %s %d %d" % fields, b""
        case JobRequest(job_id, payload):
            return b"JOB %s " % job_id.encode(), payload
        case JobOutcome(job_id, status, outcome):
            return b"RESULT %s %s " % (job_id.encode(), status.value.encode()), outcome
        case Progress() | Output() | Retiring() | Raised():
            return _aside_head_and_body(message)
    raise TypeError(f"not a protocol message: {message!r}")


def _aside_head_and_body(message: Progress | Output | Retiring | Raised) -> tuple[bytes, bytes]:
    """As :func:`_head_and_body`, for the lines about a running job."""
    match message:
        case Progress(job_id, fraction, text):
            amount = b"-" if fraction is None else repr(fraction).encode()
            return b"PROGRESS %s %s " % (job_id.encode(), amount), text.encode()
        case Output(job_id, skipped, text):
            return b"OUTPUT %s %d " % (job_id.encode(), skipped), text.encode()
        case Retiring(job_id, reason):
            return b"RETIRING %s " % job_id.encode(), reason.encode()
        case Raised(job_id, summary):
            return b"RAISED %s " % job_id.encode(), summary.encode()
    raise TypeError(f"not a protocol message: {message!r}")


def decode_line(line: bytes) -> Message:
    """Parse one whole line (with or without its newline) into a message.

    The base64 part is decoded straight from the line, never sliced out of
    it: for a 128 MiB payload every avoided copy is tens of milliseconds."""
    end = len(line) - 1 if line.endswith(b"\n") else len(line)
    kind = line[:_MAX_KIND_LEN].partition(b" ")[0].rstrip(b"\n")
    start = len(kind) + 1
    try:
        if kind == b"READY":
            pid, version = line[start:end].split(b" ")
            return Ready(int(pid), int(version))
        if kind in _BODY_FIELDS:
            fields, data = _split_fields(line, start, end, _BODY_FIELDS[kind])
            return _message(kind, fields, _unb64(data))
        if kind in _REF_FIELDS:
            return _ref_message(kind, line[start:end].split(b" "))
    except (ValueError, binascii.Error) as e:
        raise ProtocolError(f"malformed {kind!r} line: {line[:80]!r}") from e
    raise ProtocolError(f"unknown line kind {kind!r}: {line[:80]!r}")


class LineReader:
    """Messages from a byte stream fed in chunks of any size (sans-I/O).

    Short lines are parsed whole. A line that spans chunks has its base64
    decoded as it arrives, so a 128 MiB payload is never held as its
    171 MiB line, let alone as the copies a line reader makes of it.

    A broken line ends the stream: :meth:`feed` raises :class:`ProtocolError`
    carrying the messages completed before it (a RESULT followed by garbage
    in one read still delivers the RESULT), and every later call raises too.
    However the stream is cut into chunks, the same messages come before the
    break (issue 8).
    """

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self._max_line_bytes = max_line_bytes
        self._head = bytearray()  # the start of a line that spans chunks
        self._body: _Body | None = None  # its base64 part, once the head is complete
        self._broken: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Message]:
        """The messages completed by ``data``.

        Raises :class:`ProtocolError` at the first broken line, with the
        messages before it in ``messages``; once broken, always broken.
        """
        if self._broken is not None:
            raise ProtocolError(f"the stream broke earlier: {self._broken}")
        messages: list[Message] = []
        try:
            self._parse(data, messages)
        except ProtocolError as e:
            e.messages = messages
            self._broken = e
            raise
        return messages

    def _parse(self, data: bytes, messages: list[Message]) -> None:
        start = 0
        while start < len(data):
            if self._body is not None:
                start = self._feed_body(self._body, data, start, messages)
                continue
            newline = data.find(b"\n", start)
            if newline != -1 and not self._head:  # a whole line in this chunk
                messages.append(self._decode(data[start:newline]))
                start = newline + 1
                continue
            stop = len(data) if newline == -1 else newline + 1
            self._head += data[start:stop]
            start = stop
            if newline != -1:
                line, self._head = bytes(self._head), bytearray()
                messages.append(self._decode(line))
            else:
                self._start_body()

    def _decode(self, line: bytes) -> Message:
        """A line read whole (the newline, if there, does not count)."""
        if len(line) - line.endswith(b"\n") > self._max_line_bytes:
            raise ProtocolError(f"line over {self._max_line_bytes} bytes: {line[:80]!r}")
        return decode_line(line)

    def _start_body(self) -> None:
        """Once the head holds the kind and fields, decode the rest as it comes."""
        head = bytes(self._head)
        kind = head.partition(b" ")[0]
        count = _BODY_FIELDS.get(kind)
        if count is None or head.count(b" ") < count + 1:
            if len(head) > _MAX_HEAD_BYTES:
                raise ProtocolError(f"line without a valid head: {head[:80]!r}")
            return
        try:
            fields, data = _split_fields(head, len(kind) + 1, len(head), count)
        except ValueError as e:
            raise ProtocolError(f"malformed {kind!r} line: {head[:80]!r}") from e
        self._head = bytearray()
        self._body = _Body(kind, fields, head[:80], len(head) - len(data))
        self._add(self._body, data)

    def _feed_body(self, body: _Body, data: bytes, start: int, messages: list[Message]) -> int:
        newline = data.find(b"\n", start)
        stop = len(data) if newline == -1 else newline
        self._add(body, memoryview(data)[start:stop])
        if newline == -1:
            return stop
        self._body = None
        messages.append(_message(body.kind, body.fields, body.finish()))
        return newline + 1

    def _add(self, body: _Body, chars: memoryview) -> None:
        body.add(chars)
        if body.size > self._max_line_bytes:
            raise ProtocolError(f"line over {self._max_line_bytes} bytes: {body.quote!r}")


class _Body:
    """A line's base64 part, decoded as it arrives (whole 4-character groups;
    the rest waits for the next piece)."""

    def __init__(self, kind: bytes, fields: list[str], quote: bytes, head_size: int) -> None:
        self.kind = kind
        self.fields = fields
        self.quote = quote  # the line's start, for error messages
        self.size = head_size  # of the line so far, as a line read whole counts it
        self._carry = b""  # up to 3 characters of an incomplete group
        self._padded = False
        self._parts: list[bytes] = []

    def add(self, chars: memoryview) -> None:
        self.size += len(chars)
        data = self._carry + chars
        whole = len(data) // 4 * 4
        if whole == 0:
            self._carry = data
            return
        if self._padded:
            raise ProtocolError(f"base64 goes on after its padding: {self.quote!r}")
        self._carry = data[whole:]
        try:
            self._parts.append(_unb64(memoryview(data)[:whole]))
        except (ValueError, binascii.Error) as e:
            raise ProtocolError(f"malformed {self.kind!r} line: {self.quote!r}") from e
        self._padded = data[whole - 1 : whole] == b"="

    def finish(self) -> bytes:
        if self._carry:
            raise ProtocolError(f"base64 cut short: {self.quote!r}")
        return b"".join(self._parts)


def _message(kind: bytes, fields: list[str], data: bytes) -> Message:
    try:
        if kind == b"JOB":
            return JobRequest(fields[0], data)
        if kind == b"FUNCTION":
            return FunctionBytes(fields[0], data)
        if kind == b"PROGRESS":
            job, amount = fields
            return Progress(job, None if amount == "-" else float(amount), data.decode())
        if kind == b"OUTPUT":
            job, skipped = fields
            if not skipped.isdigit():
                raise ValueError(f"skipped is not a count: {skipped!r}")
            return Output(job, int(skipped), data.decode())
        if kind == b"RETIRING":
            return Retiring(fields[0], data.decode())
        if kind == b"RAISED":
            return Raised(fields[0], data.decode())
        job, status = fields
        return JobOutcome(job, ResultStatus(status), data)
    except ValueError as e:  # UnicodeDecodeError is one
        raise ProtocolError(f"malformed {kind!r} line with fields {fields}") from e


def _ref_message(kind: bytes, fields: list[bytes]) -> ArenaJob | ArenaOutcome:
    if len(fields) != _REF_FIELDS[kind]:
        raise ValueError(f"{len(fields)} fields")
    *names, offset, length = fields
    if not all(names) or not offset.isdigit() or not length.isdigit():
        raise ValueError("empty field, or not a decimal offset and length")
    span = Span(int(offset), int(length))
    if kind == b"JOBREF":
        return ArenaJob(names[0].decode("ascii"), span)
    return ArenaOutcome(names[0].decode("ascii"), ResultStatus(names[1].decode("ascii")), span)


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


def _b64(data: bytes | memoryview) -> bytes:
    return pybase64.b64encode(data)


def _unb64(data: memoryview) -> bytes:
    return pybase64.b64decode(data, validate=True)
