"""What a call and its outcome look like inside the opaque payload bytes.

A payload is one of two formats, told apart by its first byte:

- a pickle (``0x80``): :class:`CallRequest`, built by ``distribute_client``.
  The worker answers with a pickled :class:`CallOutcome`. User objects (the
  function, its arguments, the return value, a raised exception) are pickled
  separately with cloudpickle, so one of them failing to (un)pickle is
  reported precisely instead of losing the call.
- JSON (``{``): :class:`JsonCall`, ``{"function": "module:name", "args": [...],
  "kwargs": {...}}``, for shells and non-Python clients. The worker answers
  in JSON too (see :func:`json_outcome`).

The server only ever sees the bytes.
"""

from __future__ import annotations

import enum
import json
import pickle
from dataclasses import dataclass, field
from typing import Any


class OutcomeStatus(enum.Enum):
    RETURNED = "returned"  # value holds the pickled return value
    RAISED = "raised"  # value holds the pickled exception, or b"" if it would not pickle
    BAD_REQUEST = "bad_request"  # the worker could not unpickle the call
    BAD_RESULT = "bad_result"  # the return value would not pickle, or is over the size limit


@dataclass(frozen=True, slots=True)
class CallRequest:
    function: bytes  # cloudpickled callable
    arguments: bytes  # cloudpickled (args, kwargs)
    depmodules: tuple[str, ...]  # imported by the worker before unpickling
    retry_on: tuple[str, ...] = ()  # "module.QualName" of exceptions worth another attempt
    source_file: str = ""  # the function's file on the caller's side, for tracebacks


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """Many calls of one function (a chunk of ``f.map``), answered together."""

    function: bytes  # cloudpickled callable, once for all items
    items: bytes  # cloudpickled list of (args, kwargs)
    depmodules: tuple[str, ...]
    retry_on: tuple[str, ...] = ()
    source_file: str = ""


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
    value: bytes
    error: ErrorInfo | None
    stdout: str
    stderr: str
    started_at: float  # time.time() when the function was called
    run_seconds: float  # how long the function ran


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """One CallOutcome per item of a BatchRequest, in order."""

    outcomes: list[CallOutcome]


def dumps(message: CallRequest | BatchRequest | CallOutcome | BatchOutcome) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def is_json(data: bytes) -> bool:
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
    message = pickle.loads(data)
    if not isinstance(message, CallRequest | BatchRequest):
        raise TypeError(f"expected a CallRequest, got {type(message).__name__}")
    return message


def loads_outcome(data: bytes) -> CallOutcome | BatchOutcome:
    """Unpickle an outcome; raises ``TypeError`` if ``data`` is not one."""
    message = pickle.loads(data)
    if not isinstance(message, CallOutcome | BatchOutcome):
        raise TypeError(f"expected a CallOutcome, got {type(message).__name__}")
    return message


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
