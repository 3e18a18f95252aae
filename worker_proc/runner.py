"""Run one call inside the worker and turn whatever happens into an outcome.

Every way a call can go wrong ends here as a :class:`CallOutcome`, never as
an exception escaping into the worker loop: the worker must keep serving
after a bad payload, a raising function, ``SystemExit``, or a return value
that will not pickle.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle
from tblib import pickling_support

from worker_proc.payload import (
    CallOutcome,
    CallRequest,
    ErrorInfo,
    OutcomeStatus,
    dumps,
    loads_request,
)
from worker_proc.protocol import MAX_PAYLOAD_BYTES


def run_payload(payload: bytes) -> bytes:
    """Decode, run and answer one call; the result is a pickled CallOutcome."""
    return dumps(_run(payload))


def _run(payload: bytes) -> CallOutcome:
    started_at = time.time()
    try:
        request = loads_request(payload)
        _import_depmodules(request.depmodules)
        function, (args, kwargs) = _unpickle_call(request)
    except _DepmoduleError as e:
        return _raised(e.__cause__ or e, "", "", started_at, 0.0)
    except Exception as e:
        error = _error_info(e, "the call could not be unpickled on the worker")
        return CallOutcome(OutcomeStatus.BAD_REQUEST, b"", error, "", "", started_at, 0.0)

    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    try:
        with _captured(stdout, stderr):
            value = function(*args, **kwargs)
    except BaseException as e:  # SystemExit and KeyboardInterrupt belong to the caller too
        run_seconds = time.perf_counter() - start
        return _raised(e, stdout.getvalue(), stderr.getvalue(), started_at, run_seconds)
    run_seconds = time.perf_counter() - start

    try:
        pickled = cloudpickle.dumps(value)
        if len(pickled) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"it pickles to {len(pickled)} bytes, over {MAX_PAYLOAD_BYTES}")
    except Exception as e:
        error = _error_info(e, f"the return value ({type(value).__name__}) could not be sent back")
        return CallOutcome(
            OutcomeStatus.BAD_RESULT,
            b"",
            error,
            stdout.getvalue(),
            stderr.getvalue(),
            started_at,
            run_seconds,
        )
    return CallOutcome(
        OutcomeStatus.RETURNED,
        pickled,
        None,
        stdout.getvalue(),
        stderr.getvalue(),
        started_at,
        run_seconds,
    )


class _DepmoduleError(Exception):
    """Marks an import failure of a depmodule (the real error is the cause)."""


def _import_depmodules(names: tuple[str, ...]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except BaseException as e:
            e.add_note(f"while importing depmodule {name!r} on worker pid {os.getpid()}")
            raise _DepmoduleError(name) from e


def _unpickle_call(
    request: CallRequest,
) -> tuple[Callable[..., Any], tuple[tuple[Any, ...], dict[str, Any]]]:
    function = cloudpickle.loads(request.function)
    args, kwargs = cloudpickle.loads(request.arguments)
    return function, (args, kwargs)


@contextlib.contextmanager
def _captured(stdout: io.StringIO, stderr: io.StringIO) -> Iterator[None]:
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stdout, stderr
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _raised(
    error: BaseException, stdout: str, stderr: str, started_at: float, run_seconds: float
) -> CallOutcome:
    """Ship the exception itself (tblib pickles its traceback) plus a text copy."""
    _drop_own_frames(error)
    info = _error_info(error, "")
    # Classes created after start-up (by unpickling) also need tblib's reducer.
    pickling_support.install(error)
    try:
        pickled = cloudpickle.dumps(error)
    except Exception:
        pickled = b""  # the client falls back to RemoteError built from `info`
    return CallOutcome(OutcomeStatus.RAISED, pickled, info, stdout, stderr, started_at, run_seconds)


def _drop_own_frames(error: BaseException) -> None:
    """Start the traceback at the user's code, not at this module's frames."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    if tb is not None:
        error.__traceback__ = tb


def _error_info(error: BaseException, context: str) -> ErrorInfo:
    message = f"{context}: {error}" if context else str(error)
    return ErrorInfo(
        type_name=f"{type(error).__module__}.{type(error).__qualname__}",
        message=message,
        traceback="".join(traceback.format_exception(error)),
    )
