"""What a call and its outcome look like inside the opaque payload bytes.

The client builds a :class:`CallRequest`, the worker answers with a
:class:`CallOutcome`; both travel pickled, and the server only ever sees the
bytes. User objects (the function, its arguments, the return value and a
raised exception) are pickled separately with cloudpickle so that one of them
failing to (un)pickle can be reported precisely instead of losing the call.
"""

from __future__ import annotations

import enum
import pickle
from dataclasses import dataclass


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


def dumps(message: CallRequest | CallOutcome) -> bytes:
    return pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)


def loads_request(data: bytes) -> CallRequest:
    """Unpickle a request; raises ``TypeError`` if ``data`` is not one."""
    message = pickle.loads(data)
    if not isinstance(message, CallRequest):
        raise TypeError(f"expected a CallRequest, got {type(message).__name__}")
    return message


def loads_outcome(data: bytes) -> CallOutcome:
    """Unpickle an outcome; raises ``TypeError`` if ``data`` is not one."""
    message = pickle.loads(data)
    if not isinstance(message, CallOutcome):
        raise TypeError(f"expected a CallOutcome, got {type(message).__name__}")
    return message
