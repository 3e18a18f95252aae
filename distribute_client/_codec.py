"""Turn a call into payload bytes, and an outcome back into a value or a raise.

Local code travels by value (its code, helpers and globals are pickled):
the function's own module, every other module loaded from outside
site-packages and the standard library (a ``mymodel.py`` beside the script,
a project's own package, even one installed with ``pip install -e``), and
the modules named in ``compute_this(ship=[...])``. So scripts, notebooks,
their helper modules and test modules need not exist on the server, and the
server never runs a stale copy of them. Installed modules travel by
reference and must be importable there; this package's own modules always
do (the server has them).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import sysconfig
import threading
import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import cloudpickle

from distribute_client._tracebacks import drop_client_frames
from distribute_client.errors import ProtocolError, RemoteError, SerializationError
from pool_wire import refs
from pool_wire.limits import MAX_PAYLOAD_BYTES
from pool_wire.module_files import file_digest
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


# This distribution's own packages: on the server already, never shipped.
_OWN_PACKAGES = frozenset(
    {
        "distribute_client",
        "distribute_challenge",
        "pool_wire",
        "pool_server",
        "worker_proc",
        "pool_proto",
        "pool_celery",
    }
)

# Whether a module (by name) is local code, decided once per module.
_local_modules: dict[str, bool] = {}


_STDLIB_PREFIXES = tuple(
    os.path.realpath(sysconfig.get_paths()[key]) + os.sep for key in ("stdlib", "platstdlib")
)


def is_local(module: types.ModuleType) -> bool:
    """Whether ``module`` is local code that travels by value: Python source
    outside site-packages and the standard library, not this package's own."""
    name = module.__name__
    known = _local_modules.get(name)
    if known is None:
        path = getattr(module, "__file__", None)
        known = _local_modules[name] = (
            name != "__main__"  # pickled by value already
            and name.partition(".")[0] not in _OWN_PACKAGES
            and isinstance(path, str)
            and path.endswith(".py")
            and not os.path.realpath(path).startswith(_INSTALLED_PREFIXES)
            and "site-packages" not in path
            and "dist-packages" not in path
        )
    return known


class Shipped:
    """The modules a function's calls pickle by value: the local ones among
    those loaded (looked over again whenever more are loaded), and the ones
    named to ``ship``."""

    def __init__(self, ship: Sequence[types.ModuleType] = ()) -> None:
        for module in ship:
            if not isinstance(module, types.ModuleType):
                raise TypeError(f"ship takes modules, got {type(module).__name__} {module!r}")
            if module.__name__ == "__main__" or module.__name__.partition(".")[0] in _OWN_PACKAGES:
                raise ValueError(f"module {module.__name__} cannot be shipped: the server has it")
        self._ship = tuple(ship)
        self._loaded = -1  # len(sys.modules) when last looked over
        self._modules: tuple[types.ModuleType, ...] = self._ship

    def modules(self) -> tuple[types.ModuleType, ...]:
        if len(sys.modules) != self._loaded:
            self._loaded = len(sys.modules)
            local = [m for m in list(sys.modules.values()) if m is not None and is_local(m)]
            self._modules = tuple({m.__name__: m for m in (*local, *self._ship)}.values())
        return self._modules

    def names(self) -> frozenset[str]:
        return frozenset(m.__name__ for m in self.modules())


NOTHING_SHIPPED = Shipped()


class Encoded(NamedTuple):
    """A call ready to send: its payload, and with ``function_apart`` its
    function beside it (by key in the payload), to be sent once per stream."""

    payload: bytes
    function_hash: str = ""
    function: bytes = b""
    refs: tuple[str, ...] = ()  # keys of the stored objects (Refs) it refers to


def encode_call(
    function: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    depmodules: tuple[str, ...],
    retry_on: tuple[str, ...],
    shipped: Shipped,
    *,
    function_apart: bool = False,
) -> Encoded:
    """The call pickled: whole (for a journaled job, which must stand alone),
    or with ``function_apart`` its function beside the payload."""
    name = _name(function)
    modules = shipped.modules()
    with _pickled_by_value(modules), refs.collecting() as keys:
        function_bytes = _pickle_function(function)
        try:
            argument_bytes = cloudpickle.dumps((args, kwargs))
        except Exception as e:
            culprit = _unpicklable_argument(args, kwargs)
            raise SerializationError(f"{culprit} of {name} could not be pickled: {e}") from e
    imported = _imported(depmodules, modules)
    rest = (imported, retry_on, _source_files(function))
    files = _module_files(function, imported, modules)
    if not function_apart:
        _refuse_refs(keys, name)
        whole = CallRequest(function_bytes, argument_bytes, *rest, module_files=files)
        return Encoded(_checked(dumps(whole), name))
    key = function_key(function_bytes)
    request = CallRequest(b"", argument_bytes, *rest, function_hash=key, module_files=files)
    return Encoded(_checked(dumps(request), name), key, function_bytes, tuple(sorted(keys)))


class PickledFunction(NamedTuple):
    """A function pickled once for all the chunks of a map, and its key: a
    large global it holds is pickled (and hashed) once, not per chunk."""

    pickled: bytes
    key: str
    refs: frozenset[str] = frozenset()  # keys of the Refs among its globals


def pickle_function(function: Callable[..., Any], shipped: Shipped) -> PickledFunction:
    with _pickled_by_value(shipped.modules()), refs.collecting() as keys:
        pickled = _pickle_function(function)
    return PickledFunction(pickled, function_key(pickled), frozenset(keys))


def encode_batch(
    function: Callable[..., Any],
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]],
    depmodules: tuple[str, ...],
    retry_on: tuple[str, ...],
    shipped: Shipped,
    *,
    function_apart: bool = False,
    pickled: PickledFunction | None = None,
) -> Encoded:
    """Many calls of one function in one payload: the function is pickled
    once (or was, as ``pickled``), and with ``function_apart`` travels
    beside the payload."""
    name = _name(function)
    modules = shipped.modules()
    with _pickled_by_value(modules), refs.collecting() as keys:
        if pickled is None:
            pickled = PickledFunction(_pickle_function(function), "")
        keys.update(pickled.refs)
        function_bytes = pickled.pickled
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
    imported = _imported(depmodules, modules)
    rest = (imported, retry_on, _source_files(function))
    files = _module_files(function, imported, modules)
    if not function_apart:
        _refuse_refs(keys, name)
        whole = BatchRequest(function_bytes, items, *rest, module_files=files)
        return Encoded(_checked(dumps(whole), name))
    key = pickled.key or function_key(function_bytes)
    batch = BatchRequest(b"", items, *rest, function_hash=key, module_files=files)
    return Encoded(_checked(dumps(batch), name), key, function_bytes, tuple(sorted(keys)))


def pickle_object(value: Any) -> bytes:
    """An object to store (``Client.put``), pickled as a call's argument is."""
    with _pickled_by_value(NOTHING_SHIPPED.modules()):
        try:
            return cloudpickle.dumps(value)  # type: ignore[no-any-return]
        except Exception as e:
            raise SerializationError(
                f"the {type(value).__name__} to store could not be pickled: {e}"
            ) from e


def refuse_refs(encoded: Encoded, name: str) -> None:
    """Refuse a call that refers to stored objects where it must stand alone
    (a durable job: the journal outlives the server's object store)."""
    _refuse_refs(set(encoded.refs), name)


def _refuse_refs(keys: set[str], name: str) -> None:
    if keys:
        raise SerializationError(
            f"the call to {name} refers to stored objects ({', '.join(sorted(keys))}), which a "
            "durable job or another backend cannot: they live in the server's memory only. "
            "Pass the object itself (a durable map journals its function once), or run the "
            "calls without durable=True"
        )


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
        raise SerializationError(
            f"function {_name(function)} could not be pickled: {e}; a local module it uses "
            "travels by value with the globals the function reaches, so use names imported "
            "from it (from mymodel import predict) rather than the whole module"
        ) from e


def _checked(payload: bytes, name: str) -> bytes:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise SerializationError(
            f"the call to {name} pickles to {len(payload)} bytes, over the "
            f"{MAX_PAYLOAD_BYTES}-byte limit; pass large data by reference (a path or URL)"
        )
    return payload


@contextlib.contextmanager
def _pickled_by_value(modules: tuple[types.ModuleType, ...]) -> Iterator[None]:
    if not modules:
        yield
        return
    with _by_value_lock:
        registered = cloudpickle.list_registry_pickle_by_value()  # by the caller: left alone
        added = [m for m in modules if m.__name__ not in registered and m.__name__ in sys.modules]
        for module in added:
            cloudpickle.register_pickle_by_value(module)
        try:
            yield
        finally:
            for module in added:
                cloudpickle.unregister_pickle_by_value(module)


def _imported(
    depmodules: tuple[str, ...], shipped: tuple[types.ModuleType, ...]
) -> tuple[str, ...]:
    """The depmodules the worker must import: a shipped one travels instead."""
    names = {m.__name__ for m in shipped}
    return tuple(name for name in depmodules if name not in names)


def _module_files(
    function: Callable[..., Any], depmodules: tuple[str, ...], shipped: tuple[types.ModuleType, ...]
) -> tuple[tuple[str, str], ...]:
    """(name, file digest) of the modules the worker imports by reference
    (depmodules, modules the function names as globals, and those of the
    functions and classes it names, ``from mymodel import predict``),
    outside the standard library: the worker checks its copies against them."""
    names = set(depmodules)
    code = getattr(function, "__code__", None)
    globals_ = getattr(function, "__globals__", {})
    for name in code.co_names if code is not None else ():
        value = globals_.get(name)
        if isinstance(value, types.ModuleType):
            names.add(value.__name__)
        elif isinstance(getattr(value, "__module__", None), str):
            names.add(value.__module__)
    skip = {m.__name__ for m in shipped}
    files = []
    for name in sorted(names - skip):
        path = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(path, str) and path.endswith(".py") and not _in_stdlib(path):
            files.append((name, file_digest(path)))
    return tuple(files)


@functools.cache
def _in_stdlib(path: str) -> bool:
    """Whether ``path`` is in the standard library (decided once: on every call's path)."""
    return os.path.realpath(path).startswith(_STDLIB_PREFIXES)


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
            drop_client_frames(e)  # it stands in a list: only its remote frames
            settled.append(e)
    return settled


def captured_output(data: bytes | bytearray, name: str, where: str) -> str:
    """What the call (or each call of a map chunk, in order) printed, its
    stdout then its stderr, without touching the values."""
    if is_json(data):
        try:
            body = json.loads(data)
        except ValueError:
            return ""
        return str(body.get("stdout", "")) + str(body.get("stderr", ""))
    outcome = _load_outcome(data, name, where)
    items = [outcome] if isinstance(outcome, CallOutcome) else outcome.outcomes
    return "".join(item.stdout + item.stderr for item in items)


class Returned(NamedTuple):
    """A call of a batch that returned quietly: its value, nothing to replay,
    and its share of the batch's running time."""

    value: Any
    run_seconds: float = 0.0


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
        share = outcome.run_seconds / max(len(values), 1)
        return [Returned(value, share) for value in values]
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
                "; a module the function or its arguments need is probably not installed on "
                "the server: install it there (depmodules only imports modules, it does not "
                "install them), or ship its code with compute_this(ship=[module])"
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
