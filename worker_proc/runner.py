"""Run one call inside the worker and turn whatever happens into an outcome.

Every way a call can go wrong ends here as an outcome, never as an exception
escaping into the worker loop: the worker must keep serving after a bad
payload, a raising function, ``SystemExit``, or a return value that will not
pickle.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import cloudpickle
from tblib import pickling_support

from pool_wire.limits import MAX_PAYLOAD_BYTES
from pool_wire.payload import (
    BatchOutcome,
    BatchRequest,
    CallOutcome,
    CallRequest,
    ErrorInfo,
    JsonCall,
    OutcomeStatus,
    dumps,
    is_json,
    json_outcome,
    loads_request,
)
from pool_wire.protocol import ResultStatus
from pool_wire.source_files import same_module_functions

_PICKLED_CODE_FILE = "<dynamic-code>"  # cloudpickle's co_filename for code pickled by value

# tblib pickles a traceback as a chain nested one level per frame, so a
# RecursionError's ~1,000 frames exceed pickle's own recursion limit and the
# client got a RemoteError instead. A traceback is cut to its first and last
# frames, which show where the recursion was entered and where it ended; 100
# pickle (and unpickle) well within the limit.
TRACEBACK_HEAD_FRAMES = 20
TRACEBACK_TAIL_FRAMES = 80

# How many chained exceptions (__cause__, __context__) are trimmed; a longer
# chain is as rare as it is unreadable.
MAX_CHAINED_EXCEPTIONS = 20


@dataclass
class _Ran:
    """What happened to one call, before it is encoded for the caller."""

    status: OutcomeStatus
    value: Any = None
    error: BaseException | None = None
    context: str = ""  # what failed, for errors that are not the function's own
    stdout: str = ""
    stderr: str = ""
    started_at: float = 0.0
    run_seconds: float = 0.0
    retryable: bool = False


def run_payload(payload: bytes) -> tuple[ResultStatus, bytes]:
    """Decode, run and answer one call or a batch, in the payload's own format."""
    started_at = time.time()
    try:
        request = loads_request(payload)
        function, calls = _prepare(request)
    except _ImportFailed as e:
        return _answer(payload, [_Ran(OutcomeStatus.RAISED, error=e.__cause__)], batch=False)
    except Exception as e:
        context = "the call could not be decoded on the worker"
        failed = _Ran(OutcomeStatus.BAD_REQUEST, error=e, context=context, started_at=started_at)
        return _answer(payload, [failed], batch=False)
    retry_on = () if isinstance(request, JsonCall) else request.retry_on
    ran = [_call(function, args, kwargs, retry_on) for args, kwargs in calls]
    return _answer(payload, ran, batch=isinstance(request, BatchRequest))


def _call(
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    retry_on: tuple[str, ...],
) -> _Ran:
    stdout, stderr = io.StringIO(), io.StringIO()
    started_at, start = time.time(), time.perf_counter()
    try:
        with _captured(stdout, stderr):
            value = function(*args, **kwargs)
    except BaseException as e:  # SystemExit and KeyboardInterrupt belong to the caller too
        return _Ran(
            OutcomeStatus.RAISED,
            error=e,
            stdout=stdout.getvalue(),
            stderr=stderr.getvalue(),
            started_at=started_at,
            run_seconds=time.perf_counter() - start,
            retryable=_is_one_of(e, retry_on),
        )
    return _Ran(
        OutcomeStatus.RETURNED,
        value=value,
        stdout=stdout.getvalue(),
        stderr=stderr.getvalue(),
        started_at=started_at,
        run_seconds=time.perf_counter() - start,
    )


def _answer(payload: bytes, ran: list[_Ran], batch: bool) -> tuple[ResultStatus, bytes]:
    """Encode what happened; a batch answers with one outcome per item."""
    try:
        if is_json(payload):
            status, outcome = _result_status(ran[0]), _encode_json(ran[0])
        elif batch:
            outcomes = [_call_outcome(r) for r in ran]
            retry = any(r.retryable for r in ran)
            status = ResultStatus.RETRY if retry else ResultStatus.OK
            outcome = dumps(BatchOutcome(outcomes))
        else:
            outcome = dumps(_call_outcome(ran[0]))  # may turn it into BAD_RESULT
            status = _result_status(ran[0])
        if len(outcome) > MAX_PAYLOAD_BYTES:
            output = sum(len(r.stdout) + len(r.stderr) for r in ran)
            raise ValueError(
                f"the outcome is {len(outcome)} bytes with {output} characters of "
                f"captured output, over {MAX_PAYLOAD_BYTES}"
            )
    except Exception as e:  # the last line of defence: the worker must keep serving
        bare = _Ran(OutcomeStatus.BAD_RESULT, error=e, context="the outcome could not be sent")
        if is_json(payload):
            return ResultStatus.ERROR, _encode_json(bare)
        return ResultStatus.ERROR, dumps(_call_outcome(bare))
    return status, outcome


class _ImportFailed(Exception):
    """Marks an import the call needed that failed (the real error is the cause)."""


def _prepare(
    request: CallRequest | BatchRequest | JsonCall,
) -> tuple[Callable[..., Any], list[tuple[tuple[Any, ...], dict[str, Any]]]]:
    """The function and its calls' (args, kwargs), unpickled or imported."""
    if isinstance(request, JsonCall):
        return _import_function(request.function), [(tuple(request.args), request.kwargs)]
    for name in request.depmodules:
        _import(name, f"depmodule {name!r}")
    function = cloudpickle.loads(request.function)
    if request.source_files:
        _restore_source_files(function, dict(request.source_files))
    if isinstance(request, BatchRequest):
        return function, list(cloudpickle.loads(request.items))
    return function, [cloudpickle.loads(request.arguments)]


def _restore_source_files(function: Callable[..., Any], files: dict[str, str]) -> None:
    """Give code that came pickled by value its file back.

    cloudpickle (3.1.3 on) names such code ``<dynamic-code>``, which would
    leave the caller's tracebacks without source lines. The function and the
    functions of its module it reaches (the walk the client made too, see
    ``pool_wire.source_files``) take the file the client named for each;
    line numbers are kept.
    """
    for item in same_module_functions(function):
        filename = files.get(item.__qualname__)
        if filename is not None and item.__code__.co_filename == _PICKLED_CODE_FILE:
            item.__code__ = _with_file(item.__code__, filename)


def _with_file(code: types.CodeType, filename: str) -> types.CodeType:
    consts = tuple(
        _with_file(c, filename) if isinstance(c, types.CodeType) else c for c in code.co_consts
    )
    return code.replace(co_filename=filename, co_consts=consts)


def _import_function(reference: str) -> Callable[..., Any]:
    module_name, sep, qualname = reference.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"function {reference!r} is not 'module:name'")
    target: Any = _import(module_name, f"module {module_name!r} of {reference!r}")
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{reference} is a {type(target).__name__}, not a function")
    return target  # type: ignore[no-any-return]


def _import(name: str, what: str) -> Any:
    try:
        return importlib.import_module(name)
    except BaseException as e:
        e.add_note(f"while importing {what} on worker pid {os.getpid()}")
        raise _ImportFailed(name) from e


def _is_one_of(error: BaseException, names: tuple[str, ...]) -> bool:
    """isinstance by qualified class name: the classes may not exist here."""
    return bool(names) and any(
        f"{cls.__module__}.{cls.__qualname__}" in names for cls in type(error).__mro__
    )


@contextlib.contextmanager
def _captured(stdout: io.StringIO, stderr: io.StringIO) -> Iterator[None]:
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stdout, stderr
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def _result_status(ran: _Ran) -> ResultStatus:
    if ran.status is OutcomeStatus.RETURNED:
        return ResultStatus.OK
    return ResultStatus.RETRY if ran.retryable else ResultStatus.ERROR


def _call_outcome(ran: _Ran) -> CallOutcome:
    """The pickled-format answer to one call (a return value that will not
    pickle turns it into BAD_RESULT)."""
    value = b""
    if ran.status is OutcomeStatus.RETURNED:
        try:
            value = cloudpickle.dumps(ran.value)
            if len(value) > MAX_PAYLOAD_BYTES:
                raise ValueError(f"it pickles to {len(value)} bytes, over {MAX_PAYLOAD_BYTES}")
        except Exception as e:
            what = f"the return value ({type(ran.value).__name__}) could not be sent back"
            ran.status, ran.error, ran.context, value = OutcomeStatus.BAD_RESULT, e, what, b""
    elif ran.status is OutcomeStatus.RAISED and ran.error is not None:
        value = _pickle_exception(ran.error)
    error = None if ran.error is None else _error_info(ran.error, ran.context)
    return CallOutcome(
        ran.status, value, error, ran.stdout, ran.stderr, ran.started_at, ran.run_seconds
    )


def _encode_json(ran: _Ran) -> bytes:
    if ran.error is not None:
        _drop_own_frames(ran.error)
    error = None if ran.error is None else _error_info(ran.error, ran.context)
    return json_outcome(ran.status, ran.value, error, ran.stdout, ran.stderr)


def _pickle_exception(error: BaseException) -> bytes:
    """The exception itself, with its traceback (tblib), or b"" if it won't pickle."""
    _drop_own_frames(error)
    _trim_tracebacks(error)
    # Classes created after start-up (by unpickling) also need tblib's reducer.
    pickling_support.install(error)
    try:
        return cloudpickle.dumps(error)  # type: ignore[no-any-return]
    except Exception:
        return b""  # the client falls back to RemoteError built from ErrorInfo


def _safe_str(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return f"<{type(error).__name__} whose str() failed>"


def _drop_own_frames(error: BaseException) -> None:
    """Start the traceback at the user's code, not at this module's frames."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    if tb is not None:
        error.__traceback__ = tb


def _trim_tracebacks(error: BaseException) -> None:
    """Cut each traceback in ``error``'s chain to its first and last frames,
    with a note saying how many were left out (see TRACEBACK_HEAD_FRAMES)."""
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending and len(seen) < MAX_CHAINED_EXCEPTIONS:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        _trim_traceback(current)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def _trim_traceback(error: BaseException) -> None:
    frames: list[types.TracebackType] = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    omitted = len(frames) - TRACEBACK_HEAD_FRAMES - TRACEBACK_TAIL_FRAMES
    if omitted <= 0:
        return
    frames[TRACEBACK_HEAD_FRAMES - 1].tb_next = frames[-TRACEBACK_TAIL_FRAMES]
    error.add_note(
        f"(traceback trimmed by the worker: {omitted} of {len(frames)} frames left out "
        f"between the first {TRACEBACK_HEAD_FRAMES} and the last {TRACEBACK_TAIL_FRAMES})"
    )


def _error_info(error: BaseException, context: str) -> ErrorInfo:
    text = _safe_str(error)
    message = f"{context}: {text}" if context else text
    return ErrorInfo(
        type_name=f"{type(error).__module__}.{type(error).__qualname__}",
        message=message,
        traceback="".join(traceback.format_exception(error)),
    )
