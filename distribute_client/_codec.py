"""Turn a call into payload bytes, and an outcome back into a value or a raise.

The function's own module travels by value (its code, helpers and globals are
pickled), unless it is installed in site-packages or the standard library:
scripts, notebooks and test modules need not exist on the server. Modules it
imports travel by reference and must be importable there (see depmodules).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import cloudpickle

from distribute_client.errors import ProtocolError, RemoteError, SerializationError
from pool_wire.limits import MAX_PAYLOAD_BYTES
from pool_wire.payload import (
    BatchOutcome,
    BatchRequest,
    CallOutcome,
    CallRequest,
    OutcomeStatus,
    dumps,
    function_key,
    is_json,
    loads_outcome,
)
from pool_wire.source_files import same_module_functions

# cloudpickle's by-value registry is process-global: one call at a time may
# register a module for the duration of its pickling.
_by_value_lock = threading.Lock()

_INSTALLED_PREFIXES = tuple(
    os.path.realpath(sysconfig.get_paths()[key]) + os.sep
    for key in ("stdlib", "platstdlib", "purelib", "platlib")
)


def module_by_value(function: Callable[..., Any]) -> types.ModuleType | None:
    """The module to pickle by value with ``function``, if any."""
    module = sys.modules.get(getattr(function, "__module__", None) or "")
    if module is None or module.__name__ == "__main__":
        return None  # __main__ is pickled by value already
    path = getattr(module, "__file__", None)
    if path is None or os.path.realpath(path).startswith(_INSTALLED_PREFIXES):
        return None
    return module


class Encoded(NamedTuple):
    """A call ready to send: its payload, and with ``function_apart`` its
    function beside it (by key in the payload), to be sent once per stream."""

    payload: bytes
    function_hash: str = ""
    function: bytes = b""


def encode_call(
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    depmodules: tuple[str, ...],
    retry_on: tuple[str, ...],
    by_value: types.ModuleType | None,
    *,
    function_apart: bool = False,
) -> Encoded:
    """The call pickled: whole (for a journaled job, which must stand alone),
    or with ``function_apart`` its function beside the payload."""
    name = _name(function)
    with _pickled_by_value(by_value):
        function_bytes = _pickle_function(function)
        try:
            argument_bytes = cloudpickle.dumps((args, kwargs))
        except Exception as e:
            culprit = _unpicklable_argument(args, kwargs)
            raise SerializationError(f"{culprit} of {name} could not be pickled: {e}") from e
    rest = (depmodules, retry_on, _source_files(function))
    if not function_apart:
        whole = CallRequest(function_bytes, argument_bytes, *rest)
        return Encoded(_checked(dumps(whole), name))
    key = function_key(function_bytes)
    request = CallRequest(b"", argument_bytes, *rest, function_hash=key)
    return Encoded(_checked(dumps(request), name), key, function_bytes)


def encode_batch(
    function: Callable[..., Any],
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
    depmodules: tuple[str, ...],
    retry_on: tuple[str, ...],
    by_value: types.ModuleType | None,
    *,
    function_apart: bool = False,
) -> Encoded:
    """Many calls of one function in one payload: the function is pickled
    once, and with ``function_apart`` travels beside the payload."""
    name = _name(function)
    with _pickled_by_value(by_value):
        function_bytes = _pickle_function(function)
        try:
            items = cloudpickle.dumps(calls)
        except Exception as e:
            for index, (args, kwargs) in enumerate(calls):
                try:
                    cloudpickle.dumps((args, kwargs))
                except Exception:
                    culprit = _unpicklable_argument(args, kwargs)
                    raise SerializationError(
                        f"{culprit} of {name}, item {index} of the batch, could not be pickled: {e}"
                    ) from e
            raise SerializationError(f"the calls to {name} could not be pickled: {e}") from e
    rest = (depmodules, retry_on, _source_files(function))
    if not function_apart:
        whole = BatchRequest(function_bytes, items, *rest)
        return Encoded(_checked(dumps(whole), name))
    key = function_key(function_bytes)
    batch = BatchRequest(b"", items, *rest, function_hash=key)
    return Encoded(_checked(dumps(batch), name), key, function_bytes)


def encode_json_call(function: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """A JSON call of ``function`` (``"module:name"``), imported by the worker
    (the format of ``pool_wire.payload.JsonCall``)."""
    module, sep, qualname = function.partition(":")
    if not sep or not module or not qualname:
        raise ValueError(f"function {function!r} is not 'module:name'")
    call = {"function": function, "args": list(args), "kwargs": dict(kwargs)}
    try:
        payload = json.dumps(call)
    except (TypeError, ValueError) as e:
        raise SerializationError(f"the arguments of {function} are not JSON: {e}") from e
    return _checked(payload.encode(), function)


def _name(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", repr(function))


def _source_files(function: Callable[..., Any]) -> tuple[tuple[str, str], ...]:
    """The file of ``function`` and of each function of its module it reaches,
    by qualified name: the worker gives code that was pickled by value its
    file back, so tracebacks show the caller's lines (and a notebook cell's
    helper its own cell)."""
    files: dict[str, str] = {}
    for item in same_module_functions(function):
        files.setdefault(item.__qualname__, item.__code__.co_filename)
    return tuple(files.items())


def _pickle_function(function: Callable[..., Any]) -> bytes:
    try:
        return cloudpickle.dumps(function)  # type: ignore[no-any-return]
    except Exception as e:
        raise SerializationError(f"function {_name(function)} could not be pickled: {e}") from e


def _checked(payload: bytes, name: str) -> bytes:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SerializationError(
            f"the call to {name} pickles to {len(payload)} bytes, over the "
            f"{MAX_PAYLOAD_BYTES}-byte limit; pass large data by reference (a path or URL)"
        )
    return payload


@contextlib.contextmanager
def _pickled_by_value(module: types.ModuleType | None) -> Iterator[None]:
    if module is None:
        yield
        return
    with _by_value_lock:
        cloudpickle.register_pickle_by_value(module)
        try:
            yield
        finally:
            cloudpickle.unregister_pickle_by_value(module)


def _unpicklable_argument(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    named = [(f"argument {i}", a) for i, a in enumerate(args)]
    named += [(f"argument {k!r}", v) for k, v in kwargs.items()]
    for label, value in named:
        try:
            cloudpickle.dumps(value)
        except Exception:
            return f"{label} ({type(value).__name__})"
    return "an argument"


def decode_outcome(data: bytes | bytearray, name: str, where: str) -> Any:
    """Replay captured output, then return the value or raise the error.

    ``where`` says where it ran, e.g. "worker 2 (pid 812) of 127.0.0.1:50051".
    """
    if is_json(data):
        return _decode_json_outcome(data)
    outcome = _load_outcome(data, name, where)
    if isinstance(outcome, BatchOutcome):  # a map chunk's job: its values, as map gives them
        return [value_of(item, name, where) for item in _batch_items(outcome, name, where)]
    return value_of(outcome, name, where)


def decode_items(data: bytes | bytearray, name: str, where: str) -> list[Any]:
    """Every call's value in order (one for a plain job, each of a map
    chunk's), with the exception in place of each call that raised, as
    ``asyncio.gather(return_exceptions=True)`` gives them."""
    if is_json(data):
        try:
            return [_decode_json_outcome(data)]
        except Exception as e:
            return [e]
    outcome = _load_outcome(data, name, where)
    items = [outcome] if isinstance(outcome, CallOutcome) else _batch_items(outcome, name, where)
    settled: list[Any] = []
    for item in items:
        try:
            settled.append(value_of(item, name, where))
        except Exception as e:
            settled.append(e)
    return settled


class Returned(NamedTuple):
    """A call of a batch that returned quietly: its value, nothing to replay."""

    value: Any


def decode_batch(
    data: bytes | bytearray, name: str, where: str, count: int
) -> list[CallOutcome] | list[Returned]:
    """The outcomes of a batch's ``count`` calls, in order (not yet replayed).

    A batch that failed as a whole (it could not be unpickled, say) answers
    with one outcome: every call gets it. One whose calls all returned
    quietly answers with their values.
    """
    outcome = _load_outcome(data, name, where)
    if isinstance(outcome, CallOutcome):
        return [outcome] * count
    return _batch_items(outcome, name, where, count)


def _batch_items(
    outcome: BatchOutcome, name: str, where: str, count: int | None = None
) -> list[CallOutcome] | list[Returned]:
    """A batch's outcomes, one per call; ``count`` is how many there must be
    (None: as many as it holds)."""
    if outcome.returned is not None:
        try:
            values = cloudpickle.loads(outcome.returned)
        except Exception as e:
            raise SerializationError(
                f"the return values of {name} could not be unpickled here: {e}; "
                "return types defined only on the server cannot be rebuilt by the client"
            ) from e
        if not isinstance(values, list) or len(values) != (count or len(values)):
            raise ProtocolError(f"{where} answered {count} calls to {name} with another count")
        return [Returned(value) for value in values]
    if count is not None and len(outcome.outcomes) != count:
        raise ProtocolError(f"{where} answered {len(outcome.outcomes)} of {count} calls to {name}")
    return outcome.outcomes


def value_of(outcome: CallOutcome | Returned, name: str, where: str) -> Any:
    """Replay one call's captured output, then return its value or raise its error."""
    if isinstance(outcome, Returned):
        return outcome.value
    if outcome.stdout:
        sys.stdout.write(outcome.stdout)
    if outcome.stderr:
        sys.stderr.write(outcome.stderr)
    if outcome.status is OutcomeStatus.RETURNED:
        try:
            return cloudpickle.loads(outcome.value)
        except Exception as e:
            raise SerializationError(
                f"the return value of {name} could not be unpickled here: {e}; "
                "return types defined only on the server cannot be rebuilt by the client"
            ) from e
    raise _error_for(outcome, name, where)


def _load_outcome(data: bytes | bytearray, name: str, where: str) -> CallOutcome | BatchOutcome:
    try:
        return loads_outcome(data)
    except Exception as e:
        raise ProtocolError(
            f"could not read the outcome of {name} from {where}: {e}; "
            "are the client and server the same version?"
        ) from e


def _decode_json_outcome(data: bytes | bytearray) -> Any:
    """The answer to a JSON call (submitted by pool-client or a non-Python client)."""
    outcome = json.loads(data)
    sys.stdout.write(outcome.get("stdout", ""))
    sys.stderr.write(outcome.get("stderr", ""))
    if outcome["status"] == OutcomeStatus.RETURNED.value:
        return outcome["value"] if "value" in outcome else outcome["value_repr"]
    error = outcome.get("error", {})
    raise RemoteError(
        error.get("type", "?"), error.get("message", ""), outcome.get("traceback", "")
    )


# Unpickling errors that mean code the call needs is not on the server.
_MISSING_CODE_ERRORS = (".ModuleNotFoundError", ".ImportError", ".AttributeError")


def _error_for(outcome: CallOutcome, name: str, where: str) -> BaseException:
    error = outcome.error
    assert error is not None, outcome.status
    if outcome.status is OutcomeStatus.BAD_REQUEST:
        advice = ""
        if error.type_name.endswith(_MISSING_CODE_ERRORS):
            advice = (
                "; a module the function or its arguments need is probably missing on the "
                "server: install it there or name it in depmodules"
            )
        return SerializationError(
            f"{where} could not unpickle the call to {name}: {error.message}{advice}"
        )
    if outcome.status is OutcomeStatus.BAD_RESULT:
        return SerializationError(f"{name} ran on {where}, but {error.message}")
    try:
        loaded: object = cloudpickle.loads(outcome.value) if outcome.value else None
    except Exception:
        loaded = None  # its class does not exist here
    # Not an Exception: lost, or a SystemExit/KeyboardInterrupt that must not
    # stop the caller's process.
    exception = (
        loaded
        if isinstance(loaded, Exception)
        else RemoteError(error.type_name, error.message, error.traceback)
    )
    exception.add_note(f"(raised by {name} on {where})")
    return exception
