"""Run a call of the original Go server's clients, as its worker did.

The request is a pickle of ``(marshal.dumps(func.__code__), depmodules,
args, kwargs)`` (see ``pool_wire.original``). The function is rebuilt from
its code object with globals holding ``__builtins__`` and the imported
depmodules, fresh for each call, so one call's globals never leak into the
next (the original shared its worker module's globals across calls). The
answer is a pickle of ``(return value, stdout, stderr, exception)``; tblib
makes the exception's traceback pickle, as the original's clients expect.
"""

from __future__ import annotations

import builtins
import contextlib
import importlib
import io
import marshal
import pickle
import types
from typing import Any

from pool_wire.limits import MAX_PAYLOAD_BYTES
from pool_wire.original import error_answer
from pool_wire.protocol import ResultStatus
from worker_proc.tracebacks import drop_own_frames, trim_tracebacks

_PYTHON_ADVICE = (
    "the original's clients send the function as a marshalled code object, which only the "
    "Python version that made it can read; run the client on the same Python version as "
    "the server's workers"
)


def run_original(request: bytes | memoryview) -> tuple[ResultStatus, bytes]:
    """Decode, run and answer one original call."""
    try:
        code, depmodules, args, kwargs = _decode(request)
    except _Undecodable as e:
        return ResultStatus.ERROR, error_answer(f"the call could not be decoded on the worker: {e}")
    stdout, stderr = io.StringIO(), io.StringIO()
    value: Any = None
    exception: BaseException | None = None
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            function = types.FunctionType(code, _globals(depmodules), "func")
            value = function(*args, **kwargs)
    except BaseException as e:  # SystemExit too: the worker must keep serving
        drop_own_frames(e, __file__)
        trim_tracebacks(e)
        exception = e
    try:
        answer = pickle.dumps((value, stdout.getvalue(), stderr.getvalue(), exception))
    except Exception as e:
        what = "exception" if exception is not None else f"return value ({type(value).__name__})"
        return ResultStatus.ERROR, error_answer(f"the {what} could not be sent back: {e}")
    if len(answer) > MAX_PAYLOAD_BYTES:
        return ResultStatus.ERROR, error_answer(
            f"the result is {len(answer)} bytes with its captured output, over {MAX_PAYLOAD_BYTES}"
        )
    return (ResultStatus.OK if exception is None else ResultStatus.ERROR), answer


class _Undecodable(ValueError):
    """The request is not the original's encoding of a call."""


def _decode(
    request: bytes | memoryview,
) -> tuple[types.CodeType, list[str], tuple[Any, ...], dict[str, Any]]:
    try:
        code_bytes, depmodules, args, kwargs = pickle.loads(request)
    except Exception as e:
        raise _Undecodable(
            "expected a pickle of (marshal.dumps(func.__code__), depmodules, args, kwargs): "
            f"{type(e).__name__}: {e}"
        ) from None
    try:
        code = marshal.loads(code_bytes)
    except Exception as e:
        raise _Undecodable(f"the function's code would not load ({e}); {_PYTHON_ADVICE}") from None
    if not isinstance(code, types.CodeType):
        raise _Undecodable(f"the function's code is a {type(code).__name__}, not a code object")
    if not all(isinstance(name, str) for name in depmodules):
        raise _Undecodable("depmodules must be a list of module names")
    return code, list(depmodules), tuple(args), dict(kwargs)


def _globals(depmodules: list[str]) -> dict[str, Any]:
    """The rebuilt function's globals: its depmodules imported (an import
    that fails raises in the call, as in the original)."""
    namespace: dict[str, Any] = {"__builtins__": builtins, "__name__": "__main__"}
    for name in depmodules:
        namespace[name] = importlib.import_module(name)
    return namespace
