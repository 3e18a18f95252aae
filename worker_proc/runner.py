"""Run one call inside the worker and turn whatever happens into an outcome.

Every way a call can go wrong ends here as an outcome, never as an exception
escaping into the worker loop: the worker must keep serving after a bad
payload, a raising function, ``SystemExit``, or a return value that will not
pickle.

Large payloads and outcomes live in the worker's arena (``pool_wire.arena``),
and copies are what its memory is spent on (issue 10):

- A payload in the arena is read in place: the request's fields are views of
  it, and unpickling copies each argument out into an object of its own.
  That one copy is the price of safety, not waste: a ``bytes`` argument
  cannot be a view, and a ``bytearray`` or memoryview of the arena handed to
  the function would change under it (or under whatever it kept) when the
  arena is reused for the outcome or the next call. Nothing of the arena
  outlives :func:`run_payload`'s decoding.
- The request and the arguments are let go before the outcome is encoded,
  and each return value once it is pickled, so an echo of 128 MiB is not
  held as argument, value and pickle at once.
- Return values are pickled straight into the arena (a pickler streams a
  large ``bytes`` into its file without a copy), and the outcome is built
  from views of them; the worker then holds the value's pickle once, in
  the arena, plus the outcome the server reads.
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import io
import os
import pickle
import sys
import time
import traceback
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from json import loads as parse_json
from typing import Any, TypeVar

import cloudpickle
from tblib import pickling_support

from pool_wire import progress as progress_hook
from pool_wire.arena import Arena
from pool_wire.function_cache import FunctionCache
from pool_wire.limits import MAX_PAYLOAD_BYTES
from pool_wire.original import is_original, unwrap
from pool_wire.payload import (
    BatchOutcome,
    BatchRequest,
    CallOutcome,
    CallRequest,
    ErrorInfo,
    JsonCall,
    OutcomeStatus,
    dumps,
    error_summary,
    is_json,
    json_outcome,
    loads_outcome,
    loads_request,
)
from pool_wire.protocol import ResultStatus
from pool_wire.refs import RefMissing
from pool_wire.source_files import same_module_functions
from pool_wire.tracebacks import reduce_traceback
from worker_proc import freshness, reporting
from worker_proc.original import run_original
from worker_proc.tracebacks import drop_own_frames, trim_tracebacks

T = TypeVar("T")

_PICKLED_CODE_FILE = "<dynamic-code>"  # cloudpickle's co_filename for code pickled by value


@dataclass
class CachedFunction:
    """A function of the worker's cache: its pickle, and once a call needs
    it the function (unpickled once, after that call's depmodules; again
    after a module it uses is reloaded, see ``freshness``). A stored object
    (``pool_wire.refs``) shares the cache: then ``value``, its pickle let go."""

    pickled: bytes
    function: Callable[..., Any] | None = None
    loaded: bool = False  # an object's: unpickled into value
    value: Any = None


Functions = FunctionCache[CachedFunction]


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
    """Decode, run and answer one call or a batch: :func:`run_checked`
    without an arena, a function cache or a check."""
    status, outcome, _ = run_checked(payload, lambda: None)
    return status, outcome


def run_checked(
    payload: bytes | memoryview,
    check: Callable[[], T],
    functions: Functions | None = None,
    arena: Arena | None = None,
) -> tuple[ResultStatus, bytes, T]:
    """Decode, run and answer one call or a batch, in the payload's own format
    (ours, JSON, or the original Go server's: ``worker_proc.original``).

    ``payload`` may be a view of ``arena``: it is not read once the calls
    start, and return values are pickled into ``arena`` from offset 0 on.
    ``functions`` holds the functions a payload may name by key. ``check``
    runs once the user's code is done (unpickling runs some too), before the
    answer is encoded, and its result is returned: mapping the arena opens
    a file descriptor, which would take the slot of one the call closed.
    """
    if is_original(payload):
        status, answer = run_original(unwrap(payload))
        return status, answer, check()
    started_at = time.time()
    json = is_json(bytes(payload[:1]))
    try:
        # loads_request reads any buffer (JSON aside), views and all.
        request = loads_request(bytes(payload) if json else payload)  # type: ignore[arg-type]
        function, calls, warnings = _prepare(request, functions)
    except _ImportFailed as e:
        checked = check()
        ran = _Ran(OutcomeStatus.RAISED, error=e.__cause__)
        return (*_answer(json, [ran], batch=False), checked)
    except (_Missing, RefMissing) as e:
        checked = check()
        ran = _Ran(OutcomeStatus.BAD_REQUEST, error=e, context="the call could not be run")
        return ResultStatus.MISSING, _answer(json, [ran], batch=False)[1], checked
    except Exception as e:
        checked = check()
        context = "the call could not be decoded on the worker"
        ran = _Ran(OutcomeStatus.BAD_REQUEST, error=e, context=context, started_at=started_at)
        return (*_answer(json, [ran], batch=False), checked)
    retry_on = () if isinstance(request, JsonCall) else request.retry_on
    batch = isinstance(request, BatchRequest)
    del request, payload  # views of the arena, which the values will overwrite
    done = _call_all(function, calls, retry_on)
    del calls, function  # only the return values are needed now
    done[0].stderr = warnings + done[0].stderr
    checked = check()
    return (*_answer(json, done, batch, _Values(arena)), checked)


def failure_summary(status: ResultStatus, outcome: bytes) -> str | None:
    """``Type: message`` of the exception an ERROR answer holds (None for any
    other), for the server's status views: read back from the outcome this
    worker just made, as only a failed call pays for it."""
    if status is not ResultStatus.ERROR:
        return None
    try:
        if is_json(outcome[:1]):
            error = parse_json(outcome).get("error", {})
            return error_summary(ErrorInfo(error.get("type", "?"), error.get("message", ""), ""))
        answer = loads_outcome(outcome)
    except Exception:  # noqa: BLE001 - a summary is a courtesy; the outcome still goes
        return None
    if isinstance(answer, CallOutcome):
        return None if answer.error is None else error_summary(answer.error)
    failed = [(i, o.error) for i, o in enumerate(answer.outcomes) if o.error is not None]
    if not failed:
        return None
    index, first = failed[0]
    return f"{len(failed)} of {len(answer.outcomes)} calls failed; call {index}: " + (
        error_summary(first)
    )


def _call_all(
    function: Callable[..., Any],
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
    retry_on: tuple[str, ...],
) -> list[_Ran]:
    """Run the calls in order, output captured once for all of them and
    handed to each call by its share (a map chunk of small calls is mostly
    this loop)."""
    if len(calls) == 1:
        ((args, kwargs),) = calls
        return [_call(function, args, kwargs, retry_on)]
    stdout, stderr = _Printed(), _Printed()
    done: list[_Ran] = []
    spans: list[tuple[int, int, int, int]] = []
    with _captured(stdout, stderr), _shares():
        for index, (args, kwargs) in enumerate(calls):
            progress_hook.set_share(index, len(calls))
            out, err = stdout.tell(), stderr.tell()
            started_at, start = time.time(), time.perf_counter()
            try:
                ran = _Ran(OutcomeStatus.RETURNED, value=function(*args, **kwargs))
            except BaseException as e:  # as _call
                ran = _Ran(OutcomeStatus.RAISED, error=e, retryable=_is_one_of(e, retry_on))
            ran.started_at, ran.run_seconds = started_at, time.perf_counter() - start
            done.append(ran)
            spans.append((out, stdout.tell(), err, stderr.tell()))
    printed, complained = stdout.getvalue(), stderr.getvalue()
    if printed or complained:
        for ran, (out, out_end, err, err_end) in zip(done, spans, strict=True):
            ran.stdout, ran.stderr = printed[out:out_end], complained[err:err_end]
    return done


def _call(
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    retry_on: tuple[str, ...],
) -> _Ran:
    stdout, stderr = _Printed(), _Printed()
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


def _answer(
    json: bool, ran: list[_Ran], batch: bool, values: _Values | None = None
) -> tuple[ResultStatus, bytes]:
    """Encode what happened; a batch answers with one outcome per item."""
    values = values or _Values(None)
    try:
        if json:
            status, outcome = _result_status(ran[0]), _encode_json(ran[0])
        elif batch:
            outcome, retry = _batch_outcome(ran, values), any(r.retryable for r in ran)
            status = ResultStatus.RETRY if retry else ResultStatus.OK
        else:
            outcome = dumps(_call_outcome(ran[0], values))  # may turn it into BAD_RESULT
            status = _result_status(ran[0])
        if len(outcome) > MAX_PAYLOAD_BYTES:
            output = sum(len(r.stdout) + len(r.stderr) for r in ran)
            raise ValueError(
                f"the outcome is {len(outcome)} bytes with {output} characters of "
                f"captured output, over {MAX_PAYLOAD_BYTES}"
            )
    except Exception as e:  # the last line of defence: the worker must keep serving
        bare = _Ran(OutcomeStatus.BAD_RESULT, error=e, context="the outcome could not be sent")
        if json:
            return ResultStatus.ERROR, _encode_json(bare)
        return ResultStatus.ERROR, dumps(_call_outcome(bare, _Values(None)))
    return status, outcome


def _batch_outcome(ran: list[_Ran], values: _Values) -> bytes:
    """A batch's answer: its values in one pickle when every call returned
    quietly and they pickle, else one outcome per call (so that the value
    that will not pickle is named)."""
    if all(r.status is OutcomeStatus.RETURNED and not r.stdout and not r.stderr for r in ran):
        try:
            returned = values.pickle([r.value for r in ran])
        except Exception:
            values.rewind()
        else:
            return dumps(BatchOutcome([], returned, sum(r.run_seconds for r in ran)))
    return dumps(BatchOutcome([_call_outcome(r, values) for r in ran]))


class _Values:
    """Where return values are pickled: one after another in the arena from
    offset 0 (the payload there is spent), or as bytes without one."""

    def __init__(self, arena: Arena | None) -> None:
        self._arena = arena
        self._offset = 0

    def pickle(self, value: Any) -> bytes | memoryview:
        """``value`` pickled; raises ValueError past MAX_PAYLOAD_BYTES."""
        if self._arena is None:
            pickled: bytes = cloudpickle.dumps(value)
            if len(pickled) > MAX_PAYLOAD_BYTES:
                raise ValueError(f"it pickles to {len(pickled)} bytes, over {MAX_PAYLOAD_BYTES}")
            return pickled
        writer = self._arena.writer(self._offset, MAX_PAYLOAD_BYTES)
        cloudpickle.dump(value, writer)
        self._offset = writer.span.end
        return self._arena.view(writer.span)

    def rewind(self) -> None:
        """Forget what was pickled: the arena is written from the start again."""
        self._offset = 0


class _ImportFailed(Exception):
    """Marks an import the call needed that failed (the real error is the cause)."""


class _Missing(LookupError):
    """The payload names a function by key that this worker does not have."""


def _prepare(
    request: CallRequest | BatchRequest | JsonCall, functions: Functions | None
) -> tuple[Callable[..., Any], list[tuple[tuple[Any, ...], dict[str, Any]]], str]:
    """The function and its calls' (args, kwargs), unpickled or imported, and
    the warnings about the modules it uses by reference (``freshness``)."""
    if isinstance(request, JsonCall):
        return _import_function(request.function), [(tuple(request.args), request.kwargs)], ""
    for name in request.depmodules:
        first = name not in sys.modules
        _import(name, f"depmodule {name!r}")
        if first:
            freshness.remember(name)
    try:
        warnings, reloaded = freshness.refresh(request.module_files)
    except BaseException as e:  # an edited module that no longer imports
        e.add_note(f"while reloading a changed module on worker pid {os.getpid()}")
        raise _ImportFailed("a changed module") from e
    if reloaded and functions is not None:
        _unpickle_again(functions)
    if request.function_hash:
        function = _cached(request.function_hash, functions, request.source_files)
    else:
        function = _unpickle_function(request.function, request.source_files)
    for name, _ in request.module_files:  # imported just now, by unpickling, if not before
        freshness.remember(name)
    if isinstance(request, BatchRequest):
        return function, list(cloudpickle.loads(request.items)), warnings
    return function, [cloudpickle.loads(request.arguments)], warnings


def _unpickle_function(
    pickled: bytes | memoryview, source_files: tuple[tuple[str, str], ...]
) -> Callable[..., Any]:
    function: Callable[..., Any] = cloudpickle.loads(pickled)
    if source_files:
        _restore_source_files(function, dict(source_files))
    return function


def _cached(
    key: str, functions: Functions | None, source_files: tuple[tuple[str, str], ...]
) -> Callable[..., Any]:
    """The function of ``key`` from the worker's cache, unpickled on first use.

    A function that failed to unpickle stays pickled, to be tried again by
    the next call (whose depmodules may differ): the server's mirror counts
    it as present either way.
    """
    entry = functions.get(key) if functions is not None else None
    if entry is None:
        raise _Missing(
            f"the payload names function {key}, which worker pid {os.getpid()} does not have "
            "(the server sends it again; if you see this, it could not)"
        )
    if entry.function is None:
        entry.function = _unpickle_function(entry.pickled, source_files)
    return entry.function


def _unpickle_again(functions: Functions) -> None:
    """Forget the functions unpickled so far: they hold a reloaded module's
    old code (``from mymodel import predict``); their pickles make them anew."""
    for key in functions.keys():
        entry = functions.peek(key)
        if entry is not None and entry.pickled:
            entry.function = None


def resolve_object(functions: Functions, key: str) -> Any:
    """The stored object of ``key`` from the worker's cache, unpickled on
    first use. Looked up without touching its recency, as the server's
    mirror does (a call may or may not unpickle its refs again)."""
    entry = functions.peek(key)
    if entry is None:
        raise RefMissing(
            f"the call refers to object {key}, which worker pid {os.getpid()} does not have "
            "(the server sends it again; if you see this, it could not)"
        )
    if not entry.loaded:
        entry.value, entry.loaded, entry.pickled = cloudpickle.loads(entry.pickled), True, b""
    return entry.value


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


class _Printed(io.StringIO):
    """A call's captured stdout or stderr, also handed as it is written to
    the job's live output (``reporting.printed``)."""

    def write(self, text: str) -> int:
        written = super().write(text)
        reporting.printed(text)
        return written


@contextlib.contextmanager
def _shares() -> Iterator[None]:
    """Each call of a batch reports progress as its share of the batch's."""
    try:
        yield
    finally:
        progress_hook.set_share(0, 1)


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


def _call_outcome(ran: _Ran, values: _Values) -> CallOutcome:
    """The pickled-format answer to one call (a return value that will not
    pickle turns it into BAD_RESULT)."""
    value: bytes | memoryview = b""
    if ran.status is OutcomeStatus.RETURNED:
        try:
            value = values.pickle(ran.value)
            ran.value = None  # the pickle is what is sent; the value may go
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
        drop_own_frames(ran.error, __file__)
    error = None if ran.error is None else _error_info(ran.error, ran.context)
    return json_outcome(ran.status, ran.value, error, ran.stdout, ran.stderr)


class _ExceptionPickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with tracebacks pickled with their columns (``pool_wire.tracebacks``)."""

    dispatch_table = collections.ChainMap(
        {types.TracebackType: reduce_traceback}, cloudpickle.Pickler.dispatch_table
    )


def _pickle_exception(error: BaseException) -> bytes:
    """The exception itself, with its traceback, or b"" if it won't pickle."""
    drop_own_frames(error, __file__)
    trim_tracebacks(error)
    # Exceptions through tblib's reducer (which keeps their cause, context and
    # notes); classes created after start-up (by unpickling) need it too.
    pickling_support.install(error)
    buffer = io.BytesIO()
    try:
        _ExceptionPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(error)
    except Exception:
        return b""  # the client falls back to RemoteError built from ErrorInfo
    return buffer.getvalue()


def _safe_str(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return f"<{type(error).__name__} whose str() failed>"


def _error_info(error: BaseException, context: str) -> ErrorInfo:
    text = _safe_str(error)
    message = f"{context}: {text}" if context else text
    return ErrorInfo(
        type_name=f"{type(error).__module__}.{type(error).__qualname__}",
        message=message,
        traceback="".join(traceback.format_exception(error)),
    )
