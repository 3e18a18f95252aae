"""What a call and its outcome look like inside the opaque payload bytes.

A payload is one of two formats, told apart by its first byte:

- a pickled message (``0x89``): :class:`CallRequest`, built by
  ``distribute_client``. The worker answers with a pickled
  :class:`CallOutcome`. User objects (the function, its arguments, the
  return value, a raised exception) are pickled separately with cloudpickle,
  so one of them failing to (un)pickle is reported precisely instead of
  losing the call. Large ones travel out of band (pickle protocol 5), after
  the message's own pickle::

      b"\x89PLD" <version> <message pickle> <buffer 1> ... <buffer n>
      <their n + 1 lengths> <n + 1>

  (the version as a 4-byte, lengths and count as 8-byte big-endian
  integers), so the reader unpickles them from views of the payload, not
  from copies. A reader refuses any version but :data:`FORMAT_VERSION` with
  an error that names both: a payload outlives the process that made it (a
  durable job waits in the journal across an upgrade), and "not a pickle of
  this version" is no help to the person who must run one version on both
  sides. Payloads from before versions existed start with the pickle itself
  (``0x80``) and are named as such.
- JSON (``{``): :class:`JsonCall`, ``{"function": "module:name", "args": [...],
  "kwargs": {...}}``, for shells and non-Python clients. The worker answers
  in JSON too (see :func:`json_outcome`).

The server only ever sees the bytes.
"""

from __future__ import annotations

import enum
import hashlib
import json
import pickle
import struct
from dataclasses import dataclass, field
from typing import Any, SupportsIndex

from pool_wire.limits import MAX_ERROR_SUMMARY_CHARS

# Pickled user objects this large travel out of band; smaller ones are not
# worth the bookkeeping.
OUT_OF_BAND_BYTES = 64 * 1024

# The pickled format's version: bump it whenever a message's fields or the
# framing change, so old payloads are refused by name rather than misread.
# Version 2 added ``function_hash``, a trailing field with a default, so a
# version 1 payload (a durable job journaled before an upgrade) still reads;
# version 3 added ``BatchOutcome.returned``, version 4 the requests'
# ``module_files``, likewise; version 5 ``BatchOutcome.run_seconds``
# (issue 15: a map sizes its chunks by how long its calls run).
FORMAT_VERSION = 5
READABLE_VERSIONS = frozenset({1, 2, 3, 4, 5})

_MAGIC = b"\x89PLD"  # not ASCII, so never taken for JSON or text
_HEADER = struct.Struct(">4sI")  # magic, version
_LENGTH = struct.Struct(">Q")
_UNVERSIONED = b"\x80"  # pickle's first opcode: a payload from before versions


class OutcomeStatus(enum.Enum):
    RETURNED = "returned"  # value holds the pickled return value
    RAISED = "raised"  # value holds the pickled exception, or b"" if it would not pickle
    BAD_REQUEST = "bad_request"  # the worker could not unpickle the call
    BAD_RESULT = "bad_result"  # the return value would not pickle, or is over the size limit


# A pickled user object: bytes where it was made, a view of the payload where
# it was read.
Pickled = bytes | memoryview


@dataclass(frozen=True, slots=True)
class CallRequest:
    function: Pickled  # cloudpickled callable
    arguments: Pickled  # cloudpickled (args, kwargs)
    depmodules: tuple[str, ...]  # imported by the worker before unpickling
    retry_on: tuple[str, ...] = ()  # "module.QualName" of exceptions worth another attempt
    # (qualified name, file) of the function and of the functions of its module
    # it reaches, on the caller's side: for tracebacks (see runner.py)
    source_files: tuple[tuple[str, str], ...] = ()
    # Set when ``function`` travels beside the payload, sent once (see
    # function_key): then ``function`` is empty, and the worker takes the
    # function of this key from its cache.
    function_hash: str = ""
    # (module name, digest of its file on the caller's side) of the modules
    # that travel by reference: see pool_wire.module_files
    module_files: tuple[tuple[str, str], ...] = ()

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[type[CallRequest], tuple[Any, ...]]:
        big = _pickleable(protocol, self.function, self.arguments)
        rest = (
            self.depmodules,
            self.retry_on,
            self.source_files,
            self.function_hash,
            self.module_files,
        )
        return CallRequest, (*big, *rest)


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """Many calls of one function (a chunk of ``f.map``), answered together."""

    function: Pickled  # cloudpickled callable, once for all items
    items: Pickled  # cloudpickled list of (args, kwargs)
    depmodules: tuple[str, ...]
    retry_on: tuple[str, ...] = ()
    source_files: tuple[tuple[str, str], ...] = ()
    function_hash: str = ""  # as CallRequest's
    module_files: tuple[tuple[str, str], ...] = ()  # as CallRequest's

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[type[BatchRequest], tuple[Any, ...]]:
        big = _pickleable(protocol, self.function, self.items)
        rest = (
            self.depmodules,
            self.retry_on,
            self.source_files,
            self.function_hash,
            self.module_files,
        )
        return BatchRequest, (*big, *rest)


@dataclass(frozen=True, slots=True)
class JsonCall:
    function: str  # "package.module:function"
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """A remote error as text, for when the exception itself cannot travel."""

    type_name: str
    message: str
    traceback: str


@dataclass(frozen=True, slots=True)
class CallOutcome:
    status: OutcomeStatus
    value: Pickled
    error: ErrorInfo | None
    stdout: str
    stderr: str
    started_at: float  # time.time() when the function was called
    run_seconds: float  # how long the function ran

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[type[CallOutcome], tuple[Any, ...]]:
        (value,) = _pickleable(protocol, self.value)
        fields = (self.error, self.stdout, self.stderr, self.started_at, self.run_seconds)
        return CallOutcome, (self.status, value, *fields)


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One CallOutcome per item of a BatchRequest, in order; or, when every
    call returned and printed nothing (the usual map chunk), ``returned``:
    their values pickled together as one list, and no ``outcomes``. One
    pickle for the chunk instead of one outcome and one pickle per call is
    most of what a map of small calls costs."""

    outcomes: list[CallOutcome]
    returned: Pickled | None = None
    # With ``returned``: how long the calls ran, together (the outcomes, when
    # there are any, carry their own).
    run_seconds: float = 0.0

    def __reduce_ex__(self, protocol: SupportsIndex) -> tuple[type[BatchOutcome], tuple[Any, ...]]:
        if self.returned is None:
            return BatchOutcome, (self.outcomes,)
        (returned,) = _pickleable(protocol, self.returned)
        return BatchOutcome, (self.outcomes, returned, self.run_seconds)


def dumps(message: CallRequest | BatchRequest | CallOutcome | BatchOutcome) -> bytes:
    """The header, the message's pickle, its out-of-band buffers, their lengths."""
    buffers: list[pickle.PickleBuffer] = []
    head = pickle.dumps(message, protocol=5, buffer_callback=buffers.append)
    parts: list[bytes | memoryview] = [head, *(buffer.raw() for buffer in buffers)]
    count = len(parts)
    trailer = struct.pack(f">{count + 1}Q", *(len(part) for part in parts), count)
    return b"".join([_HEADER.pack(_MAGIC, FORMAT_VERSION), *parts, trailer])


def _loads(data: bytes | bytearray, reader: str, writer: str) -> object:
    """Undo :func:`dumps`; its big fields come back as views of ``data``.

    ``reader`` and ``writer`` name the sides, for the error about a payload
    of another version: "this worker" reads what "distribute_client" wrote.
    """
    view = memoryview(data)
    _check_version(view, reader, writer)
    if len(view) < _HEADER.size + _LENGTH.size:
        raise ValueError("not a pickled message: too short")
    (count,) = _LENGTH.unpack(view[-_LENGTH.size :])
    trailer_size = _LENGTH.size * (count + 1)
    if count < 1 or _HEADER.size + trailer_size > len(data):
        raise ValueError("not a pickled message: no valid trailer")
    lengths = struct.unpack(f">{count}Q", view[len(data) - trailer_size : -_LENGTH.size])
    if _HEADER.size + sum(lengths) + trailer_size != len(data):
        raise ValueError("not a pickled message: its lengths do not add up")
    parts, start = [], _HEADER.size
    for length in lengths:
        parts.append(view[start : start + length])
        start += length
    return pickle.loads(parts[0], buffers=parts[1:])


def _check_version(view: memoryview, reader: str, writer: str) -> None:
    advice = "run the same version on the client and the server"
    if view[:1] == _UNVERSIONED:
        raise ValueError(
            f"payload without a format version, made by a {writer} from before payload "
            f"versions existed, but this {reader} reads version {FORMAT_VERSION}; {advice}"
        )
    if len(view) < _HEADER.size or view[: len(_MAGIC)] != _MAGIC:
        raise ValueError(f"not a pickled message: it starts {bytes(view[:8])!r}")
    _, version = _HEADER.unpack(view[: _HEADER.size])
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"payload format version {version}, but this {reader} reads version "
            f"{FORMAT_VERSION}: it was made by another version of {writer}; {advice}"
        )


def _pickleable(protocol: SupportsIndex, *fields: Pickled) -> list[bytes | pickle.PickleBuffer]:
    """Big fields as out-of-band buffers where the protocol has them (5 on),
    the rest as bytes (a memoryview does not pickle)."""
    return [
        pickle.PickleBuffer(data)
        if len(data) >= OUT_OF_BAND_BYTES and int(protocol) >= 5
        else bytes(data)
        for data in fields
    ]


def function_key(function: bytes) -> str:
    """The cache key of a pickled function: the same bytes are the same function."""
    return hashlib.blake2b(function, digest_size=16).hexdigest()


def is_json(data: bytes | bytearray) -> bool:
    return data[:1] == b"{"


def loads_request(data: bytes) -> CallRequest | BatchRequest | JsonCall:
    """Decode a request; raises ``ValueError``/``TypeError`` if it is not one."""
    if is_json(data):
        call = json.loads(data)
        if not isinstance(call, dict) or not isinstance(call.get("function"), str):
            raise ValueError('a JSON call needs {"function": "module:name", ...}')
        args, kwargs = call.get("args", []), call.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ValueError('"args" must be a JSON array and "kwargs" a JSON object')
        return JsonCall(call["function"], args, kwargs)
    message = _loads(data, "worker", "distribute_client")
    if not isinstance(message, CallRequest | BatchRequest):
        raise TypeError(f"expected a CallRequest, got {type(message).__name__}")
    return message


def loads_outcome(data: bytes | bytearray) -> CallOutcome | BatchOutcome:
    """Unpickle an outcome; raises ``TypeError`` if ``data`` is not one."""
    message = _loads(data, "client", "pool-server")
    if not isinstance(message, CallOutcome | BatchOutcome):
        raise TypeError(f"expected a CallOutcome, got {type(message).__name__}")
    return message


def error_summary(error: ErrorInfo) -> str:
    """``Type: message`` of a remote error, for status views (a builtin's type
    without its module: ``ValueError: bad input``), cut to a listing's size."""
    type_name = error.type_name.removeprefix("builtins.")
    text = f"{type_name}: {error.message}" if error.message else type_name
    return text[:MAX_ERROR_SUMMARY_CHARS]


def json_outcome(
    status: OutcomeStatus, value: Any, error: ErrorInfo | None, stdout: str, stderr: str
) -> bytes:
    """The answer to a JsonCall: the value as JSON (its repr if it is not JSON)."""
    body: dict[str, Any] = {"status": status.value, "stdout": stdout, "stderr": stderr}
    if status is OutcomeStatus.RETURNED:
        try:
            body["value"] = json.loads(json.dumps(value))
        except (TypeError, ValueError):
            body["value_repr"] = repr(value)
    if error is not None:
        body["error"] = {"type": error.type_name, "message": error.message}
        body["traceback"] = error.traceback
    return json.dumps(body).encode()
